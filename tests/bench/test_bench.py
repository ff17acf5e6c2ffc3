"""experiments/bench.py keeps working: a tiny-shape run writes every key of bench.json, all finite.

Benchmarks are not timed tests; this only checks the script end to end (subprocess, its own
cache directory, no network)."""

from __future__ import annotations

import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

from tests.helpers.cli import REPO_ROOT

BENCH = REPO_ROOT / "experiments" / "bench.py"


def _finite_numbers(value: object) -> bool:
    if isinstance(value, bool):
        return True
    if isinstance(value, (int, float)):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite_numbers(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(_finite_numbers(v) for v in value)
    return True


@pytest.mark.slow
def test_bench_tiny_writes_every_key(tmp_path) -> None:  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(BENCH.parent))
    try:
        import bench
    finally:
        sys.path.remove(str(BENCH.parent))
    out = tmp_path / "bench.json"
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            "--shape",
            "tiny",
            "--out",
            str(out),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--threads",
            "1",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "TMPDIR": str(scratch)},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not list(scratch.glob("lopt-bench-*")), "the runs' checkpoints were left behind"
    result = json.loads(out.read_text())
    missing = [k for k in bench.REQUIRED_KEYS if k not in result]
    assert not missing, f"bench.json lacks {missing}"
    for key in bench.REQUIRED_KEYS:
        if key in ("machine", "shape"):
            assert isinstance(result[key], str) and result[key]
        else:
            assert _finite_numbers(result[key]), (key, result[key])
    numeric = [k for k in bench.REQUIRED_KEYS if k not in ("machine", "shape", "load_avg")]
    for key in numeric:
        assert isinstance(result[key], (int, float)), key
    assert result["shape"] == "tiny"
    assert result["torch_threads"] == 1
    for key in (
        "prep_seconds",
        "sample_seconds_per_epoch",
        "fix_step_seconds",
        "opt_d_step_seconds",
        "opt_dui_step_seconds",
        "opt_dui_adam_step_seconds",
        "eval_seconds",
        "peak_rss_mb",
    ):
        assert result[key] > 0, key
    assert "ratio_dui_over_fix" in proc.stdout  # the printed table
    # the cached data file is reused by a second run (generated once)
    assert (tmp_path / "cache").is_dir() and any((tmp_path / "cache").rglob("ratings.dat"))


def _load_bench():  # type: ignore[no-untyped-def]
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_module", BENCH)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def _write_udata(path, n_users: int = 120, n_items: int = 150, n: int = 5000) -> None:  # type: ignore[no-untyped-def]
    """A small ratings file in ml-100k's u.data format (tab-separated, 1-based ids)."""
    from lopt.data.synthetic import generate_interactions

    frame = generate_interactions(n_users, n_items, n, seed=3)
    lines = [f"{u + 1}\t{i + 1}\t4\t{t}" for u, i, t in frame.select(["user", "item", "timestamp"]).iter_rows()]
    path.write_text("\n".join(lines) + "\n")


def _bench(tmp_path, *args: str) -> dict:  # type: ignore[no-untyped-def]
    out = tmp_path / "bench.json"
    scratch = tmp_path / "tmp"
    scratch.mkdir(exist_ok=True)
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--out", str(out), "--cache-dir", str(tmp_path / "cache"), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "TMPDIR": str(scratch), "WANDB_MODE": "disabled"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not list(scratch.glob("lopt-bench-*")), "the runs' files were left behind"
    return json.loads(out.read_text())


@pytest.mark.slow
def test_bench_ml100k_shape_writes_its_keys(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """--shape ml100k on a small u.data file: the bare floor, lopt's steps, epochs with and without
    evaluation, the evaluation alone, the ratios and the start-up of run.py, all measured; the
    keys of an existing bench.json are kept."""
    bench = _load_bench()
    data = tmp_path / "u.data"
    _write_udata(data)
    earlier = {"fix_step_seconds": 0.5, "peak_rss_mb": 1.0, "load_avg": {"before": [0, 0, 0], "after": [0, 0, 0]}}
    (tmp_path / "bench.json").write_text(json.dumps(earlier))
    result = _bench(
        tmp_path, "--shape", "ml100k", "--data", str(data), "--threads", "1", "--ml100k-schedule", "1", "2", "2"
    )
    for key in bench.ML100K_KEYS:
        assert key in result, key
        assert _finite_numbers(result[key]), (key, result[key])
    for key in bench.ML100K_KEYS[:-1]:
        assert result[key] > 0, key
    epoch_floor = result["ml100k_batches_per_epoch"] * result["ml100k_bare_step_seconds"]
    assert result["ml100k_ratio_fix_over_bare"] == pytest.approx(
        result["ml100k_epoch_eval_seconds_fix"] / (epoch_floor + result["ml100k_bare_eval_seconds"])
    )
    assert result["ml100k_ratio_epoch_eval_over_epoch"] == pytest.approx(
        result["ml100k_epoch_eval_seconds_fix"] / result["ml100k_epoch_seconds_fix"]
    )
    for key, value in earlier.items():  # merged into the existing file, an ML-10M run's keys kept
        assert result[key] == value, key
    assert result["ml100k_peak_rss_mb"] > 0 and result["ml100k_torch_threads"] == 1
    # a plain run (CSV logger, no study) loads neither W&B nor optuna before its first step
    assert not {"wandb", "optuna"} & set(result["startup_optional_imports"])


@pytest.mark.slow
def test_bench_study_and_rss_modes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """--study (2 trials, 2 epochs, this checkout as both before and after, and once more with the
    trials sharing processes) and --rss (the tiny shape, 1 epoch) run the real run.py and record
    their keys."""
    data = tmp_path / "u.data"
    _write_udata(data)
    result = _bench(
        tmp_path,
        "--study",
        "--data",
        str(data),
        "--study-trials",
        "2",
        "--study-epochs",
        "2",
        "--study-before",
        str(REPO_ROOT),
        "--study-shared",
    )
    assert result["ml100k_study_seconds"] > 0 and result["ml100k_study_seconds_before"] > 0
    assert result["ml100k_study_seconds_shared"] > 0
    assert result["ml100k_study_code_commit"] == result["ml100k_study_before_commit"] != ""
    assert set(result["ml100k_study_seconds_shared_by_method"]) == {"fix", "dui"}
    assert set(result["ml100k_study_seconds_by_method"]) == {"fix", "dui"}
    assert result["ml100k_study_seconds"] == pytest.approx(sum(result["ml100k_study_seconds_by_method"].values()))
    result = _bench(tmp_path, "--rss", "--shape", "tiny", "--rss-epochs", "1")
    assert 50 < result["peak_rss_mb_ml10m_dui_run"] < 20_000
    assert result["ml100k_study_seconds"] > 0  # the study's keys are kept


def _fake_sweep(launched: list[list[str]]) -> type:
    """A stand-in for subprocess.Popen of a study's ``run.py -m`` sweep: it records the command in
    ``launched`` and writes a metrics.json for each value of the swept list, as the sweep would."""

    class FakeRun:
        def __init__(self, cmd, **kwargs) -> None:  # type: ignore[no-untyped-def]
            launched.append(cmd)
            sweep = next(pathlib.Path(arg.split("=", 1)[1]) for arg in cmd if arg.startswith("hydra.sweep.dir="))
            values = next(arg for arg in cmd if arg.startswith(("model.lambda_value=", "lambda_optimizer.lr=")))
            for i, _ in enumerate(values.split("=", 1)[1].split(",")):
                (sweep / str(i)).mkdir(parents=True)
                (sweep / str(i) / "metrics.json").write_text("{}")
            self.returncode = 0

        def communicate(self) -> tuple[str, str]:
            return "", ""

    return FakeRun


def test_study_methods_time_only_the_named_studies(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """--study-methods dui: only the DUI sweep is launched, in both checkouts, and the totals and
    the ratio sum that study alone."""
    bench = _load_bench()
    launched: list[list[str]] = []
    monkeypatch.setattr(bench.subprocess, "Popen", _fake_sweep(launched))
    monkeypatch.setattr(bench, "code_commit", lambda checkout: "0" * 40)
    result = bench.run_study(tmp_path / "u.data", REPO_ROOT, trials=3, epochs=1, methods=("dui",))
    experiments = [next(arg for arg in cmd if arg.startswith("+experiment=")) for cmd in launched]
    assert experiments == ["+experiment=ml100k_dui", "+experiment=ml100k_dui"]
    assert result["study_methods"] == ["dui"]
    assert set(result["ml100k_study_seconds_by_method"]) == {"dui"}
    assert set(result["ml100k_study_seconds_before_by_method"]) == {"dui"}
    assert result["ml100k_study_seconds"] == result["ml100k_study_seconds_by_method"]["dui"]
    assert result["ml100k_study_ratio"] == pytest.approx(
        result["ml100k_study_seconds"] / result["ml100k_study_seconds_before"]
    )


def _study_record(methods: dict[str, tuple[float, float]], **settings: object) -> dict[str, object]:
    """A --study record of ``methods`` (method → (after, before) seconds)."""
    return {
        "study_trials": 20,
        "study_trials_timed": 20,
        "study_epochs": 80,
        "study_jobs": 2,
        "ml100k_study_before_commit": "b" * 40,
        "ml100k_study_code_commit": "a" * 40,
        "study_methods": list(methods),
        "ml100k_study_seconds_by_method": {key: after for key, (after, _) in methods.items()},
        "ml100k_study_seconds_before_by_method": {key: before for key, (_, before) in methods.items()},
        "ml100k_study_seconds": sum(after for after, _ in methods.values()),
        "ml100k_study_seconds_before": sum(before for _, before in methods.values()),
        "study_load_avg": {"before": [1.0, 1.0, 1.0], "after": [2.0, 2.0, 2.0]},
        **settings,
    }


def test_combine_studies_sums_disjoint_pairs_and_refuses_mismatches(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Two pairs timed apart combine into one record whose totals and ratio are the per-method
    sums; overlapping methods or differing settings are refused; the CLI writes the record."""
    bench = _load_bench()
    dui = _study_record({"dui": (600.0, 5000.0)})
    fix = _study_record({"fix": (300.0, 2700.0)}, ml100k_study_code_commit="c" * 40)
    combined = bench.combine_studies([dui, fix])
    assert combined["study_methods"] == ["dui", "fix"]
    assert combined["ml100k_study_seconds_by_method"] == {"dui": 600.0, "fix": 300.0}
    assert combined["ml100k_study_seconds"] == 900.0 and combined["ml100k_study_seconds_before"] == 7700.0
    assert combined["ml100k_study_ratio"] == pytest.approx(900.0 / 7700.0)
    assert [pair["ml100k_study_code_commit"] for pair in combined["study_pairs"]] == ["a" * 40, "c" * 40]
    with pytest.raises(ValueError, match="overlap"):
        bench.combine_studies([dui, dui])
    with pytest.raises(ValueError, match="study_epochs"):
        bench.combine_studies([dui, _study_record({"fix": (1.0, 2.0)}, study_epochs=40)])
    with pytest.raises(ValueError, match="ml100k_study_before_commit"):
        bench.combine_studies([dui, _study_record({"fix": (1.0, 2.0)}, ml100k_study_before_commit="d" * 40)])
    paths = []
    for name, record in (("dui.json", dui), ("fix.json", fix)):
        paths.append(tmp_path / name)
        paths[-1].write_text(json.dumps(record))
    out = tmp_path / "study.json"
    assert bench.main(["--combine-studies", *map(str, paths), "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == combined


def test_a_study_part_is_whole_batches_of_the_fixed_list_and_parts_combine(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """--study-part k/n: the k-th of n contiguous parts of each fixed list, in whole batches of
    the jobs (else refused), launched alone; combining every part of a method gives its summed
    seconds, and a missing, repeated or differently cut part is refused."""
    bench = _load_bench()
    values = [str(i) for i in range(20)]
    assert bench.study_part(values, (2, 2), jobs=2) == values[10:]
    assert bench.study_part(values, None, jobs=2) == values
    assert bench.study_part(values, (5, 5), jobs=2) == values[16:]
    for bad in ((1, 3), (3, 2), (0, 2)):
        with pytest.raises(ValueError, match="--study-part"):
            bench.study_part(values, bad, jobs=2)
    launched: list[list[str]] = []
    monkeypatch.setattr(bench.subprocess, "Popen", _fake_sweep(launched))
    result = bench.run_study(tmp_path / "u.data", None, trials=20, epochs=1, methods=("dui",), part=(2, 2))
    lrs = [next(a for a in cmd if a.startswith("lambda_optimizer.lr=")).split("=", 1)[1].split(",") for cmd in launched]
    assert lrs == [bench.study_values(20, 1e-4, 1.0)[10:]] and result["study_part"] == [2, 2]

    first = _study_record({"dui": (300.0, 2500.0)}, study_part=[1, 2])
    second = _study_record({"dui": (310.0, 2600.0)}, study_part=[2, 2])
    fix = _study_record({"fix": (100.0, 900.0)})
    combined = bench.combine_studies([first, fix, second])
    assert combined["ml100k_study_seconds_by_method"] == {"dui": 610.0, "fix": 100.0}
    assert combined["ml100k_study_seconds_before"] == 6000.0
    assert combined["ml100k_study_ratio"] == pytest.approx(710.0 / 6000.0)
    assert [pair.get("study_part") for pair in combined["study_pairs"]] == [[1, 2], None, [2, 2]]
    with pytest.raises(ValueError, match="lack parts"):
        bench.combine_studies([first, fix])
    with pytest.raises(ValueError, match="overlap"):
        bench.combine_studies([first, first, second])
    with pytest.raises(ValueError, match="overlap"):
        bench.combine_studies([first, _study_record({"dui": (1.0, 2.0)})])


def test_startup_imports_compare_modules_outside_lopt() -> None:
    bench = _load_bench()
    modules = ["lopt", "lopt.data", "bench", "hydra_plugins.lopt_sweeper", "__main__", "torch", "torch.nn", "wandb"]
    assert bench.outside_modules(modules) == {"torch", "torch.nn", "wandb"}


@pytest.mark.slow
def test_startup_imports_of_a_checkout_against_itself_differ_in_nothing(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """--startup-imports with this checkout as the baseline: two runs stopped at their first step
    import the same modules outside lopt, and the text says so."""
    bench = _load_bench()
    monkeypatch.setenv("WANDB_MODE", "disabled")
    result = bench.run_startup_imports(REPO_ROOT)
    assert result["startup_modules_only_after"] == [] and result["startup_modules_only_before"] == []
    assert result["startup_modules_outside_lopt"] == result["startup_modules_outside_lopt_before"] > 100
    assert result["startup_modules"] > result["startup_modules_outside_lopt"]  # lopt's own are left out
    assert "wandb" not in bench.outside_modules([]) and result["startup_seconds_one_run"] > 0
    text = bench.format_startup_imports(result)
    assert "only this checkout imports: none" in text and "only the baseline imports: none" in text


@pytest.mark.slow
def test_a_stopped_bench_removes_its_scratch_folder(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """After exit_on_sigterm, a SIGTERM runs the atexit handlers that remove scratch folders."""
    import signal
    import time

    scratch = tmp_path / "scratch"
    code = (
        f"import sys, atexit, shutil, pathlib, time; sys.path.insert(0, {str(BENCH.parent)!r}); import bench; "
        f"p = pathlib.Path({str(scratch)!r}); p.mkdir(); atexit.register(shutil.rmtree, p, True); "
        "bench.exit_on_sigterm(); print('ready', flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    assert scratch.is_dir()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    deadline = time.time() + 5
    while scratch.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert not scratch.exists()


def test_a_record_names_the_commit_its_run_started_from(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A commit made into the checkout while a mode runs does not relabel its record."""
    bench = _load_bench()
    labels = iter(["a" * 40, "b" * 40])
    monkeypatch.setattr(bench, "code_commit", lambda checkout: next(labels))
    monkeypatch.setattr(bench, "run_gather", lambda threads: {"gather_timed": 1})
    out = tmp_path / "gather.json"
    assert bench.main(["--gather", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["gather_code_commit"] == "a" * 40


def test_study_values_are_a_fixed_log_spaced_list() -> None:
    bench = _load_bench()
    values = [float(v) for v in bench.study_values(20, 1e-6, 10.0)]
    assert len(values) == 20 and len(set(values)) == 20
    assert values[0] == pytest.approx(1e-6) and values[-1] == pytest.approx(10.0)
    assert values == sorted(values)
    assert bench.study_values(20, 1e-6, 10.0) == bench.study_values(20, 1e-6, 10.0)


def test_study_subset_is_spread_over_the_same_list() -> None:
    bench = _load_bench()
    values = bench.study_values(20, 1e-6, 10.0)
    four = bench.study_subset(values, 4)
    assert four == [values[0], values[6], values[13], values[19]]
    assert bench.study_subset(values, 20) == values and bench.study_subset(values, 50) == values
    assert bench.study_subset(values, 1) == [values[0]]
    assert len(set(bench.study_subset(values, 7))) == 7


def test_popularity_interactions_are_distinct_pairs_in_range() -> None:
    """The large shape's generator: distinct (user, item) pairs, ids in range, every user present,
    close to the requested count, deterministic."""
    bench = _load_bench()
    frame = bench.popularity_interactions(2000, 5000, 20_000, user_alpha=0.6, item_alpha=0.9)
    assert frame.select(["user", "item"]).is_duplicated().sum() == 0
    assert frame["user"].n_unique() == 2000 and frame["user"].max() == 1999
    assert 0 <= frame["item"].min() and frame["item"].max() < 5000
    assert 0.8 * 20_000 <= frame.height <= 20_000
    assert frame.equals(bench.popularity_interactions(2000, 5000, 20_000, user_alpha=0.6, item_alpha=0.9))


def test_gather_mode_times_both_routes_per_table_size(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """--gather times the forward under autograd and the fused loss at every table size it lists."""
    sys.path.insert(0, str(BENCH.parent))
    import bench

    monkeypatch.setattr(bench, "GATHER_BATCH", 16)
    monkeypatch.setattr(bench, "GATHER_ROWS_PER_GATHER", (1, 4))
    out = bench.run_gather(threads=1, rounds=1, steps=7)
    assert out["gather_rows_per_gather"] == [1, 4] and out["gather_batch"] == 16
    for key in (
        "gather_sparse_seconds",
        "gather_fused_seconds",
        "gather_ratio_fused_over_sparse",
    ):
        assert len(out[key]) == 2 and all(v > 0 for v in out[key]), key
    assert _finite_numbers(out)


def test_lookahead_mode_times_both_routes_per_table_size(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """--lookahead times the Λ-step by the row kernels and over whole tables at every size it lists,
    each route taken as named."""
    sys.path.insert(0, str(BENCH.parent))
    import bench

    from lopt.lookahead import dense

    monkeypatch.setattr(bench, "LOOKAHEAD_BATCH", 16)
    monkeypatch.setattr(bench, "LOOKAHEAD_ROWS_PER_TRIPLE", (0.5, 4.0))
    calls = []
    real = dense.lookahead
    monkeypatch.setattr(dense, "lookahead", lambda *a, **k: calls.append(a[0].user_factors.shape[0]) or real(*a, **k))
    out = bench.run_lookahead(threads=1, rounds=1, steps=7, dim=8, compiled=False)
    assert out["lookahead_rows_per_triple"] == [0.5, 4.0] and out["lookahead_batch"] == 16
    assert sorted(set(calls)) == [8, 64] and len(calls) == 14  # whole tables at both sizes, only on its route
    for key in ("lookahead_rows_seconds", "lookahead_dense_seconds", "lookahead_ratio_dense_over_rows"):
        assert len(out[key]) == 2 and all(v > 0 for v in out[key]), key
    assert _finite_numbers(out)


@pytest.mark.slow
def test_lookahead_mode_on_ml100k_alternates_both_routes_on_its_batches(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """--lookahead --data: ml100k_dui's Λ-step on its real batches, each route taken as named."""
    from tests.helpers.paths import ML100K

    if not ML100K.is_file():
        pytest.skip(f"real-data test: {ML100K} is absent (MovieLens-100K is not redistributed)")
    sys.path.insert(0, str(BENCH.parent))
    import bench

    from lopt.lookahead import dense

    calls = []
    real = dense.lookahead
    monkeypatch.setattr(dense, "lookahead", lambda *a, **k: calls.append(1) or real(*a, **k))
    out = bench.lookahead_ml100k(ML100K, REPO_ROOT / "data" / "bench", compiled=False, rounds=1)
    timed = {route: out[f"lookahead_ml100k_{route}_steps_timed"] for route in bench.LOOKAHEAD_ML100K_ROUTES}
    assert min(timed.values()) > 0 and max(timed.values()) - min(timed.values()) <= 1
    whole = sum(count for route, count in timed.items() if route != "rows")
    # the whole-table routes' timed steps and their warm-up round's, none of the row route's
    assert whole < len(calls) <= 2 * whole + 3
    assert out["lookahead_ml100k_rows_per_triple"] == pytest.approx((943 + 1682) / 2048, rel=0.05)
    for route in bench.LOOKAHEAD_ML100K_ROUTES:
        assert out[f"lookahead_ml100k_{route}_seconds"] > 0
    assert out["lookahead_ml100k_ratio_dense_over_dense_backward"] > 0


@pytest.mark.slow
def test_floor_mode_bounds_the_dui_over_fix_ratios_by_its_timed_parts() -> None:
    """--floor on ml-100k: every part is timed on the experiments' own modules, and the floors are
    the ratios those parts imply (an epoch: its steps and one evaluation)."""
    from tests.helpers.paths import ML100K

    if not ML100K.is_file():
        pytest.skip(f"real-data test: {ML100K} is absent (MovieLens-100K is not redistributed)")
    sys.path.insert(0, str(BENCH.parent))
    import bench

    out = bench.run_floor(ML100K, REPO_ROOT / "data" / "bench", rounds=1)
    names = ("fix_step", "dui_step", "valid_bpr", "lambda_step", "eval")
    parts = {name: out[f"floor_ml100k_{name}_seconds"] for name in names}
    assert min(parts.values()) > 0
    n, fix, extra = out["floor_ml100k_steps_per_epoch"], parts["fix_step"], parts["valid_bpr"] + parts["lambda_step"]
    assert n == 60  # ml-100k's training triples in batches of 1,024
    assert out["floor_ml100k_min_ratio_dui_over_fix_step"] == pytest.approx((fix + extra) / fix)
    epoch = n * fix + parts["eval"]
    assert out["floor_ml100k_min_ratio_dui_over_fix_epoch"] == pytest.approx((epoch + n * extra) / epoch)
    dui_epoch = n * parts["dui_step"] + parts["eval"]
    assert out["floor_ml100k_ratio_dui_over_fix_epoch"] == pytest.approx(dui_epoch / epoch)
    table = bench.format_floor(out)
    assert f"| λFix step, bare | {fix * 1e3:.2f} |" in table
    assert f"| step | {out['floor_ml100k_ratio_dui_over_fix_step']:.2f} | " in table


@pytest.mark.slow
def test_floor_mode_on_a_synthetic_shape_bounds_each_lambda_step_ratio(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """--floor --shape tiny (the ML-10M keys' code path): each bench λOpt key's bare step against
    λFix's, and its floor from the validation BPR (and dense LambdaAdam's step for dui_adam)."""
    sys.path.insert(0, str(BENCH.parent))
    import bench

    out = bench.run_floor_synthetic(tmp_path, threads=1, rounds=1, steps=3, shape="tiny", batch=512)
    fix, bpr = out["floor_tiny_fix_step_seconds"], out["floor_tiny_valid_bpr_seconds"]
    assert fix > 0 and bpr > 0 and out["floor_tiny_lambda_adam_step_seconds"] > 0
    for key in bench.FLOOR_ML10M_KEYS:
        method = key.removeprefix("opt_")
        assert out[f"floor_tiny_ratio_{method}_over_fix"] == pytest.approx(out[f"floor_tiny_{key}_step_seconds"] / fix)
        adam = out["floor_tiny_lambda_adam_step_seconds"] if method == "dui_adam" else 0.0
        assert out[f"floor_tiny_min_ratio_{method}_over_fix"] == pytest.approx((fix + bpr + adam) / fix)


def test_lookahead_routes_switch_the_whole_tables_and_the_backward() -> None:
    sys.path.insert(0, str(BENCH.parent))
    import bench

    from lopt.lookahead import dense, steps

    real = steps.lookahead
    with bench._lookahead_route("rows"):
        assert not dense.applies(None, None, 0, True)  # type: ignore[arg-type]
    with bench._lookahead_route("dense"):
        assert dense.max_rows_per_triple(True) == math.inf and steps.lookahead is real
    with bench._lookahead_route("dense_backward"):
        assert dense.max_rows_per_triple(True) == math.inf and steps.lookahead is not real
    assert dense.max_rows_per_triple(True) == dense.COMPILED_MAX_ROWS_PER_TRIPLE and steps.lookahead is real


def test_format_lookahead_puts_both_records_routes_side_by_side() -> None:
    sys.path.insert(0, str(BENCH.parent))
    import bench

    def record(compiled: bool, scale: float) -> dict:  # type: ignore[type-arg]
        return {
            "lookahead_compiled": compiled,
            "lookahead_rows_per_triple": [0.5, 2.0],
            "lookahead_rows_seconds": [0.004 * scale, 0.006 * scale],
            "lookahead_dense_seconds": [0.002 * scale, 0.009 * scale],
            "lookahead_ml100k_rows_per_triple": 1.2817,
            "lookahead_ml100k_rows_seconds": 0.007 * scale,
            "lookahead_ml100k_dense_seconds": 0.0056 * scale,
        }

    table = bench.format_lookahead(record(True, 1.0), record(False, 2.0)).splitlines()
    assert table[2] == "| 0.5 (uniform ids) | 4.00 ms | 2.00 ms | 0.50 | 8.00 ms | 4.00 ms | 0.50 |"
    assert table[3] == "| 2 (uniform ids) | 6.00 ms | 9.00 ms | 1.50 | 12.00 ms | 18.00 ms | 1.50 |"
    assert table[4] == "| 1.28 (ml100k_dui's batches) | 7.00 ms | 5.60 ms | 0.80 | 14.00 ms | 11.20 ms | 0.80 |"
    assert len(table) == 5  # records without the whole-table variants: no second table
    with pytest.raises(ValueError, match="lookahead_compiled=False expected"):
        bench.format_lookahead(record(True, 1.0), record(True, 1.0))

    def with_backward(compiled: bool, scale: float) -> dict:  # type: ignore[type-arg]
        out = record(compiled, scale)
        out["lookahead_ml100k_dense_backward_seconds"] = 0.007 * scale
        out["lookahead_ml100k_ratio_dense_over_dense_backward"] = 0.8
        return out

    table = bench.format_lookahead(with_backward(True, 1.0), with_backward(False, 2.0)).splitlines()
    assert table[8] == "| the Λ-gradient set as computed | 5.60 ms | 11.20 ms |"
    assert table[9] == "| written by a backward through the loss attached to Λ | 7.00 ms | 14.00 ms |"
    assert table[10] == "| set / backward | 0.80 | 0.80 |"


def test_compare_prints_the_shared_keys_of_two_records_with_their_targets(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    """--compare: one row per TABLE key both records hold, in TABLE's order and units, each column
    headed by its commit; a ratio or a fraction over its target is bold, a met one is not."""
    sys.path.insert(0, str(BENCH.parent))
    import bench

    load = {"before": [1.5, 1.0, 1.0], "after": [1.25, 1.0, 1.0]}
    before = {"code_commit": "aaaaaaa123", "fix_step_seconds": 0.030, "ratio_fix_over_floor": 4.0, "load_avg": load}
    after = {"code_commit": "bbbbbbb456", "fix_step_seconds": 0.020, "ratio_fix_over_floor": 2.0, "only_here": 1.0}
    after["load_avg"] = load
    paths = [tmp_path / "before.json", tmp_path / "after.json"]
    for path, record in zip(paths, (before, after), strict=True):
        path.write_text(json.dumps(record))
    assert bench.main(["--compare", *map(str, paths)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "| key | before (aaaaaaa) | after (bbbbbbb) | target |"
    assert lines[2] == "| `fix_step_seconds` | 30.00 ms | 20.00 ms |  |"
    assert lines[3] == "| `ratio_fix_over_floor` | **4.00** | 2.00 | ≤ 2.50 |"
    assert lines[4] == "| load_avg (1 min, start → end) | 1.50 → 1.25 | 1.50 → 1.25 | |"
    assert len(lines) == 5  # only_here is in one record only
