"""The results tools on folders of records written by the test (no training): blocks by dataset ×
protocol × control, mixed protocols through both tools, distinct configurations kept apart,
malformed runs skipped and listed (--strict fatal), per-user Δ from every seed, declared splits,
convergence columns and the verdict."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from lopt.analysis import figures, table
from lopt.analysis.results import Run, block_runs, blocks, is_borrowed, scan_runs
from tests.helpers.paths import REPO_ROOT

N_USERS = 40
LAMBDAOPT = {"auc": 0.8, "hr@50": 0.3, "ndcg@50": 0.1}
STANDARD = {"auc": 0.8, "mrr": 0.2, "recall@20": 0.25}


def write_run(
    root: Path,
    name: str,
    *,
    method: str = "MF-λFix",
    seed: int = 0,
    protocol: str = "lambdaopt",
    control: str = "none",
    applied: bool = False,
    metrics: dict[str, float] | None = None,
    shift: float = 0.0,
    lam: float | None = 0.01,
    best_epoch: int = 3,
    max_epochs: int = 10,
    patience: int = 2,
    test_ratio: float = 0.2,
    fingerprint: str = "v2-split-a",
    dataset: str = "ml100k",
    noise: float = 0.01,
) -> Path:
    """A finished run's records: metrics.json, .hydra/config.yaml and per_user_test.parquet whose
    per-user values are ``metrics`` + ``shift`` + seeded noise (metrics.json holds their means)."""
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    config = {
        "dataset": {"name": dataset, "preprocess": {"test_ratio": test_ratio}},
        "model": {"name": "fix" if lam is not None else "lambda_opt", "lambda_value": lam},
        "protocol": {"name": protocol, "split": {"kind": "temporal_user"}},
        "trainer": {"max_epochs": "${budget.max_epochs}"},
        "callbacks": {"early_stopping": {"patience": "${budget.patience}"}},
        "eval": {"every_n_epochs": 1},
        "budget": {"max_epochs": max_epochs, "patience": patience},
        "control": {"name": control},
        "seed": seed,
    }
    if lam is None:
        config["lambda_optimizer"] = {"lr": 0.1}
        config["model"]["needs_valid_triples"] = True
        config["model"].pop("lambda_value")
    (run / ".hydra" / "config.yaml").write_text(json.dumps(config))  # JSON is YAML
    base = metrics or LAMBDAOPT
    rng = np.random.default_rng(abs(hash((name, seed))) % 2**32)
    users = [f"u{k}" for k in range(N_USERS)]
    per_user = {m: v + shift + rng.normal(0, noise, N_USERS) for m, v in base.items()}
    pl.DataFrame(
        {"user": np.arange(N_USERS), "raw_user_id": users, "train_frequency": np.arange(N_USERS) + 1, **per_user}
    ).write_parquet(run / "per_user_test.parquet")
    record: dict[str, Any] = {
        "test": {m: float(v.mean()) for m, v in per_user.items()},
        "valid": {m: v + shift for m, v in base.items()},
        "best_epoch": best_epoch,
        "method": method,
        "model": config["model"]["name"],
        "lambda_value": lam,
        "dataset": dataset,
        "protocol": protocol,
        "seed": seed,
        "control": {"name": control, "applied": applied},
        "provenance": {"git_commit": "c1", "split_fingerprint": fingerprint},
    }
    (run / "metrics.json").write_text(json.dumps(record))
    return run


def _main(tool: Any, *args: str) -> int:
    return tool.main([str(a) for a in args])


def mixed_folder(root: Path) -> Path:
    """λFix (two configurations: 10 and 30 epochs, each at two λ) and λOpt-DUI/D on the lambdaopt
    protocol, λFix and DUI on the standard protocol (other metric keys), seeds 0–2."""
    for seed in range(3):
        for lam in (0.01, 0.1):
            for epochs in (10, 30):
                write_run(root, f"fix_{lam}_{epochs}_{seed}", seed=seed, lam=lam, max_epochs=epochs, shift=-lam)
        write_run(root, f"dui_{seed}", method="MF-λOpt-DUI", lam=None, seed=seed, shift=0.05)
        write_run(root, f"d_{seed}", method="MF-λOpt-D", lam=None, seed=seed, shift=0.0)
        write_run(root, f"std_fix_{seed}", protocol="standard", metrics=STANDARD, seed=seed)
        write_run(
            root, f"std_dui_{seed}", protocol="standard", metrics=STANDARD, method="MF-λOpt-DUI", lam=None, seed=seed
        )
    return root


def test_mixed_protocol_folder_through_both_tools(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = mixed_folder(tmp_path / "runs")
    out = tmp_path / "out"
    assert _main(table, runs, "--out", out / "table.md") == 0
    markdown = (out / "table.md").read_text()
    paper_block = markdown.split("## ml100k (lambdaopt protocol)")[1].split("## ml100k (standard protocol)")[0]
    standard_block = markdown.split("## ml100k (standard protocol)")[1]
    assert "MRR" not in paper_block and "MRR" in standard_block and "NDCG@50" not in standard_block
    # the λFix configurations (10 vs 30 epochs) are told apart by the key in which they differ
    assert "budget.max_epochs=10, model.lambda_value=0.01" in paper_block
    assert "budget.max_epochs=30, model.lambda_value=0.1" in paper_block
    verdict = (out / "verdict.md").read_text()
    assert "ml100k | lambdaopt | control=none | AUC | MF-λOpt-DUI − MF-λFix:" in verdict
    assert "ml100k | standard | control=none | NDCG@50 | MF-λOpt-DUI − MF-λFix: no comparison" in verdict

    figs = tmp_path / "figs"
    assert _main(figures, runs, "--out", figs, "--format", "svg") == 0
    written = sorted(p.name for p in figs.iterdir())
    assert {"fig2_ml100k_lambdaopt.svg", "fig7_ml100k_lambdaopt.svg", "fig7_ml100k_standard.svg"} <= set(written)
    assert not any(name.endswith(".png") for name in written)
    fig2 = pl.read_csv(figs / "fig2_ml100k_lambdaopt.csv")
    # two curves, never pooled: each (configuration, λ) holds its own 3 seeds
    assert sorted(fig2["config"].unique().to_list()) == ["budget.max_epochs=10", "budget.max_epochs=30"]
    assert set(fig2["n"].to_list()) == {3}
    assert fig2.filter(pl.col("metric") == "auc").height == 4
    assert (figs / "fig2_ml100k_lambdaopt.svg").read_text().lstrip().startswith("<?xml")


@pytest.mark.slow
def test_mixed_protocol_folder_through_the_scripts(tmp_path: Path) -> None:
    runs = mixed_folder(tmp_path / "runs")
    for script, extra in (("reproduce_table", []), ("figures", ["--out", str(tmp_path / "f"), "--format", "pdf"])):
        proc = subprocess.run(
            [sys.executable, str(REPO_ROOT / "experiments" / f"{script}.py"), str(runs), *extra],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "f" / "fig7_ml100k_standard.pdf").read_bytes().startswith(b"%PDF")


def test_malformed_runs_are_skipped_and_listed_and_strict_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = tmp_path / "runs"
    for seed in range(2):
        write_run(runs, f"fix_{seed}", seed=seed)
        write_run(runs, f"dui_{seed}", method="MF-λOpt-DUI", lam=None, seed=seed, shift=0.05)
    bad_value = write_run(runs, "na", seed=7)
    record = json.loads((bad_value / "metrics.json").read_text())
    record["test"]["auc"] = "n/a"
    (bad_value / "metrics.json").write_text(json.dumps(record))
    bad_config = write_run(runs, "broken_config", seed=8)
    (bad_config / ".hydra" / "config.yaml").write_text("model: [unclosed\n")
    no_per_user = write_run(runs, "no_per_user", method="MF-λOpt-DU", lam=None, seed=0)
    (no_per_user / "per_user_test.parquet").unlink()

    found, malformed = scan_runs(runs)
    assert {m.path for m in malformed} == {bad_value, bad_config}
    assert "test[\"auc\"] is 'n/a'" in next(m.reason for m in malformed if m.path == bad_value)
    assert len(found) == 5

    assert _main(table, runs, "--out", tmp_path / "t.md") == 0
    err = capsys.readouterr().err
    assert "skipped 3 malformed run(s)" in err
    for path in (bad_value, bad_config, no_per_user):
        assert str(path) in err
    markdown = (tmp_path / "t.md").read_text()
    assert "## Skipped runs (3)" in markdown and "| MF-λOpt-DUI | MF-λFix | yes | +0.0" in markdown
    assert _main(table, runs, "--strict") == 2
    assert "--strict" in capsys.readouterr().err

    assert _main(figures, runs, "--out", tmp_path / "f") == 0
    assert str(bad_value) in capsys.readouterr().err
    assert _main(figures, runs, "--out", tmp_path / "f2", "--strict") == 2


def test_per_user_delta_uses_every_seed(tmp_path: Path) -> None:
    """Seed 0 shows no difference, seeds 1 and 2 show +0.3: Δ is their mean, 0.2, not seed 0's 0."""
    runs = tmp_path / "runs"
    for seed, shift in ((0, 0.0), (1, 0.3), (2, 0.3)):
        write_run(runs, f"fix_{seed}", seed=seed, noise=0.0)
        write_run(runs, f"dui_{seed}", method="MF-λOpt-DUI", lam=None, seed=seed, shift=shift, noise=0.0)
    report = table.render(runs, rule=table.load_rule())
    assert "| MF-λOpt-DUI | MF-λFix | yes | +0.2000 [" in report.markdown
    assert "AUC | MF-λOpt-DUI − MF-λFix: Δ = +0.2000" in report.verdict


def test_verdict_follows_the_rule_and_holm(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for seed in range(5):
        write_run(runs, f"fix_{seed}", seed=seed)
        write_run(runs, f"dui_{seed}", method="MF-λOpt-DUI", lam=None, seed=seed, shift=0.05)
        write_run(runs, f"d_{seed}", method="MF-λOpt-D", lam=None, seed=seed, shift=-0.05)
        write_run(runs, f"neumf_{seed}", method="NeuMF", seed=seed, shift=0.0005)
    report = table.render(runs, rule=table.load_rule())
    assert "claim MF-λOpt-DUI > MF-λFix: HOLDS" in report.verdict
    assert "claim MF-λOpt-DUI > MF-λOpt-D: HOLDS" in report.verdict
    # D is clearly worse than λFix: a two-sided test marks it (a one-sided "better" test would not)
    d_row = next(line for line in report.markdown.splitlines() if line.startswith("| MF-λOpt-D | MF-λFix |"))
    assert d_row.count(" *") == 3 and "-0.05" in d_row
    neumf_row = next(line for line in report.markdown.splitlines() if line.startswith("| NeuMF | MF-λFix |"))
    assert " *" not in neumf_row  # a negligible difference does not survive Holm
    assert "Holm-adjusted over the 12 tests" in report.markdown  # 4 comparisons × 3 metrics


def test_unmatched_control_gives_no_verdict(tmp_path: Path) -> None:
    """Under control=inner, λFix borrowed from the paper block trained Θ on all of train while
    λOpt's Θ trained on train less its Λ-split: the table says so and the verdict abstains; DUI − D
    (both on the same data) is still decided."""
    runs = tmp_path / "runs"
    for seed in range(3):
        write_run(runs, f"fix_{seed}", seed=seed)
        for method, shift in (("MF-λOpt-DUI", 0.05), ("MF-λOpt-D", 0.0)):
            write_run(runs, f"{method}_{seed}", method=method, lam=None, seed=seed, shift=shift)
            write_run(
                runs,
                f"inner_{method}_{seed}",
                method=method,
                lam=None,
                seed=seed,
                shift=shift,
                control="inner",
                applied=True,
            )
    report = table.render(runs, rule=table.load_rule())
    inner = report.markdown.split("## ml100k (control=inner)")[1]
    assert "NOT a matched control" in inner and "MF-λFix (borrowed from the paper block)" in inner
    assert "| MF-λFix | 3 | paper block |" in inner
    verdict = report.verdict.split("## ml100k (control=inner)")[1]
    assert "claim MF-λOpt-DUI > MF-λFix: no verdict" in verdict
    assert "claim MF-λOpt-DUI > MF-λOpt-D: HOLDS" in verdict


def test_declared_splits_are_one_study(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two splits of the dataset (different split parameters, each its own fingerprint) are units
    of one table; two fingerprints for the same split parameters are different data: refused."""
    runs = tmp_path / "runs"
    for split, (ratio, fingerprint) in enumerate(((0.2, "v2-a"), (0.3, "v2-b"))):
        for seed in range(2):
            write_run(runs, f"fix_{split}_{seed}", seed=seed, test_ratio=ratio, fingerprint=fingerprint)
            write_run(
                runs,
                f"dui_{split}_{seed}",
                method="MF-λOpt-DUI",
                lam=None,
                seed=seed,
                test_ratio=ratio,
                fingerprint=fingerprint,
                shift=0.05,
            )
    assert _main(table, runs, "--out", tmp_path / "t.md") == 0
    markdown = (tmp_path / "t.md").read_text()
    assert "| MF-λFix | 2 × 2 splits |" in markdown and "| 4 (2 splits) |" in markdown
    write_run(runs, "fix_other_data", seed=5, fingerprint="v2-c")  # split parameters of split 1, other data
    assert _main(table, runs) == 2
    assert "split_fingerprint" in capsys.readouterr().err


def test_convergence_columns_from_the_records(tmp_path: Path) -> None:
    """Stopped early: best epoch b, patience P, cap C (interpolated from budget.*) → b + P + 1 < C."""
    runs = tmp_path / "runs"
    write_run(runs, "early", seed=0, best_epoch=3, max_epochs=10, patience=2)  # stops after epoch 5
    write_run(runs, "capped", seed=1, best_epoch=8, max_epochs=10, patience=2)  # would stop after 10
    found = {r.path.name: r for r in scan_runs(runs)[0]}
    assert found["early"].stopped_early is True and found["capped"].stopped_early is False
    assert found["early"].max_epochs == 10
    explicit = Run(Path("x"), {"test": {"auc": 1.0}, "best_epoch": 9, "stopped_early": True}, {})
    assert explicit.stopped_early is True
    markdown = table.render(runs, rule=table.load_rule()).markdown
    assert "| MF-λFix | 2 | own | 1/2 | 6.5 / 10 |" in markdown  # median of best epochs 4 and 9 (from 1)


def test_decision_rule_errors_name_the_file_and_key(tmp_path: Path) -> None:
    rule = tmp_path / "rule.yaml"
    rule.write_text("alpha: 2\nlevel: 0.95\ntest: bootstrap\nreplicates: 1000\nseed: 0\nbaseline: MF-λFix\n")
    with pytest.raises(ValueError, match=r"rule.yaml: `alpha` must be a number in \(0, 1\)"):
        table.load_rule(rule)
    rule.write_text(rule.read_text().replace("alpha: 2", "alpha: 0.05").replace("test: bootstrap", "test: wilcoxon"))
    with pytest.raises(ValueError, match="`test` must be one of bootstrap, t"):
        table.load_rule(rule)
    shipped = table.load_rule()
    assert shipped.test == "bootstrap" and shipped.baseline == "MF-λFix" and len(shipped.claims) == 2


def _matched(run: Path, block: str, borrowed: bool = False) -> None:
    """Turn a written run into a matched-control record of ``block``."""
    record = json.loads((run / "metrics.json").read_text())
    name = {"paper": "none", "inner": "inner"}.get(block, "refit")
    record["control"] = {"name": name, "applied": name != "none", "matched": True, "block": block, "borrowed": borrowed}
    (run / "metrics.json").write_text(json.dumps(record))


def test_matched_records_form_their_named_blocks_and_borrow_nothing_implicitly(tmp_path: Path) -> None:
    """Matched records group by the block they name (the refit's two Λ settings apart), a paper
    run is never pulled into a control block, and a row copied into a block is marked borrowed."""
    root = tmp_path / "runs"
    for seed in (0, 1):
        _matched(write_run(root, f"fix-paper-{seed}", seed=seed), "paper")
        _matched(write_run(root, f"dui-final-{seed}", method="MF-λOpt-DUI", seed=seed, lam=None), "refit-final")
        _matched(write_run(root, f"dui-traj-{seed}", method="MF-λOpt-DUI", seed=seed, lam=None), "refit-trajectory")
        _matched(write_run(root, f"fix-traj-{seed}", seed=seed), "refit-trajectory", borrowed=True)
    runs, malformed = scan_runs(root)
    assert not malformed
    found = blocks(runs)
    assert [b.control for b in found] == ["none", "refit-final", "refit-trajectory"]
    final = block_runs(runs, found[1])
    assert {r.method for r in final} == {"MF-λOpt-DUI"}  # λFix's paper runs are not borrowed
    trajectory = block_runs(runs, found[2])
    assert {(r.method, is_borrowed(r, found[2])) for r in trajectory} == {("MF-λOpt-DUI", False), ("MF-λFix", True)}
    assert all(isinstance(r, Run) for r in trajectory)
