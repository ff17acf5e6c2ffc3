"""The containers and the conda environment agree with pyproject.toml (no Docker engine runs here).

Checked: each Dockerfile parses (known instructions, continuation lines); every COPY/ADD source is a
path that git would commit (not ignored, not an empty folder), since a fresh clone is the build
context; the Python and torch versions they install satisfy pyproject's requires-python and torch
pin; and environment.yml lists exactly pyproject's dependencies.
"""

from __future__ import annotations

import glob
import json
import re
import shlex
import subprocess
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
ENVIRONMENT_YML = REPO_ROOT / "environment.yml"

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


def torch_pin() -> Version:
    """The exact torch version pinned in pyproject (the images and environment.yml must agree)."""
    for dep in pyproject()["project"]["dependencies"]:
        req = Requirement(dep)
        if canonicalize_name(req.name) == "torch":
            pins = [s for s in req.specifier if s.operator == "=="]
            assert len(pins) == 1, f"pyproject pins torch with '{req.specifier}', expected one '=='"
            return Version(pins[0].version)
    raise AssertionError("pyproject.toml [project.dependencies] has no torch")


def environment() -> dict:
    return yaml.safe_load(ENVIRONMENT_YML.read_text())


def environment_pip() -> list[str]:
    pips = [d["pip"] for d in environment()["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pips) == 1, f"{ENVIRONMENT_YML}: expected one `pip:` section, found {len(pips)}"
    return [str(x) for x in pips[0]]


def normalized(requirement: str) -> tuple[str, str, str, str]:
    """(name, extras, specifiers, marker) independent of spelling, spacing and order."""
    req = Requirement(requirement)
    specs = ",".join(sorted(str(s) for s in req.specifier))
    return canonicalize_name(req.name), ",".join(sorted(req.extras)), specs, str(req.marker or "")


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
    assert entrypoints == [["python", "run.py"]], f'{path}: ENTRYPOINT must be ["python", "run.py"]'
    workdirs = [t for _, k, t in instructions if k == "WORKDIR"]
    assert workdirs, f"{path}: no WORKDIR"
    env = " ".join(t for _, k, t in instructions if k == "ENV")
    assert re.search(r"\bLOPT_DATA_DIR=/data\b", env), f"{path}: ENV LOPT_DATA_DIR=/data missing"
    volumes = " ".join(t for _, k, t in instructions if k == "VOLUME")
    assert "/data" in volumes, f"{path}: VOLUME /data missing"
    secrets = [t for _, k, t in instructions if k in {"ENV", "ARG"} and "WANDB_API_KEY" in t]
    assert not secrets, f"{path}: WANDB_API_KEY must be passed at run time (docker run -e), not baked in"
    runs = " ".join(t for _, k, t in instructions if k == "RUN")
    assert re.search(r"pip install (\S+ )*\.(\s|$|\[)", runs), f"{path}: the project is not pip-installed"


@pytest.mark.slow
def test_copy_sources_exist_in_the_repository(dockerfile):
    path, instructions = dockerfile
    args = build_args(instructions)
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


def test_dockerfile_versions_match_pyproject(dockerfile):
    path, instructions = dockerfile
    args = build_args(instructions)
    requires_python = SpecifierSet(pyproject()["project"]["requires-python"])
    python = args.get("PYTHON_VERSION")
    assert python, f"{path}: declare the Python version as ARG PYTHON_VERSION=<x.y>"
    assert Version(python) in requires_python, (
        f"{path}: PYTHON_VERSION={python} does not satisfy requires-python '{requires_python}'"
    )
    from_lines = [expand(t, args) for _, k, t in instructions if k == "FROM"]
    runs = expand(" ".join(t for _, k, t in instructions if k == "RUN"), args)
    assert f"python:{python}" in from_lines[0] or f"python{python}" in runs, (
        f"{path}: neither the base image ({from_lines[0]}) nor a RUN installs Python {python}"
    )
    torch = args.get("TORCH_VERSION")
    assert torch, f"{path}: declare the torch version as ARG TORCH_VERSION=<x.y.z>"
    assert Version(torch) == torch_pin(), f"{path}: TORCH_VERSION={torch} but pyproject pins torch=={torch_pin()}"
    assert re.search(rf"torch=={re.escape(torch)}\b", runs), f"{path}: no RUN installs torch=={torch}"
    index = re.search(r"download\.pytorch\.org/whl/(\w+)", runs)
    assert index, f"{path}: torch must come from the PyTorch index (download.pytorch.org/whl/<cpu|cuXYZ>)"
    if path.name.endswith(".cpu"):
        assert index.group(1) == "cpu", f"{path}: the CPU image must install the CPU wheel, not {index.group(1)}"
    else:
        assert index.group(1).startswith("cu"), f"{path}: the CUDA image installs torch from '{index.group(1)}'"
        assert "nvidia/cuda" in from_lines[0] and "runtime" in from_lines[0], (
            f"{path}: base image {from_lines[0]} is not a CUDA runtime image"
        )


def test_environment_yml_python_and_torch_match_pyproject():
    env = environment()
    assert env.get("name") == "lopt", f"{ENVIRONMENT_YML}: the environment must be named lopt"
    pythons = [d for d in env["dependencies"] if isinstance(d, str) and re.match(r"python\s*[=<>]", d)]
    assert len(pythons) == 1, f"{ENVIRONMENT_YML}: expected one python=<x.y> entry, found {pythons}"
    version = re.sub(r"^python\s*=+\s*", "", pythons[0])
    requires_python = SpecifierSet(pyproject()["project"]["requires-python"])
    assert Version(version) in requires_python, (
        f"{ENVIRONMENT_YML}: python={version} does not satisfy requires-python '{requires_python}'"
    )
    assert "pip" in env["dependencies"], f"{ENVIRONMENT_YML}: list pip among the conda dependencies"
    torch = [
        r for r in environment_pip() if not r.startswith("-") and canonicalize_name(Requirement(r).name) == "torch"
    ]
    assert torch and Requirement(torch[0]).specifier == SpecifierSet(f"=={torch_pin()}"), (
        f"{ENVIRONMENT_YML}: torch must be pinned to =={torch_pin()} like pyproject, found {torch}"
    )


def test_environment_yml_lists_exactly_the_pyproject_dependencies():
    pip = environment_pip()
    options = [r for r in pip if r.startswith("-")]
    assert any(re.fullmatch(r"-e\s+\.(\[[\w,-]+\])?", o) for o in options), (
        f"{ENVIRONMENT_YML}: the pip section must install the project itself with `-e .`"
    )
    from_env = {normalized(r) for r in pip if not r.startswith("-")}
    from_pyproject = {normalized(r) for r in pyproject()["project"]["dependencies"]}
    missing = sorted(from_pyproject - from_env)
    extra = sorted(from_env - from_pyproject)
    assert not missing and not extra, (
        "environment.yml and pyproject.toml [project.dependencies] differ; update environment.yml.\n"
        f"  in pyproject only: {missing}\n  in environment.yml only: {extra}"
    )


def test_normalization_sees_drift():
    """The comparison ignores spelling but not versions."""
    assert normalized("Hydra_Core >=1.3.8, <1.4") == normalized("hydra-core<1.4,>=1.3.8")
    assert normalized("numpy>=2.0,<3") != normalized("numpy>=2.1,<3")


#: Import name → distribution name, where they differ.
DISTRIBUTION_OF = {"hydra": "hydra-core", "yaml": "pyyaml", "hydra_plugins": "hydra-submitit-launcher"}
#: Declared but never imported by name, each for a stated reason.
NOT_IMPORTED = {
    "rich": "Lightning's RichProgressBar (callbacks.progress) needs it",
    "alembic": "optuna's database storage of studies (its schema migrations)",
}


def _third_party_imports(paths: list[Path]) -> set[str]:
    """Top-level modules imported anywhere in ``paths`` (nested imports included) that are not
    the standard library or lopt/tests themselves."""
    import ast
    import sys

    names: set[str] = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    # the project's own packages, and the scripts of experiments/ that import each other
    local = {"lopt", "tests", "run"} | {p.stem for p in (REPO_ROOT / "experiments").glob("*.py")}
    return {n for n in names if n not in sys.stdlib_module_names and n not in local}


def test_declared_dependencies_are_exactly_the_imported_ones():
    """Runtime code (lopt/, run.py, experiments/) imports exactly [project.dependencies] (less the
    NOT_IMPORTED ones); the tests need nothing beyond those and the dev extra."""
    project = pyproject()["project"]
    declared = {canonicalize_name(Requirement(d).name) for d in project["dependencies"]}
    dev = {canonicalize_name(Requirement(d).name) for d in project["optional-dependencies"]["dev"]}
    runtime = [*(REPO_ROOT / "lopt").rglob("*.py"), REPO_ROOT / "run.py", *(REPO_ROOT / "experiments").rglob("*.py")]
    imported = {canonicalize_name(DISTRIBUTION_OF.get(n, n)) for n in _third_party_imports(runtime)}
    assert imported == declared - set(NOT_IMPORTED), (
        f"imported but not declared: {sorted(imported - declared)}; "
        f"declared but not imported: {sorted(declared - imported - set(NOT_IMPORTED))}"
    )
    tested = {
        canonicalize_name(DISTRIBUTION_OF.get(n, n))
        for n in _third_party_imports(list((REPO_ROOT / "tests").rglob("*.py")))
    }
    assert tested <= declared | dev, f"tests import undeclared packages: {sorted(tested - declared - dev)}"
