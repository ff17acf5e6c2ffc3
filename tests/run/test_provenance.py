"""Provenance of a run (lopt.run.provenance) and the refusal to tabulate runs of mixed provenance."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lopt.analysis.results import MixedProvenanceError, Run, check_provenance, provenance_differences
from lopt.run import provenance as prov
from lopt.tracking import loggers
from tests.helpers.cli import REPO_ROOT
from tests.helpers.hydra import compose_config
from tests.helpers.scripts import load_script

KEYS = {"git_commit", "git_dirty", "versions", "device", "split_fingerprint", "config_hash"}


def _cfg(*overrides: str):
    return compose_config(overrides)


@pytest.mark.slow
def test_collect_provenance_fields() -> None:
    block = prov.collect_provenance(_cfg("seed=3"), "v1-abc", torch.device("cpu"))
    assert set(block) == KEYS
    assert set(block["versions"]) == {"lopt", "torch", "lightning", "hydra", "omegaconf"}
    assert block["versions"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert all(isinstance(v, str) and v for v in block["versions"].values())
    assert block["device"] == "cpu" and block["split_fingerprint"] == "v1-abc"
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True)
    if head.returncode == 0:  # the tests run from a git checkout
        assert block["git_commit"] == head.stdout.strip() and isinstance(block["git_dirty"], bool)
    assert re.fullmatch(r"[0-9a-f]{64}", block["config_hash"])
    json.dumps(block)  # metrics.json-ready


def test_config_hash_follows_the_composed_config() -> None:
    a, b = _cfg("seed=3"), _cfg("seed=3")
    assert prov.config_hash(a) == prov.config_hash(b)
    assert prov.config_hash(_cfg("seed=4")) != prov.config_hash(a)
    assert prov.config_hash(_cfg("seed=3", "model.dim=16")) != prov.config_hash(a)


def test_outside_a_git_checkout_commit_is_null(tmp_path: Path) -> None:
    assert prov.git_state(tmp_path) == (None, None)
    assert prov.commit_label(tmp_path) == "unknown"
    block = prov.collect_provenance(_cfg(), "v1-abc", "cpu", source_root=tmp_path)
    assert block["git_commit"] is None and block["git_dirty"] is None


@pytest.mark.slow
def test_git_dirty_tracks_uncommitted_changes(tmp_path: Path) -> None:
    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "a.txt").write_text("a")
    git("add", "a.txt")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "a")
    commit, dirty = prov.git_state(tmp_path)
    assert re.fullmatch(r"[0-9a-f]{40}", commit or "") and dirty is False
    assert prov.commit_label(tmp_path) == commit
    (tmp_path / "a.txt").write_text("b")
    assert prov.git_state(tmp_path) == (commit, True)
    assert prov.commit_label(tmp_path) == f"{commit}-dirty"


def test_provenance_copied_into_wandb_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    cfg = _cfg("logger=wandb", f"paths.output_dir={tmp_path / 'run'}")
    logger = loggers.build_logger(cfg, tmp_path / "run")
    try:
        block = prov.collect_provenance(cfg, "v1-abc", "cpu")
        prov.log_provenance([logger], block)
        assert dict(logger.experiment.config["provenance"]) == block
    finally:
        loggers.finish_wandb(logger)


def _run(path: str, commit: str | None, fingerprint: str = "v1-s") -> Run:
    block = {"git_commit": commit, "split_fingerprint": fingerprint}
    return Run(Path(path), {"test": {}, "provenance": block}, {})


def test_check_provenance_names_the_runs_that_differ() -> None:
    same = [_run("a", "c1"), _run("b", "c1")]
    assert check_provenance(same) is None and provenance_differences(same) == {}
    mixed = [*same, _run("c", "c2"), _run("d", "c1", "v1-other")]
    with pytest.raises(MixedProvenanceError) as refused:
        check_provenance(mixed)
    message = str(refused.value)
    assert "git_commit" in message and "split_fingerprint" in message and "--allow-mixed" in message
    assert "c2 (1 run):\n    c" in message and "v1-other (1 run):\n    d" in message
    report = check_provenance(mixed, allow_mixed=True)
    assert report is not None and "c2 (1 run)" in report
    differences = provenance_differences(mixed)
    assert differences["git_commit"] == {"c1": [Path("a"), Path("b"), Path("d")], "c2": [Path("c")]}
    # A run without any provenance block (older code) is its own, "unknown", provenance.
    old = Run(Path("old"), {"test": {}}, {})
    assert provenance_differences([*same, old])["git_commit"]["unknown"] == [Path("old")]


@pytest.mark.slow
def test_reproduce_table_refuses_mixed_commits(tmp_path: Path) -> None:
    """The script exits 2 naming the run of the other commit, before any table is made."""
    for name, commit in (("r0", "c1"), ("r1", "c1"), ("r2", "c2")):
        run_dir = tmp_path / "results" / name
        (run_dir / ".hydra").mkdir(parents=True)
        (run_dir / ".hydra" / "config.yaml").write_text("seed: 0\n")
        metrics = {
            "test": {"auc": 0.5},
            "valid": {"auc": 0.5},
            "method": "MF-λFix",
            "dataset": "synthetic",
            "seed": 0,
            "provenance": {"git_commit": commit, "split_fingerprint": "v1-s"},
        }
        (run_dir / "metrics.json").write_text(json.dumps(metrics))
    script = load_script("reproduce_table")
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "experiments" / "reproduce_table.py"), str(tmp_path / "results")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert "git_commit" in proc.stderr and str(tmp_path / "results" / "r2") in proc.stderr
    assert "--allow-mixed" in proc.stderr and proc.stdout == ""
    assert script.main([str(tmp_path / "results")]) == 2


@pytest.mark.slow
def test_runs_record_provenance_and_allow_mixed_lists_them(finished_runs: Path, tmp_path: Path) -> None:  # noqa: F811 - a fixture
    """Real runs (through run.py) carry the block; one commit and split across them; a copy with
    one run's commit changed is refused, and tabulated with --allow-mixed, which lists that run."""
    blocks = [json.loads(p.read_text())["provenance"] for p in sorted(finished_runs.rglob("metrics.json"))]
    assert len(blocks) >= 8 and all(set(b) == KEYS for b in blocks)
    assert len({b["git_commit"] for b in blocks}) == 1 and len({b["split_fingerprint"] for b in blocks}) == 1
    assert all(b["device"] == "cpu" and b["split_fingerprint"].startswith("v") for b in blocks)
    assert len({b["config_hash"] for b in blocks}) == len(blocks)  # λ, granularity or seed differ

    results = tmp_path / "results"
    shutil.copytree(finished_runs, results)
    changed = sorted(results.rglob("metrics.json"))[0]
    metrics = json.loads(changed.read_text())
    metrics["provenance"]["git_commit"] = "0" * 40
    changed.write_text(json.dumps(metrics))
    script = [sys.executable, str(REPO_ROOT / "experiments" / "reproduce_table.py"), str(results)]
    refused = subprocess.run(script, capture_output=True, text=True, timeout=300, check=False)
    assert refused.returncode == 2 and str(changed.parent) in refused.stderr
    allowed = subprocess.run([*script, "--allow-mixed"], capture_output=True, text=True, timeout=300, check=False)
    assert allowed.returncode == 0, allowed.stderr
    assert "## synthetic" in allowed.stdout and str(changed.parent) in allowed.stderr and "0" * 40 in allowed.stderr
