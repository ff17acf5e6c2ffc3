"""What installs lopt agrees with itself: pyproject's ranges, the lock, the Makefile's and the
images' install steps, environment.yml, .dockerignore, and the wheel (no Docker engine runs here:
the Dockerfiles are parsed, never built).

Checked: pyproject declares ranges (no exact pins, Python without an upper cap); the lock
``.ci/constraints.txt`` pins every declared dependency exactly, inside its range; each Dockerfile
parses, installs from the lock with the lock's Python, copies only paths a fresh clone has and
.dockerignore keeps, runs ``lopt`` and records the commit it was built from; environment.yml
installs the project from the lock; runtime code imports exactly what is declared; and (slow) the
wheel, installed in a fresh venv outside the repository, trains and recommends
(``.ci/wheel_check.sh``).
"""

from __future__ import annotations

import glob
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.helpers.paths import REPO_ROOT

DOCKERFILES = [REPO_ROOT / "docker" / "Dockerfile", REPO_ROOT / "docker" / "Dockerfile.cpu"]
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
ENVIRONMENT_YML = REPO_ROOT / "environment.yml"
LOCK = REPO_ROOT / ".ci" / "constraints.txt"
LOCK_REL = LOCK.relative_to(REPO_ROOT).as_posix()
WHEEL_CHECK = REPO_ROOT / ".ci" / "wheel_check.sh"
#: Dependencies declared by their major version: a lower bound and an upper bound at the next major.
BY_MAJOR = ("lightning", "hydra-core", "omegaconf", "wandb", "polars")

INSTRUCTIONS = {
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "MAINTAINER",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
}


def parse_dockerfile(path: Path) -> list[tuple[int, str, str]]:
    """(line number, INSTRUCTION, arguments) for each instruction; continuation lines joined.

    Raises ValueError naming the file and line for anything that is not a Dockerfile instruction.
    """
    instructions: list[tuple[int, str, str]] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue  # blank lines, comments and parser directives (# syntax=...)
        if pending and line.startswith("#"):
            continue  # comment lines inside a continued instruction are dropped by Docker
        if not pending:
            start = number
        if line.endswith("\\"):
            pending.append(line[:-1].strip())
            continue
        pending.append(line)
        text = " ".join(p for p in pending if p)
        pending = []
        keyword, _, args = text.partition(" ")
        if keyword.upper() not in INSTRUCTIONS or keyword != keyword.upper():
            raise ValueError(f"{path}:{start}: unknown instruction {keyword!r} (write instructions in upper case)")
        if not args.strip():
            raise ValueError(f"{path}:{start}: {keyword} without arguments")
        instructions.append((start, keyword, args.strip()))
    if pending:
        raise ValueError(f"{path}: ends inside a continued instruction (trailing backslash)")
    return instructions


def build_args(instructions: list[tuple[int, str, str]]) -> dict[str, str]:
    """Default values of the ARGs (ARG NAME=VALUE)."""
    args = {}
    for _, keyword, text in instructions:
        if keyword == "ARG" and "=" in text:
            name, _, value = text.partition("=")
            args[name.strip()] = value.strip().strip('"')
    return args


def expand(text: str, args: dict[str, str]) -> str:
    """Substitute ${NAME} and $NAME with the ARG defaults."""
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)), text)


def pyproject() -> dict:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def declared() -> list[Requirement]:
    """[project.dependencies] and the dev extra."""
    project = pyproject()["project"]
    return [Requirement(d) for d in [*project["dependencies"], *project["optional-dependencies"]["dev"]]]


def parse_lock(path: Path = LOCK) -> tuple[dict[str, Version], str]:
    """({canonical name: pinned version}, the tested Python "X.Y" of the ``# python: X.Y`` line).

    ValueError naming the file and line for anything but ``name==version``, a comment or a blank."""
    pins: dict[str, Version] = {}
    python = None
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if match := re.fullmatch(r"#\s*python:\s*(\d+\.\d+)", line):
            python = match.group(1)
        if not line or line.startswith("#"):
            continue
        req = Requirement(line)
        specs = list(req.specifier)
        if len(specs) != 1 or specs[0].operator != "==" or "*" in specs[0].version or req.marker or req.url:
            raise ValueError(f"{path}:{number}: {line!r} is not an exact pin (name==version)")
        name = canonicalize_name(req.name)
        if name in pins:
            raise ValueError(f"{path}:{number}: {req.name} is pinned twice")
        pins[name] = Version(specs[0].version)
    if python is None:
        raise ValueError(f"{path}: no '# python: X.Y' line naming the Python the lock is tested on")
    return pins, python


def torch_pin() -> Version:
    """The torch release of the lock (the images and the Makefile install it first)."""
    return parse_lock()[0]["torch"]


def environment() -> dict:
    return yaml.safe_load(ENVIRONMENT_YML.read_text())


def environment_pip() -> list[str]:
    pips = [d["pip"] for d in environment()["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pips) == 1, f"{ENVIRONMENT_YML}: expected one `pip:` section, found {len(pips)}"
    return [str(x) for x in pips[0]]


def pip_installs(runs: str) -> list[str]:
    """Each ``pip install …`` command among the RUN lines (up to the next && or ;)."""
    return [m.group(0) for m in re.finditer(r"pip install [^&;]*", runs)]


def _glob_regex(pattern: str) -> re.Pattern:
    """A .dockerignore pattern as a regex over slash-separated paths (Go's filepath.Match plus **)."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def dockerignore_patterns(path: Path = DOCKERIGNORE) -> list[str]:
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves ``path`` (relative to the context) out: the last pattern matching the
    path or one of its parent folders decides; ``!`` patterns bring a path back."""
    parts = path.split("/")
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = _glob_regex(pattern.lstrip("!").strip().strip("/"))
        if any(regex.fullmatch("/".join(parts[:i])) for i in range(1, len(parts) + 1)):
            excluded = not negate
    return excluded


def buildable_files(rel: str) -> list[str] | None:
    """Files at or under REL that a fresh clone will have once committed: tracked ones and
    untracked ones that git does not ignore. None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", rel],
            cwd=REPO_ROOT,
            capture_output=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return [f for f in out.stdout.decode().split("\0") if f]


@pytest.fixture(scope="module", params=DOCKERFILES, ids=lambda p: p.name)
def dockerfile(request) -> tuple[Path, list[tuple[int, str, str]]]:
    path = request.param
    assert path.is_file(), f"{path} is missing"
    return path, parse_dockerfile(path)


# ---------------------------------------------------------------- pyproject's ranges and the lock


def test_pyproject_declares_ranges_not_pins():
    """Users' environments fit: no exact pin, no cap on Python or torch, majors for the big four."""
    project = pyproject()["project"]
    requires_python = SpecifierSet(project["requires-python"])
    assert Version("3.11") in requires_python and not any(s.operator in {"<", "<=", "=="} for s in requires_python), (
        f"pyproject.toml: requires-python '{requires_python}' must be >=3.11 with no upper bound"
    )
    for req in declared():
        exact = [s for s in req.specifier if s.operator in {"==", "==="}]
        assert not exact, f"pyproject.toml: {req} pins an exact version; pins belong in {LOCK_REL}"
    by_name = {canonicalize_name(r.name): r for r in declared()}
    torch = by_name["torch"].specifier
    assert any(s.operator == ">=" for s in torch) and not any(s.operator in {"<", "<="} for s in torch), (
        f"pyproject.toml: torch '{torch}' needs a lower bound (the oldest API lopt uses) and no upper bound"
    )
    for name in BY_MAJOR:
        uppers = [Version(s.version) for s in by_name[name].specifier if s.operator == "<"]
        assert len(uppers) == 1 and uppers[0].minor == 0 and uppers[0].micro == 0, (
            f"pyproject.toml: {by_name[name]} must be capped at its next major version (e.g. <3), not a minor"
        )


def test_lock_pins_every_declared_dependency_inside_its_range():
    pins, python = parse_lock()
    assert Version(python) in SpecifierSet(pyproject()["project"]["requires-python"])
    assert "lopt" not in pins, f"{LOCK_REL} must not pin lopt itself"
    for req in declared():
        name = canonicalize_name(req.name)
        assert name in pins, f"{LOCK_REL} does not pin {req.name}, a dependency pyproject.toml declares"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"{LOCK_REL} pins {req.name}=={pins[name]}, outside pyproject's range '{req.specifier}'"
        )
    assert pins["torch"].local is None, (
        f"{LOCK_REL}: pin torch=={pins['torch'].public} (any build of it), not a local label"
    )


def test_lock_parser_rejects_loose_lines(tmp_path):
    lock = tmp_path / "constraints.txt"
    lock.write_text("# python: 3.11\nnumpy==2.4.6\nscipy>=1.11\n")
    with pytest.raises(ValueError, match=r"constraints.txt:3: 'scipy>=1.11' is not an exact pin"):
        parse_lock(lock)
    lock.write_text("# python: 3.11\nnumpy==2.4.6\nNumPy==2.4.5\n")
    with pytest.raises(ValueError, match="pinned twice"):
        parse_lock(lock)
    lock.write_text("numpy==2.4.6\n")
    with pytest.raises(ValueError, match="no '# python: X.Y' line"):
        parse_lock(lock)


# ---------------------------------------------------------------- the images


def test_parser_rejects_broken_dockerfiles(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:3.11-slim\nRUN echo a \\\n    && echo b\nCOPPY x y\n")
    with pytest.raises(ValueError, match=r":4: unknown instruction 'COPPY'"):
        parse_dockerfile(bad)
    bad.write_text("FROM python:3.11-slim\nRUN echo a \\\n")
    with pytest.raises(ValueError, match="trailing backslash"):
        parse_dockerfile(bad)


def test_dockerfile_structure(dockerfile):
    path, instructions = dockerfile
    keywords = [k for _, k, _ in instructions]
    assert keywords[0] in {"FROM", "ARG"}, f"{path}: must start with FROM (or ARG for the base image)"
    assert keywords.count("FROM") == 1, f"{path}: expected a single stage"
    first_from = keywords.index("FROM")
    assert all(k == "ARG" for k in keywords[:first_from]), f"{path}: only ARG may come before FROM"
    for line, keyword, text in instructions:
        if keyword in {"ENTRYPOINT", "CMD", "VOLUME", "SHELL"} and text.startswith("["):
            try:
                json.loads(text)
            except json.JSONDecodeError as err:
                pytest.fail(f"{path}:{line}: {keyword} exec form is not valid JSON: {err}")
    entrypoints = [json.loads(t) for _, k, t in instructions if k == "ENTRYPOINT"]
    assert entrypoints == [["lopt"]], f'{path}: ENTRYPOINT must be ["lopt"] (the console script), not {entrypoints}'
    workdirs = [t for _, k, t in instructions if k == "WORKDIR"]
    assert workdirs, f"{path}: no WORKDIR"
    env = " ".join(t for _, k, t in instructions if k == "ENV")
    assert re.search(r"\bLOPT_DATA_DIR=/data\b", env), f"{path}: ENV LOPT_DATA_DIR=/data missing"
    volumes = " ".join(t for _, k, t in instructions if k == "VOLUME")
    assert "/data" in volumes, f"{path}: VOLUME /data missing"
    secrets = [t for _, k, t in instructions if k in {"ENV", "ARG"} and "WANDB_API_KEY" in t]
    assert not secrets, f"{path}: WANDB_API_KEY must be passed at run time (docker run -e), not baked in"
    runs = " ".join(t for _, k, t in instructions if k == "RUN")
    project = [c for c in pip_installs(runs) if re.search(r"\s\.(\s|$|\[)", c + " ")]
    assert project, f"{path}: the project is not pip-installed (pip install … .)"
    assert not any("-e" in shlex.split(c) for c in project), f"{path}: install the wheel (pip install .), not -e"


def test_dockerfile_records_the_commit_it_was_built_from(dockerfile):
    """--build-arg GIT_COMMIT reaches provenance as LOPT_GIT_COMMIT (the context has no .git)."""
    path, instructions = dockerfile
    args = [t for _, k, t in instructions if k == "ARG"]
    assert any(re.fullmatch(r"GIT_COMMIT(=.*)?", a) for a in args), f"{path}: no ARG GIT_COMMIT"
    env = " ".join(t for _, k, t in instructions if k == "ENV")
    assert re.search(r"\bLOPT_GIT_COMMIT=\$\{?GIT_COMMIT\}?", env), f"{path}: no ENV LOPT_GIT_COMMIT=${{GIT_COMMIT}}"
    from lopt.run.provenance import GIT_COMMIT_ENV

    assert GIT_COMMIT_ENV == "LOPT_GIT_COMMIT", "the images set LOPT_GIT_COMMIT; lopt.run.provenance must read it"


def test_provenance_reads_the_build_commit_outside_a_checkout(tmp_path, monkeypatch):
    from lopt.run import provenance

    monkeypatch.delenv(provenance.GIT_COMMIT_ENV, raising=False)
    assert provenance.git_state(tmp_path) == (None, None)
    monkeypatch.setenv(provenance.GIT_COMMIT_ENV, "0123abcd")
    assert provenance.git_state(tmp_path) == ("0123abcd", None)
    monkeypatch.setenv(provenance.GIT_COMMIT_ENV, "")  # docker build without --build-arg GIT_COMMIT
    assert provenance.git_state(tmp_path) == (None, None)


@pytest.mark.slow
def test_copy_sources_exist_in_the_repository_and_the_context(dockerfile):
    path, instructions = dockerfile
    args = build_args(instructions)
    patterns = dockerignore_patterns()
    copies = [(line, k, t) for line, k, t in instructions if k in {"COPY", "ADD"}]
    assert copies, f"{path}: copies nothing from the repository"
    for line, keyword, text in copies:
        words = shlex.split(expand(text, args))
        if any(w.startswith("--from") for w in words):
            continue  # from another image/stage, not from the build context
        operands = [w for w in words if not w.startswith("--")]
        assert len(operands) >= 2, f"{path}:{line}: {keyword} needs a source and a destination"
        for source in operands[:-1]:
            assert not re.match(r"[a-z]+://", source), f"{path}:{line}: {keyword} of a URL; pin files in the repo"
            matches = glob.glob(str(REPO_ROOT / source))
            assert matches, f"{path}:{line}: {keyword} source '{source}' does not exist in {REPO_ROOT}"
            resolved = Path(matches[0]).resolve()
            assert resolved.is_relative_to(REPO_ROOT), f"{path}:{line}: '{source}' is outside the repository"
            files = buildable_files(resolved.relative_to(REPO_ROOT).as_posix())
            assert files is None or files, (
                f"{path}:{line}: {keyword} source '{source}' holds no file git would commit (empty or "
                "ignored), so a fresh clone cannot build the image"
            )
            left_out = [f for f in files or [] if dockerignored(f, patterns)]
            assert not left_out, f"{path}:{line}: .dockerignore leaves out what {keyword} needs: {left_out[:5]}"


def test_dockerignore_keeps_heavy_and_private_folders_out():
    patterns = dockerignore_patterns()
    for path in [
        ".git/HEAD",
        ".venv/bin/python",
        "data/ml-100k/u.data",
        "data/.lopt_cache/x.npz",
        "outputs/2026-01-01/12-00-00/metrics.json",
        "multirun/2026-01-01/12-00-00/0/run.log",
        "lopt/__pycache__/api.cpython-311.pyc",
        "wandb/run-1/files/config.yaml",
    ]:
        assert dockerignored(path, patterns), f".dockerignore does not leave out {path}"
    for path in ["lopt/api.py", "conf/config.yaml", LOCK_REL, "pyproject.toml", "README.md"]:
        assert not dockerignored(path, patterns), f".dockerignore leaves out {path}, which the images copy"


def test_dockerignore_matching():
    assert dockerignored("a/b/__pycache__/x.pyc", ["**/__pycache__"])
    assert dockerignored("__pycache__/x.pyc", ["**/__pycache__"])
    assert not dockerignored("datasets/x", ["data"])
    assert not dockerignored("data/keep.txt", ["data", "!data/keep.txt"])
    assert dockerignored("data/keep.txt", ["!data/keep.txt", "data"])


def test_dockerfile_installs_from_the_lock(dockerfile):
    path, instructions = dockerfile
    args = build_args(instructions)
    pins, python = parse_lock()
    requires_python = SpecifierSet(pyproject()["project"]["requires-python"])
    image_python = args.get("PYTHON_VERSION")
    assert image_python, f"{path}: declare the Python version as ARG PYTHON_VERSION=<x.y>"
    assert image_python == python and Version(image_python) in requires_python, (
        f"{path}: PYTHON_VERSION={image_python}, but {LOCK_REL} is tested on Python {python}"
    )
    from_lines = [expand(t, args) for _, k, t in instructions if k == "FROM"]
    runs = expand(" ".join(t for _, k, t in instructions if k == "RUN"), args)
    assert f"python:{python}" in from_lines[0] or f"python{python}" in runs, (
        f"{path}: neither the base image ({from_lines[0]}) nor a RUN installs Python {python}"
    )
    copied = " ".join(t for _, k, t in instructions if k == "COPY")
    assert LOCK_REL in copied, f"{path}: does not COPY the lock {LOCK_REL}"
    installs = [c for c in pip_installs(runs) if not re.fullmatch(r"pip install --upgrade pip\s*", c)]
    assert installs, f"{path}: installs nothing with pip"
    for command in installs:
        assert f"-c {LOCK_REL}" in command, (
            f"{path}: '{command.strip()}' does not install from the lock (-c {LOCK_REL})"
        )
        assert not re.search(r"\S==\d", command), f"{path}: '{command.strip()}' pins a version; the lock pins them"
    torch_first = installs[0].split()
    assert "torch" in torch_first, f"{path}: the first install must be torch alone, from the PyTorch index"
    index = re.search(r"download\.pytorch\.org/whl/(\w+)", installs[0])
    assert index, f"{path}: torch must come from the PyTorch index (download.pytorch.org/whl/<cpu|cuXYZ>)"
    assert "--index-url" not in torch_first, (
        f"{path}: use --extra-index-url, so that torch's dependencies keep their locked versions from PyPI"
    )
    if path.name.endswith(".cpu"):
        assert index.group(1) == "cpu", f"{path}: the CPU image must install the CPU wheel, not {index.group(1)}"
    else:
        assert index.group(1).startswith("cu"), f"{path}: the CUDA image installs torch from '{index.group(1)}'"
        assert "nvidia/cuda" in from_lines[0] and "runtime" in from_lines[0], (
            f"{path}: base image {from_lines[0]} is not a CUDA runtime image"
        )
    assert "torch" in pins


# ---------------------------------------------------------------- conda


def test_environment_yml_installs_the_project_from_the_lock():
    env = environment()
    assert env.get("name") == "lopt", f"{ENVIRONMENT_YML}: the environment must be named lopt"
    pythons = [d for d in env["dependencies"] if isinstance(d, str) and re.match(r"python\s*[=<>]", d)]
    assert len(pythons) == 1, f"{ENVIRONMENT_YML}: expected one python=<x.y> entry, found {pythons}"
    version = re.sub(r"^python\s*=+\s*", "", pythons[0])
    _, python = parse_lock()
    assert version == python, f"{ENVIRONMENT_YML}: python={version}, but {LOCK_REL} is tested on Python {python}"
    assert "pip" in env["dependencies"], f"{ENVIRONMENT_YML}: list pip among the conda dependencies"
    pip = environment_pip()
    assert f"-c {LOCK_REL}" in pip, f"{ENVIRONMENT_YML}: the pip section must install from the lock (-c {LOCK_REL})"
    assert any(re.fullmatch(r"-e\s+\.(\[[\w,-]+\])?", o) for o in pip), (
        f"{ENVIRONMENT_YML}: the pip section must install the project itself with `-e .`"
    )
    others = [r for r in pip if not r.startswith("-")]
    assert not others, f"{ENVIRONMENT_YML}: {others}: pyproject declares the dependencies, the lock pins them"


# ---------------------------------------------------------------- declared = imported


#: Import name → distribution name, where they differ.
DISTRIBUTION_OF = {"hydra": "hydra-core", "yaml": "pyyaml", "hydra_plugins": "hydra-submitit-launcher"}
#: Declared but never imported by name, each for a stated reason.
NOT_IMPORTED = {
    "rich": "Lightning's RichProgressBar (callbacks.progress) needs it",
    "alembic": "optuna's database storage of studies (its schema migrations)",
}


def _third_party_imports(paths: list[Path]) -> set[str]:
    """Top-level modules imported anywhere in ``paths`` (nested imports included) that are not
    the standard library or lopt/tests themselves; a Hydra plugin (``hydra_plugins.NAME``, a
    namespace shared by plugins) by its own module NAME."""
    import ast

    def top(module: str) -> str:
        parts = module.split(".")
        return parts[1] if parts[0] == "hydra_plugins" and len(parts) > 1 else parts[0]

    names: set[str] = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names.update(top(alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(top(node.module))
    # the project's own packages, and the scripts of experiments/ that import each other
    local = {"lopt", "tests", "run"} | {p.stem for p in (REPO_ROOT / "experiments").glob("*.py")}
    return {n for n in names if n not in sys.stdlib_module_names and n not in local}


def test_declared_dependencies_are_exactly_the_imported_ones():
    """Runtime code (lopt/, run.py, experiments/) imports only declared dependencies, and every
    declared one is imported or has a reason in NOT_IMPORTED; the tests need nothing beyond those
    and the dev extra."""
    project = pyproject()["project"]
    declared_names = {canonicalize_name(Requirement(d).name) for d in project["dependencies"]}
    dev = {canonicalize_name(Requirement(d).name) for d in project["optional-dependencies"]["dev"]}
    runtime = [*(REPO_ROOT / "lopt").rglob("*.py"), REPO_ROOT / "run.py", *(REPO_ROOT / "experiments").rglob("*.py")]
    imported = {canonicalize_name(DISTRIBUTION_OF.get(n, n)) for n in _third_party_imports(runtime)}
    assert imported <= declared_names, f"imported but not declared: {sorted(imported - declared_names)}"
    unused = declared_names - imported - set(NOT_IMPORTED)
    assert not unused, f"declared but neither imported nor given a reason in NOT_IMPORTED: {sorted(unused)}"
    tested = {
        canonicalize_name(DISTRIBUTION_OF.get(n, n))
        for n in _third_party_imports(list((REPO_ROOT / "tests").rglob("*.py")))
    }
    assert tested <= declared_names | dev, f"tests import undeclared packages: {sorted(tested - declared_names - dev)}"


# ---------------------------------------------------------------- the wheel


@pytest.mark.slow
def test_wheel_ships_the_configs_and_the_command(tmp_path):
    """pip wheel: lopt/conf holds every file of conf/, and the `lopt` console script is declared."""
    import zipfile

    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(tmp_path), str(REPO_ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"pip wheel failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    (wheel,) = tmp_path.glob("lopt-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(n.removeprefix("lopt/conf/") for n in names if n.startswith("lopt/conf/"))
    source = sorted(p.relative_to(REPO_ROOT / "conf").as_posix() for p in (REPO_ROOT / "conf").rglob("*.yaml"))
    assert shipped == source, f"the wheel's lopt/conf differs from conf/: {sorted(set(shipped) ^ set(source))}"
    assert "lopt/cli.py" in names and not any("__pycache__" in n for n in names)
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    assert "lopt = lopt.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


@pytest.mark.slow
def test_wheel_trains_and_recommends_in_a_fresh_venv(tmp_path):
    """.ci/wheel_check.sh: the wheel in a fresh venv outside the repository runs lopt train,
    lopt recommend and lopt.api.train (torch and every dependency from the lock)."""
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    env["PYTHON"] = sys.executable
    proc = subprocess.run(
        ["bash", str(WHEEL_CHECK), str(tmp_path / "wheel")],
        capture_output=True,
        text=True,
        timeout=1200,
        env=env,
        cwd=tmp_path,
    )
    log = "\n".join(line for line in proc.stderr.splitlines() if not line.startswith("WARNING: Location"))
    assert proc.returncode == 0, f".ci/wheel_check.sh exited {proc.returncode}\n{proc.stdout[-4000:]}\n{log[-6000:]}"
    assert "[wheel_check] passed" in proc.stderr
    run = tmp_path / "wheel" / "job" / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["dataset"] == "synthetic" and 0.0 <= metrics["test"]["auc"] <= 1.0
    assert (run / "recommendations.parquet").is_file() and (run / "run.log").stat().st_size > 0
