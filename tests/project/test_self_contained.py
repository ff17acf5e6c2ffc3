"""The repository refers to nothing outside itself: no design notes or data next to it, no
machine paths, and every mention of a documentation page names a page that exists. The tests
and benchmarks that read the ml-100k copy in ../shared/data (and skip when it is absent) are
the one exception."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.helpers.paths import REPO_ROOT

#: Files that may read the ml-100k copy beside the repository (its data folder only).
MAY_READ_SHARED_DATA = re.compile(r"^(tests/|experiments/bench\.py$|experiments/bench/)")
OUTSIDE = re.compile(r"\.\./shared(?P<next>/[\w.-]+)?|\"shared\"\s*/\s*\"(?P<next2>[\w.-]+)\"|shared/design")
MACHINE_PATH = re.compile(r"(?<![\w.])/work/")
DOC_PAGE = re.compile(r"(?<![\w./-])((?:[\w.-]+/)*)(method|protocol|architecture|configuration|results|recipes)\.md\b")
BINARY = {".png", ".npz", ".parquet", ".ckpt", ".gz", ".zip", ".pt", ".jpg"}


def repository_files() -> list[str]:
    """Files git would commit (tracked, or untracked and not ignored)."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    files = [f for f in out.splitlines() if (REPO_ROOT / f).is_file() and Path(f).suffix not in BINARY]
    return [f for f in files if f != Path(__file__).relative_to(REPO_ROOT).as_posix()]


def problems_in(relative: str, text: str) -> list[str]:
    """What in ``text`` (the content of ``relative``) points outside the repository."""
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        where = f"{relative}:{number}"
        for match in OUTSIDE.finditer(line):
            nxt = match.group("next") or (f"/{match.group('next2')}" if match.group("next2") else None)
            if not (MAY_READ_SHARED_DATA.match(relative) and nxt == "/data"):
                found.append(f"{where}: refers outside the repository: {match.group(0)!r}")
        if MACHINE_PATH.search(line):
            found.append(f"{where}: a machine path: {line.strip()[:80]!r}")
        for match in DOC_PAGE.finditer(line):
            prefix, page = match.group(1), f"{match.group(2)}.md"
            base = (REPO_ROOT / relative).parent if relative.startswith("docs/") else REPO_ROOT
            if not (base / prefix / page).is_file():
                found.append(
                    f"{where}: {prefix}{page} is not a page of the repository (docs/ has the method, "
                    "protocol, configuration, results and recipes pages)"
                )
    return found


@pytest.mark.slow
def test_nothing_refers_outside_the_repository() -> None:
    problems = []
    for relative in repository_files():
        try:
            text = (REPO_ROOT / relative).read_text()
        except UnicodeDecodeError:
            continue
        problems.extend(problems_in(relative, text))
    assert not problems, "\n".join(problems)


def test_the_scan_catches_what_it_should() -> None:
    assert problems_in("lopt/x.py", "# see ../shared/design/method.md")
    assert problems_in("lopt/x.py", '"""the invariant of method.md"""')
    assert problems_in("README.md", "see protocol.md")
    assert problems_in("experiments/results/run_all.sh", "DATA=../shared/data/ml-100k/u.data")
    assert problems_in("lopt/x.py", "cache at /work/main/data")
    assert not problems_in("tests/test_x.py", 'SHARED = REPO_ROOT.parent / "shared" / "data"')
    assert not problems_in("experiments/bench.py", "--ratings ../shared/data/ml-100k/u.data")
    assert not problems_in("lopt/x.py", '(docs/method.md, "Training")')
    assert not problems_in("docs/recipes.md", "see [results.md](results.md)")
