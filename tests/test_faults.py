"""Fault injection: bad paths, bad config values, signals, torn and half-written checkpoints, a
full disk, resumes that must keep the run's record. CLI cases go through ``run.py`` in a
subprocess; faults inside the process (a signal at a given step, a write that stops half-way)
are injected by a small launcher that patches lopt and then runs ``run.py`` as ``__main__``.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import signal
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from omegaconf import OmegaConf

from lopt.checkpointing import (
    EXIT_SIGINT,
    EXIT_SIGTERM,
    AtomicCheckpointIO,
    checkpoint_problem,
    resume_checkpoint,
)
from lopt.data import download
from lopt.data.cache import cache_path, load_or_build
from lopt.data.sources import MovieLensSource
from lopt.types import PreparedSplit
from lopt.validate import ConfigError, check_config, check_split
from tests.e2e import REPO_ROOT, TINY_OVERRIDES, read_metrics, run_cli
from tests.helpers.hydra import compose_config as _cfg

# Tiny λOpt-DUI run: 15 training batches per epoch, so steps 7 and 20 are mid-epoch.
RUN = [
    *TINY_OVERRIDES,
    "trainer.max_epochs=3",
    "data.batch_size=128",
    "data.valid_batch_size=96",
    "seed=3",
    "logger=csv",
]
U_DATA = "1\t10\t5\t100\n1\t11\t4\t101\n2\t10\t3\t102\n"


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------


def _env(cwd: Path) -> dict[str, str]:
    env = {**os.environ, "WANDB_MODE": "disabled", "LOPT_DATA_DIR": str(cwd / "data"), "PYTHONPATH": str(REPO_ROOT)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.pop("SLURM_RESTART_COUNT", None)
    return env


def _patched_cli(cwd: Path, patch: str, args: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    """``run.py ARGS`` in a subprocess after running ``patch`` (Python) in that process."""
    launcher = cwd / "launch_patched.py"
    launcher.write_text(
        "import os, runpy, signal, sys\n"
        f"{patch}\n"
        f"sys.argv = [{str(REPO_ROOT / 'run.py')!r}, *sys.argv[1:]]\n"
        "runpy.run_path(sys.argv[0], run_name='__main__')\n"
    )
    return subprocess.run(
        [sys.executable, str(launcher), *args],
        cwd=cwd,
        env=_env(cwd),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _signal_at_step(signame: str, step: int) -> str:
    """Launcher patch: send ``signame`` to the process itself after training batch ``step``."""
    return (
        "import lightning.pytorch as L\n"
        "import lopt.train as T\n"
        "class _At(L.Callback):\n"
        "    def on_train_batch_end(self, trainer, *a):\n"
        f"        if trainer.global_step == {step}:\n"
        f"            os.kill(os.getpid(), signal.{signame})\n"
        "_build = T.build_tracking_callbacks\n"
        "T.build_tracking_callbacks = lambda *a: [*_build(*a), _At()]\n"
    )


def _ckpt_step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])


def _ckpt_seconds(path: Path) -> float:
    state = torch.load(path, map_location="cpu", weights_only=True)["callbacks"]
    return next(float(v["train_seconds"]) for k, v in state.items() if k.startswith("TrainClock"))


def _csv_rows(path: Path) -> list[frozenset]:
    """The rows of a Lightning metrics.csv as sets of their non-empty (column, value) pairs."""
    with open(path, newline="") as handle:
        return [frozenset((k, v) for k, v in row.items() if v) for row in csv.DictReader(handle)]


def _fails_before_training(proc: subprocess.CompletedProcess, run_dir: Path, *needles: str) -> None:
    assert proc.returncode not in (0, None), proc.stdout[-2000:]
    for needle in needles:
        assert needle in proc.stderr, proc.stderr[-3000:]
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "metrics.json").exists()


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The uninterrupted run every interrupted-and-resumed run must reproduce."""
    root = tmp_path_factory.mktemp("straight")
    run_cli([*RUN, f"hydra.run.dir={root / 'run'}"], cwd=root)
    return read_metrics(root / "run")


def _assert_same_results(run_dir: Path, straight: dict) -> dict:
    metrics = read_metrics(run_dir)
    assert metrics["test"] == straight["test"] and metrics["valid"] == straight["valid"]
    assert metrics["best_epoch"] == straight["best_epoch"]
    return metrics


# ------------------------------------------------------------------------------------------
# 1. data paths
# ------------------------------------------------------------------------------------------


@pytest.fixture
def served_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """GroupLens replaced by a local ml-100k zip; returns the list of folders fetched into."""
    zip_path = tmp_path / "served" / "ml-100k.zip"
    zip_path.parent.mkdir()
    with zipfile.ZipFile(zip_path, "w") as zf:
        zf.writestr("ml-100k/u.data", U_DATA)
    calls: list[Path] = []

    def fake_fetch(spec, folder: Path) -> str:
        calls.append(folder)
        return str(zip_path)

    monkeypatch.setattr(download, "_fetch", fake_fetch)
    return calls


def _ml100k(tmp_path: Path, path: Path | None, **kw) -> MovieLensSource:
    return MovieLensSource(
        path,
        "tab",
        archive="ml-100k",
        default_path=tmp_path / "data" / "ml-100k" / "u.data",
        lock_dir=tmp_path / "cache",
        **kw,
    )


def test_missing_user_path_is_named_and_never_downloaded(tmp_path: Path, served_archive: list) -> None:
    typo = tmp_path / "mydata" / "u.dat"
    with pytest.raises(FileNotFoundError, match=str(typo)):
        _ml100k(tmp_path, typo).fingerprint()
    assert served_archive == [] and not typo.parent.exists()


def test_directory_as_path_is_named_before_any_download(tmp_path: Path, served_archive: list) -> None:
    with pytest.raises(IsADirectoryError, match=rf"dataset\.source\.path={tmp_path}.* is a directory"):
        _ml100k(tmp_path, tmp_path).load()
    assert served_archive == []


def test_empty_file_is_named(tmp_path: Path, served_archive: list) -> None:
    empty = tmp_path / "u.data"
    empty.touch()
    with pytest.raises(ValueError, match=rf"{empty} \(dataset\.source\.path\) is empty"):
        _ml100k(tmp_path, empty).load()
    assert served_archive == []


def test_unreadable_file_is_named(tmp_path: Path, served_archive: list, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "u.data"
    data.write_text(U_DATA)
    monkeypatch.setattr(download.os, "access", lambda path, mode: False)  # root reads everything
    with pytest.raises(PermissionError, match=f"{data} .*not readable"):
        _ml100k(tmp_path, data).load()


def test_default_path_is_downloaded_with_the_lock_in_the_cache_dir(tmp_path: Path, served_archive: list) -> None:
    source = _ml100k(tmp_path, None)
    assert source.load().height == 3
    assert served_archive == [tmp_path / "data" / "ml-100k"]
    assert [p.name for p in (tmp_path / "data" / "ml-100k").iterdir()] == ["u.data"]
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["download-ml-100k.lock"]


def test_download_false_names_the_default_path(tmp_path: Path, served_archive: list) -> None:
    with pytest.raises(FileNotFoundError, match=r"u\.data.*dataset\.download=false"):
        _ml100k(tmp_path, None, download=False).load()
    assert served_archive == []


@pytest.mark.slow
def test_cli_missing_data_path_fails_before_training(tmp_path: Path) -> None:
    typo = tmp_path / "no" / "u.data"
    proc = run_cli(
        ["dataset=ml100k", f"dataset.source.path={typo}", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path,
        check=False,
        timeout=120,
    )
    _fails_before_training(proc, tmp_path / "run", f"data file not found: {typo}")
    assert not typo.parent.exists() and not (tmp_path / "data" / "ml-100k").exists()


def test_cache_files_are_readable_under_the_umask(tmp_path: Path) -> None:
    from tests.test_cache import KEY, _split

    previous = os.umask(0o022)
    try:
        load_or_build(KEY, _split, tmp_path)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(cache_path(KEY, tmp_path).stat().st_mode) == 0o644


def test_read_only_cache_dir_says_what_to_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lopt.data import cache
    from tests.test_cache import KEY, _split

    def read_only(self, *a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(cache.filelock.FileLock, "acquire", read_only)
    with pytest.raises(PermissionError, match=r"paths\.cache_dir=.*data\.cache=false"):
        load_or_build(KEY, _split, tmp_path)


# ------------------------------------------------------------------------------------------
# 2. config validation (before any data is read) and split checks (before the first step)
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.batch_size=abc", "data.batch_size must be an integer ≥ 1, got 'abc' (str)"),
        ("data.valid_batch_size=0", "data.valid_batch_size must be an integer ≥ 1, got 0"),
        ("data.eval_batch_users=-5", "data.eval_batch_users must be an integer ≥ 1"),
        ("trainer.max_epochs=0", "trainer.max_epochs must be an integer ≥ 1"),
        ("eval.monitor=hr@20", "eval.monitor=hr@20 is not a metric the run reports"),
        ("eval.ks=[]", "eval.ks must be a non-empty list"),
        ("eval.ks=[50,0]", "eval.ks must be a non-empty list of distinct integers ≥ 1"),
        ("eval.every_n_epochs=0", "eval.every_n_epochs must be an integer ≥ 1"),
        ("seed=-1", "seed must be an integer ≥ 0"),
        ("resume=yes", "resume must be true or false, got 'yes' (str)"),
        ("overwrite=1", "overwrite must be true or false"),
        ("data.cache=maybe", "data.cache must be true or false"),
        ("checkpoint.every_n_train_steps=-1", "checkpoint.every_n_train_steps must be an integer ≥ 0"),
        ("optimizer.lr=0", "optimizer.lr must be a number > 0"),
        ("model.dim=1.5", "model.dim must be an integer ≥ 1"),
    ],
)
def test_config_check_names_key_and_expected_type(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        check_config(_cfg([override]))


def test_monitor_is_checked_against_the_protocols_metrics() -> None:
    check_config(_cfg(["protocol=standard", "eval.monitor=recall@20"]))
    with pytest.raises(ConfigError, match=r"eval\.monitor=recall@20 is not a metric .* protocol=lambdaopt"):
        check_config(_cfg(["eval.monitor=recall@20"]))


def test_every_shipped_config_passes_the_check() -> None:
    check_config(_cfg([]))
    for experiment in sorted(p.stem for p in (REPO_ROOT / "conf" / "experiment").glob("*.yaml")):
        check_config(_cfg([f"+experiment={experiment}"]))


def _split(n_train: int = 4, n_valid: int = 2, n_test: int = 2, n_items: int = 5) -> PreparedSplit:
    def part(n: int) -> np.ndarray:
        return np.zeros(n, dtype=np.int32)

    return PreparedSplit(
        part(n_train),
        part(n_train),
        part(n_valid),
        part(n_valid),
        part(n_test),
        part(n_test),
        n_users=1,
        n_items=n_items,
        user_ids=np.arange(1),
        item_ids=np.arange(n_items),
    )


@pytest.mark.parametrize("part", ["train", "valid", "test"])
def test_empty_split_part_is_refused(part: str) -> None:
    sizes = {"n_train": 4, "n_valid": 2, "n_test": 2, f"n_{part}": 0}
    with pytest.raises(ConfigError, match=f"the {part} split of dataset synthetic is empty"):
        check_split(_cfg(["model=fix"]), _split(**sizes))


def test_cut_off_above_the_number_of_items_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"eval\.ks=\[50, 100\] has K=\[50, 100\] above the 5 items"):
        check_split(_cfg([]), _split())
    check_split(_cfg(["eval.ks=[5]", "eval.monitor=auc"]), _split())


@pytest.mark.slow
def test_cli_bad_type_fails_before_any_data(tmp_path: Path) -> None:
    proc = run_cli(
        [*TINY_OVERRIDES, "data.batch_size=abc", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path,
        check=False,
        timeout=120,
    )
    _fails_before_training(proc, tmp_path / "run", "data.batch_size must be an integer ≥ 1, got 'abc' (str)")
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model=fix", "dataset.preprocess.test_ratio=0"], "the test split of dataset synthetic is empty"),
        (["model=fix", "dataset.preprocess.valid_ratio=0"], "the valid split of dataset synthetic is empty"),
        (["eval.ks=[5000]", "eval.monitor=hr@5000"], "has K=[5000] above the 120 items"),
    ],
    ids=["empty-test-fix", "empty-valid-fix", "k-above-items"],
)
@pytest.mark.slow
def test_cli_bad_split_fails_before_the_first_step(tmp_path: Path, overrides: list[str], message: str) -> None:
    proc = run_cli(
        [*TINY_OVERRIDES, *overrides, f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, check=False, timeout=180
    )
    _fails_before_training(proc, tmp_path / "run", message)


# ------------------------------------------------------------------------------------------
# 3. checkpoints: atomic writes, a full disk, torn files, weights-only loads
# ------------------------------------------------------------------------------------------


def _state(value: float) -> dict:
    return {"state_dict": {"w": torch.full((64, 64), value)}, "global_step": int(value)}


def test_checkpoint_write_hitting_a_full_disk_keeps_the_previous_file(tmp_path: Path, monkeypatch) -> None:
    io, target = AtomicCheckpointIO(), tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint(_state(1.0), target)
    real_save = torch.save

    def half_then_enospc(obj, path):
        real_save(obj, path)
        with open(path, "r+b") as handle:
            handle.truncate(os.path.getsize(path) // 2)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", half_then_enospc)
    with pytest.raises(OSError, match=f"no space left on the device while writing {target}"):
        io.save_checkpoint(_state(2.0), target)
    assert [p.name for p in target.parent.iterdir()] == ["last.ckpt"]  # no temp file left
    assert io.load_checkpoint(target)["global_step"] == 1


def test_cache_write_hitting_a_full_disk_names_the_file(tmp_path: Path, monkeypatch) -> None:
    from lopt.data import cache
    from tests.test_cache import KEY
    from tests.test_cache import _split as cache_split

    def enospc(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache.np, "savez", enospc)
    with pytest.raises(OSError, match=f"no space left .*{cache_path(KEY, tmp_path).name}"):
        load_or_build(KEY, cache_split, tmp_path)
    assert not list(tmp_path.glob("*.npz")) and not list(tmp_path.glob(".*.tmp"))


def test_checkpoints_are_written_beside_their_target(tmp_path: Path, monkeypatch) -> None:
    seen: list[Path] = []
    real_save = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, path: (seen.append(Path(path)), real_save(obj, path)))
    AtomicCheckpointIO().save_checkpoint(_state(1.0), tmp_path / "ck" / "best.ckpt")
    assert len(seen) == 1 and seen[0].parent == tmp_path / "ck" and seen[0].name.startswith(".best.ckpt.")


def _torn(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_torn_last_checkpoint_falls_back_to_the_newest_intact_one(tmp_path: Path, caplog) -> None:
    io = AtomicCheckpointIO()
    for name, value in (("best.ckpt", 1.0), ("older.ckpt", 0.0), ("last.ckpt", 2.0)):
        io.save_checkpoint(_state(value), tmp_path / name)
    os.utime(tmp_path / "older.ckpt", ns=(1, 1))
    (tmp_path / ".last.ckpt.abc.tmp").write_bytes(b"half")  # a write killed half-way
    _torn(tmp_path / "last.ckpt")
    assert checkpoint_problem(tmp_path / "last.ckpt") is not None
    with caplog.at_level("WARNING", logger="lopt"):
        assert resume_checkpoint(tmp_path) == tmp_path / "best.ckpt"
    assert f"{tmp_path / 'last.ckpt'} is corrupt" in caplog.text and "best.ckpt" in caplog.text
    assert (tmp_path / ".last.ckpt.abc.tmp").exists()  # read-only: a resume removes it once it commits


def test_torn_last_checkpoint_without_fallback_says_how_to_start_over(tmp_path: Path) -> None:
    AtomicCheckpointIO().save_checkpoint(_state(2.0), tmp_path / "last.ckpt")
    _torn(tmp_path / "last.ckpt")
    with pytest.raises(RuntimeError, match=rf"{tmp_path / 'last.ckpt'} is corrupt .*overwrite=true"):
        resume_checkpoint(tmp_path)


def test_checkpoint_loads_are_weights_only(tmp_path: Path) -> None:
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": Path("/")}, path)  # an arbitrary pickled object
    with pytest.raises(Exception, match="[Ww]eights only load failed"):
        AtomicCheckpointIO().load_checkpoint(path, weights_only=False)


# ------------------------------------------------------------------------------------------
# 4. kills and signals through the real CLI, then resume
# ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_mid_epoch_saves_exits_143_and_resumes_identically(tmp_path: Path, straight: dict) -> None:
    run_dir = tmp_path / "run"
    proc = _patched_cli(tmp_path, _signal_at_step("SIGTERM", 20), [*RUN, f"hydra.run.dir={run_dir}"])
    assert proc.returncode == EXIT_SIGTERM == 143, proc.stderr[-3000:]
    assert f"python run.py resume=true hydra.run.dir={run_dir}" in proc.stderr
    last = run_dir / "checkpoints" / "last.ckpt"
    assert _ckpt_step(last) == 20 and not (run_dir / "metrics.json").exists()  # mid-epoch 1
    before = _csv_rows(run_dir / "csv" / "metrics.csv")
    seconds_before = _ckpt_seconds(last)

    run_cli(["resume=true", f"hydra.run.dir={run_dir}"], cwd=tmp_path)  # no original override repeated
    metrics = _assert_same_results(run_dir, straight)
    after = _csv_rows(run_dir / "csv" / "metrics.csv")
    assert before and len(after) > len(before) and set(before) <= set(after)  # appended, not truncated
    assert metrics["train_seconds"] > seconds_before > 0  # both segments counted


@pytest.mark.slow
def test_sigint_saves_prints_the_resume_command_and_exits_130(tmp_path: Path, straight: dict) -> None:
    run_dir = tmp_path / "run"
    proc = _patched_cli(tmp_path, _signal_at_step("SIGINT", 7), [*RUN, f"hydra.run.dir={run_dir}"])
    assert proc.returncode == EXIT_SIGINT == 130, proc.stderr[-3000:]
    assert f"Continue with:\n  python run.py resume=true hydra.run.dir={run_dir}" in proc.stderr
    assert _ckpt_step(run_dir / "checkpoints" / "last.ckpt") == 7
    run_cli(["resume=true", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    _assert_same_results(run_dir, straight)


@pytest.mark.slow
def test_sigterm_during_preprocessing_exits_143_and_a_rerun_works(tmp_path: Path, straight: dict) -> None:
    run_dir = tmp_path / "run"
    patch = (
        "import lopt.data.datamodule as D\n"
        "_prepare = D.prepare_split\n"
        "def _killed(*a, **k):\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    return _prepare(*a, **k)\n"
        "D.prepare_split = _killed\n"
    )
    proc = _patched_cli(tmp_path, patch, [*RUN, f"hydra.run.dir={run_dir}"])
    assert proc.returncode == EXIT_SIGTERM, proc.stderr[-3000:]
    assert "SIGTERM during data preparation: nothing to resume" in proc.stderr
    assert not (run_dir / "checkpoints").exists() and not list((tmp_path / "data").rglob("*.npz"))
    run_cli([*RUN, f"hydra.run.dir={run_dir}"], cwd=tmp_path)  # the same command again
    _assert_same_results(run_dir, straight)


@pytest.mark.slow
def test_kill_during_a_checkpoint_write_keeps_the_previous_one(tmp_path: Path, straight: dict) -> None:
    """SIGKILL half-way through the third checkpoint write (epoch 1's last.ckpt): the previous
    last.ckpt stays intact and the run resumes from it."""
    run_dir = tmp_path / "run"
    patch = (
        "import torch\n"
        "_save, _calls = torch.save, []\n"
        "def _half(obj, path):\n"
        "    _calls.append(path)\n"
        "    _save(obj, path)\n"
        "    if len(_calls) == 4:\n"
        "        with open(path, 'r+b') as f:\n"
        "            f.truncate(os.path.getsize(path) // 2)\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "torch.save = _half\n"
    )
    proc = _patched_cli(tmp_path, patch, [*RUN, f"hydra.run.dir={run_dir}"])
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    checkpoints = run_dir / "checkpoints"
    assert list(checkpoints.glob(".*.tmp")), "the half-written temp file should be left by SIGKILL"
    assert checkpoint_problem(checkpoints / "last.ckpt") is None and _ckpt_step(checkpoints / "last.ckpt") == 15
    run_cli(["resume=true", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    _assert_same_results(run_dir, straight)
    assert not list(checkpoints.glob(".*.tmp"))


@pytest.mark.slow
def test_resume_from_a_torn_last_checkpoint_falls_back(tmp_path: Path, straight: dict) -> None:
    run_dir = tmp_path / "run"
    proc = _patched_cli(tmp_path, _signal_at_step("SIGTERM", 20), [*RUN, f"hydra.run.dir={run_dir}"])
    assert proc.returncode == EXIT_SIGTERM
    _torn(run_dir / "checkpoints" / "last.ckpt")
    resumed = run_cli(["resume=true", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    output = resumed.stdout + resumed.stderr
    assert f"{run_dir / 'checkpoints' / 'last.ckpt'} is corrupt" in output
    assert "resuming from " + str(run_dir / "checkpoints" / "best.ckpt") in output
    _assert_same_results(run_dir, straight)


# ------------------------------------------------------------------------------------------
# 5. the run's record: resume config, fresh runs into used directories, unfinished runs
# ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_resume_refuses_config_changes_and_records_a_longer_schedule(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_cli([*TINY_OVERRIDES, "trainer.max_epochs=1", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    first = read_metrics(run_dir)
    config_before = (run_dir / ".hydra" / "config.yaml").read_text()

    refused = run_cli(["resume=true", "model.dim=16", "seed=4", f"hydra.run.dir={run_dir}"], cwd=tmp_path, check=False)
    assert refused.returncode != 0
    assert "model.dim: 8 (recorded) → 16" in refused.stderr and "seed: 0 (recorded) → 4" in refused.stderr
    assert (run_dir / ".hydra" / "config.yaml").read_text() == config_before  # the record is intact

    run_cli(["resume=true", "trainer.max_epochs=2", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    second = read_metrics(run_dir)
    assert second["test"] != first["test"]
    config = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    assert config.trainer.max_epochs == 2 and config.model.dim == 8
    record = yaml.safe_load((run_dir / ".hydra" / "run_record.yaml").read_text())
    assert record["resumes"][0]["changed"] == {"trainer.max_epochs": [1, 2]}
    assert "trainer.max_epochs=2" in yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())


@pytest.mark.slow
def test_fresh_run_into_a_used_directory_is_refused_unless_overwrite(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    stale = run_dir / "lambda_snapshots" / "epoch_999.npz"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old run")
    (run_dir / ".hydra").mkdir()
    (run_dir / ".hydra" / "run_record.yaml").write_text("config: {seed: 0}\noverrides: []\nresumes: []\n")
    args = [*TINY_OVERRIDES, "trainer.max_epochs=1", f"hydra.run.dir={run_dir}"]
    refused = run_cli(args, cwd=tmp_path, check=False, timeout=120)
    assert refused.returncode != 0 and "already holds a run (lambda_snapshots/)" in refused.stderr
    assert "overwrite=true" in refused.stderr and stale.exists()
    run_cli([*args, "overwrite=true"], cwd=tmp_path)
    assert not stale.exists() and (run_dir / "metrics.json").is_file()


def test_reproduce_table_ignores_and_lists_unfinished_runs(tmp_path: Path, capsys) -> None:
    from lopt.analysis.results import find_runs, find_unfinished_runs
    from tests.test_reproduce_table import load_script

    done, killed, empty = tmp_path / "done", tmp_path / "killed", tmp_path / "empty_test"
    for run_dir in (done, killed, empty):
        (run_dir / ".hydra").mkdir(parents=True)
        (run_dir / ".hydra" / "config.yaml").write_text("seed: 0\n")
    metrics = {"test": {"auc": 0.9}, "valid": {"auc": 0.9}, "dataset": "ml100k", "method": "MF-λFix", "seed": 0}
    (done / "metrics.json").write_text(json.dumps(metrics))
    (empty / "metrics.json").write_text(json.dumps({**metrics, "test": {}}))
    (killed / "checkpoints").mkdir()
    assert [r.path for r in find_runs(tmp_path)] == [done]
    assert find_unfinished_runs(tmp_path) == [empty, killed]
    assert load_script("reproduce_table").main([str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert "ignored 2 unfinished run(s)" in err and str(killed) in err and str(empty) in err


def test_a_run_recorded_by_an_older_version_is_refused_by_name(tmp_path: Path) -> None:
    """recommend (and resume) on a run whose config predates the model declarations: a clear
    error naming the file, not a missing-key traceback from deep inside the build."""
    from omegaconf import OmegaConf

    from lopt.recommend import load_run_config
    from lopt.validate import ConfigError, check_recorded_config
    from tests.helpers.hydra import compose_config

    cfg = compose_config(["model=lambda_opt", "granularity=dui"])
    check_recorded_config(cfg, "current")  # a config of this version passes
    old = OmegaConf.to_container(cfg, resolve=False)
    for key in ("label", "needs_valid_triples", "reported_granularity"):
        old["model"].pop(key)
    run = tmp_path / "old_run"
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(old), run / ".hydra" / "config.yaml")
    with pytest.raises(ConfigError, match=r"config\.yaml was recorded by an older lopt.*model\.needs_valid_triples"):
        load_run_config(run)
