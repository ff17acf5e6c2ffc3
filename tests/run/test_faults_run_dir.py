"""Fault injection, part 2 (issue #22): nothing lost, nothing executed.

Resume is read-only until it is sure; overwrite clears only lopt's own run; one process per run
directory; signals in every phase exit honestly; run directories are data, not code; no silent
wrong results (id encoding, content fingerprint, unfinished runs in recommend); clear failures.
CLI cases go through ``run.py`` (or ``python -m lopt.recommend``) in a subprocess.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import yaml
from omegaconf import OmegaConf

from lopt.run.checkpointing import EXIT_SIGINT, EXIT_SIGTERM
from lopt.run.validate import ALLOWED_TARGET_PREFIXES, ConfigError, allowed_target, check_config, recorded_targets
from tests.helpers.cli import REPO_ROOT, TINY_OVERRIDES, read_metrics, run_cli
from tests.helpers.faults import RUN, ckpt_step, cli_env, csv_rows, patched_cli, signal_at_step
from tests.helpers.hydra import compose_config

RESUME_HINT = "python run.py resume=true hydra.run.dir="
#: What a finished run holds that no later command may change.
KEPT = (
    "metrics.json",
    "per_user_test.parquet",
    "lambda.npz",
    "lambda_trajectories.parquet",
    "csv/metrics.csv",
    "checkpoints/best.ckpt",
    "checkpoints/last.ckpt",
    ".hydra/run_record.yaml",
    ".hydra/config.yaml",
    ".hydra/overrides.yaml",
)


def _digests(run_dir: Path, names: tuple[str, ...] = KEPT) -> dict[str, str]:
    return {n: hashlib.sha256((run_dir / n).read_bytes()).hexdigest() for n in names if (run_dir / n).is_file()}


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run (the reference every interrupted-and-resumed run must reproduce)."""
    root = tmp_path_factory.mktemp("straight")
    run_cli([*RUN, f"hydra.run.dir={root / 'run'}"], cwd=root)
    return root / "run"


@pytest.fixture
def finished(straight: Path, tmp_path: Path) -> Path:
    """A copy of the finished straight run (its data cache is rebuilt from the same config)."""
    run_dir = tmp_path / "run"
    shutil.copytree(straight, run_dir, symlinks=True)
    return run_dir


def _same_results(run_dir: Path, straight: Path) -> None:
    got, want = read_metrics(run_dir), read_metrics(straight)
    assert got["test"] == want["test"] and got["valid"] == want["valid"]
    assert got["best_epoch"] == want["best_epoch"]
    assert (run_dir / "per_user_test.parquet").read_bytes() == (straight / "per_user_test.parquet").read_bytes()
    trajectories = pl.read_parquet(run_dir / "lambda_trajectories.parquet")
    assert trajectories.equals(pl.read_parquet(straight / "lambda_trajectories.parquet"))
    assert not (run_dir / ".metrics.json.before-resume").exists()


def _untimed(rows: list[frozenset]) -> list[frozenset]:
    """csv rows without their wall-clock columns (the only ones two equal runs may differ in)."""
    return [frozenset((k, v) for k, v in row if "seconds" not in k) for row in rows]


def _resume(run_dir: Path, *extra: str, check: bool = False) -> subprocess.CompletedProcess:
    return run_cli(["resume=true", *extra, f"hydra.run.dir={run_dir}"], cwd=run_dir.parent, check=check)


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["trainer.max_epochs=1"]])
def test_resuming_a_finished_run_changes_nothing_and_exits_0(finished: Path, extra: list[str]) -> None:
    before = _digests(finished)
    proc = _resume(finished, *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "is finished (3 epochs trained" in proc.stdout and "nothing to resume, nothing was changed" in proc.stdout
    assert _digests(finished) == before


@pytest.mark.slow
def test_shorter_schedule_on_an_unfinished_run_is_refused_before_writing(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = patched_cli(tmp_path, signal_at_step("SIGTERM", 35), [*RUN, f"hydra.run.dir={run_dir}"])
    assert proc.returncode == EXIT_SIGTERM, proc.stderr[-3000:]
    before = _digests(run_dir)
    refused = _resume(run_dir, "trainer.max_epochs=1")
    assert refused.returncode != 0
    assert "trainer.max_epochs=1 is below the 2 epochs" in refused.stderr and "nothing was changed" in refused.stderr
    assert _digests(run_dir) == before
    assert yaml.safe_load((run_dir / ".hydra" / "run_record.yaml").read_text())["resumes"] == []


@pytest.mark.slow
def test_resume_keeps_rows_and_trajectories_and_matches_the_straight_run(tmp_path: Path, straight: Path) -> None:
    run_dir = tmp_path / "run"
    proc = patched_cli(tmp_path, signal_at_step("SIGTERM", 20), [*RUN, f"hydra.run.dir={run_dir}"])
    assert proc.returncode == EXIT_SIGTERM, proc.stderr[-3000:]
    csv_path = run_dir / "csv" / "metrics.csv"
    before = csv_rows(csv_path)
    with open(csv_path, "a") as handle:  # a row torn by a crash or a full disk
        handle.write("0.5,1,torn")
    _resume(run_dir, check=True)
    _same_results(run_dir, straight)
    after = csv_rows(csv_path)
    assert set(before) <= set(after)
    assert _untimed(after) == _untimed(csv_rows(straight / "csv" / "metrics.csv"))
    assert "torn" not in csv_path.read_text()


@pytest.mark.slow
def test_a_failed_resume_puts_metrics_json_back(finished: Path) -> None:
    """A resume that fails after it committed (here: writing the results raises, after a fourth
    epoch was trained) restores the finished run's metrics.json."""
    metrics = (finished / "metrics.json").read_bytes()
    patch = (
        "import lopt.pipeline as T\n"
        "def _boom(*a, **k):\n"
        "    raise RuntimeError('injected failure')\n"
        "T.write_results = _boom\n"
    )
    proc = patched_cli(finished.parent, patch, ["resume=true", "trainer.max_epochs=4", f"hydra.run.dir={finished}"])
    assert proc.returncode != 0 and "injected failure" in proc.stderr
    assert (finished / "metrics.json").read_bytes() == metrics
    assert not (finished / ".metrics.json.before-resume").exists()


def _foreign_folder(folder: Path) -> dict[str, bytes]:
    (folder / "chapters").mkdir(parents=True)
    (folder / "thesis.tex").write_text("\\documentclass{book}")
    (folder / "chapters" / "one.tex").write_text("\\chapter{One}")
    (folder / "link").symlink_to(folder / "thesis.tex")
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
@pytest.mark.parametrize("overwrite", [False, True])
def test_a_folder_that_is_no_run_is_never_cleared(tmp_path: Path, overwrite: bool) -> None:
    folder = tmp_path / "mine"
    kept = _foreign_folder(folder)
    args = [*TINY_OVERRIDES, f"hydra.run.dir={folder}"] + (["overwrite=true"] if overwrite else [])
    proc = run_cli(args, cwd=tmp_path, check=False, timeout=120)
    assert proc.returncode != 0
    assert "holds no lopt run" in proc.stderr and "thesis.tex" in proc.stderr and "chapters/" in proc.stderr
    message = next(line for line in proc.stderr.splitlines() if "holds no lopt run" in line)
    assert "overwrite" not in message and "resume=true" not in message
    assert {name: (folder / name).read_bytes() for name in kept} == kept
    assert (folder / "link").is_symlink()


@pytest.mark.slow
def test_overwrite_deletes_only_what_lopt_wrote(finished: Path) -> None:
    (finished / "notes.txt").write_text("my notes")
    old_best = (finished / "checkpoints" / "best.ckpt").read_bytes()
    stale = finished / "lambda_snapshots" / "epoch_999.npz"
    stale.write_bytes(b"old run")
    args = [*RUN, "seed=4", f"hydra.run.dir={finished}"]
    refused = run_cli(args, cwd=finished.parent, check=False, timeout=120)
    assert refused.returncode != 0 and "already holds a run" in refused.stderr and "overwrite=true" in refused.stderr
    run_cli([*args, "overwrite=true"], cwd=finished.parent)
    assert (finished / "notes.txt").read_text() == "my notes" and not stale.exists()
    assert read_metrics(finished)["seed"] == 4 and (finished / "checkpoints" / "best.ckpt").read_bytes() != old_best


@pytest.mark.slow
def test_a_second_run_into_a_busy_directory_fails_at_once_naming_the_pid(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    ready = tmp_path / "ready"
    patch = (
        "import time, pathlib\n"
        "import lopt.pipeline as T\n"
        "_prepare = T.prepare_data\n"
        "def _slow(*a, **k):\n"
        f"    pathlib.Path({str(ready)!r}).write_text('x')\n"
        "    time.sleep(60)\n"
        "    return _prepare(*a, **k)\n"
        "T.prepare_data = _slow\n"
    )
    launcher = tmp_path / "launch_slow.py"
    launcher.write_text(
        "import os, runpy, signal, sys\n"
        f"{patch}\n"
        f"sys.argv = [{str(REPO_ROOT / 'run.py')!r}, *sys.argv[1:]]\n"
        "runpy.run_path(sys.argv[0], run_name='__main__')\n"
    )
    first = subprocess.Popen(
        [sys.executable, str(launcher), *RUN, f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
        env=cli_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()[1][-3000:]
            time.sleep(0.2)
        started = time.monotonic()
        for args in ([*RUN, f"hydra.run.dir={run_dir}"], ["resume=true", f"hydra.run.dir={run_dir}"]):
            second = run_cli(args, cwd=tmp_path, check=False, timeout=120)
            assert second.returncode != 0
            assert f"is in use by pid {first.pid} on" in second.stderr, second.stderr[-3000:]
        assert time.monotonic() - started < 60  # at once, not after the first run's sleep
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=120)
        assert first.returncode == EXIT_SIGTERM and "during data preparation: nothing to resume" in err
    finally:
        if first.poll() is None:
            first.kill()


def _signal_in(target: str, signame: str) -> str:
    """Launcher patch: send ``signame`` to the process itself when ``target`` (module:attr of
    lopt.train or a Lightning Trainer method) is first called."""
    module, attr = target.split(":")
    return (
        f"import {module} as _M\n"
        f"_orig = _M.{attr}\n"
        "_done = []\n"
        "def _hit(*a, **k):\n"
        "    if not _done:\n"
        "        _done.append(1)\n"
        f"        os.kill(os.getpid(), signal.{signame})\n"
        "    return _orig(*a, **k)\n"
        f"_M.{attr} = _hit\n"
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("target", "signame", "phase"),
    [
        ("lightning.pytorch:Trainer.test", "SIGTERM", "during the test"),
        ("lightning.pytorch:Trainer.test", "SIGINT", "during the test"),
        ("lopt.pipeline:write_lambda", "SIGTERM", "during writing the results"),
    ],
)
def test_signals_after_training_exit_honestly_and_resume_finishes(
    tmp_path: Path, straight: Path, target: str, signame: str, phase: str
) -> None:
    run_dir = tmp_path / "run"
    if target.startswith("lightning"):
        patch = (
            "import lightning.pytorch as _L\n"
            "_orig = _L.Trainer.test\n"
            "def _hit(self, *a, **k):\n"
            f"    os.kill(os.getpid(), signal.{signame})\n"
            "    return _orig(self, *a, **k)\n"
            "_L.Trainer.test = _hit\n"
        )
    else:
        patch = _signal_in(target, signame)
    proc = patched_cli(tmp_path, patch, [*RUN, f"hydra.run.dir={run_dir}"])
    code = EXIT_SIGTERM if signame == "SIGTERM" else EXIT_SIGINT
    assert proc.returncode == code, proc.stderr[-3000:]
    assert (
        f"{signame} {phase}: training is complete and saved in {run_dir / 'checkpoints' / 'last.ckpt'}" in proc.stderr
    )
    assert f"Continue with:\n  {RESUME_HINT}{run_dir}" in proc.stderr
    assert not (run_dir / "metrics.json").exists()
    _resume(run_dir, check=True)
    _same_results(run_dir, straight)


@pytest.mark.slow
def test_sigint_during_data_preparation_says_nothing_to_resume(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = patched_cli(tmp_path, _signal_in("lopt.pipeline:prepare_data", "SIGINT"), [*RUN, f"hydra.run.dir={run_dir}"])
    assert proc.returncode == EXIT_SIGINT, proc.stderr[-3000:]
    assert "SIGINT during data preparation: nothing to resume" in proc.stderr


def _pickle_payload(marker: Path) -> dict:
    class Payload:
        def __reduce__(self):  # noqa: ANN204
            return (exec, (f"open({str(marker)!r}, 'w').write('ran')",))

    return {"payload": Payload()}


def _plant_pickle(path: Path, marker: Path) -> None:
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    checkpoint.update(_pickle_payload(marker))
    torch.save(checkpoint, path)


def _plant_target(path: Path, marker: Path, nested: str) -> None:
    data = yaml.safe_load(path.read_text())
    node = data["config"] if nested == "record" else data
    node["dataset"]["source"] = {"_target_": "builtins.exec", "_args_": [f"open({str(marker)!r}, 'w')"]}
    path.write_text(yaml.safe_dump(data))


def _plant_python_tag(path: Path, marker: Path) -> None:
    text = path.read_text()
    path.write_text(text + f"evil: !!python/object/apply:builtins.exec [\"open({str(marker)!r}, 'w')\"]\n")


def _recommend(run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lopt.recommend", str(run_dir), "--k", "5", *extra],
        cwd=run_dir.parent,
        env=cli_env(run_dir.parent),
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("where", "how", "command"),
    [
        ("checkpoints/best.ckpt", "pickle", "recommend"),
        ("checkpoints/last.ckpt", "pickle", "resume"),
        (".hydra/run_record.yaml", "target", "resume"),
        (".hydra/config.yaml", "target", "recommend"),
        (".hydra/run_record.yaml", "tag", "resume"),
        (".hydra/config.yaml", "tag", "recommend"),
    ],
)
def test_planted_payloads_never_run(finished: Path, where: str, how: str, command: str) -> None:
    marker = finished.parent / "PWNED"
    path = finished / where
    if how == "pickle":
        _plant_pickle(path, marker)
    elif how == "target":
        _plant_target(path, marker, "record" if "record" in where else "config")
    else:
        _plant_python_tag(path, marker)
    if command == "resume":
        (finished / "metrics.json").unlink()  # an unfinished run: the resume has work to do
        proc = _resume(finished, "trainer.max_epochs=4")
    else:
        proc = _recommend(finished)
        assert proc.returncode == 2 and proc.stderr.startswith("error: "), proc.stderr[-3000:]
    assert proc.returncode != 0
    assert not marker.exists()
    if how == "target":
        assert "dataset.source._target_: 'builtins.exec'" in proc.stderr
    if how == "pickle":
        assert f"{path} holds objects other than tensors" in proc.stderr


def test_every_shipped_target_is_allowed() -> None:
    targets = {}
    for path in sorted((REPO_ROOT / "conf").rglob("*.yaml")):
        node = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        targets.update({f"{path.relative_to(REPO_ROOT)}:{k}": v for k, v in recorded_targets(node).items()})
    assert len(targets) > 20
    refused = {k: v for k, v in targets.items() if not allowed_target(v)}
    assert not refused


@pytest.mark.parametrize(
    "target",
    ["builtins.exec", "os.system", "torch.load", "subprocess.run", "lopt.io.atomic_write", "lopt.api.train",
     "torch.optim._private", "${evil}", "lightning.pytorch.Trainer.fit", "torch.optimx.SGD"],
)  # fmt: skip
def test_other_targets_are_refused(target: str) -> None:
    assert not allowed_target(target)
    assert all(p.endswith(".") for p in ALLOWED_TARGET_PREFIXES)


@pytest.mark.slow
def test_recommend_refuses_an_unfinished_run_unless_asked(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = patched_cli(tmp_path, signal_at_step("SIGTERM", 20), [*RUN, f"hydra.run.dir={run_dir}"])
    assert proc.returncode == EXIT_SIGTERM
    refused = _recommend(run_dir)
    assert (
        refused.returncode == 2 and "is not a finished run" in refused.stderr and "--allow-unfinished" in refused.stderr
    )
    assert not (run_dir / "recommendations.parquet").exists()
    allowed = _recommend(run_dir, "--allow-unfinished")
    assert allowed.returncode == 0, allowed.stderr[-3000:]
    best = run_dir / "checkpoints" / "best.ckpt"
    assert f"is unfinished; using {best} (step {ckpt_step(best)})" in allowed.stderr


@pytest.mark.slow
def test_recommend_turns_a_torn_checkpoint_into_its_error_line(finished: Path) -> None:
    best = finished / "checkpoints" / "best.ckpt"
    best.write_bytes(best.read_bytes()[:1000])
    proc = _recommend(finished)
    assert proc.returncode == 2 and proc.stderr.startswith(f"error: {best} cannot be read as a checkpoint")
    assert "Traceback" not in proc.stderr


def _interactions_csv(path: Path, encoding: str = "utf-8", users: tuple[str, ...] = ()) -> None:
    rng = np.random.default_rng(0)
    names = [*users, *(f"u{i}" for i in range(120 - len(users)))]
    lines = ["user,item,timestamp"]
    for u, name in enumerate(names):
        items = rng.choice(120, size=20, replace=False)
        lines += [f"{name},{item},{u * 100 + t}" for t, item in enumerate(items)]
    path.write_bytes(("\n".join(lines) + "\n").encode(encoding))


def test_ids_that_do_not_decode_are_an_error_naming_the_line(tmp_path: Path) -> None:
    from lopt.data.readers import DataFormatError
    from lopt.data.sources import CustomSource

    path = tmp_path / "latin.csv"
    _interactions_csv(path, "latin-1", users=("café", "cafè"))
    with pytest.raises(DataFormatError, match=r"latin\.csv: line 2: .*not valid utf-8.*dataset\.source\.encoding"):
        CustomSource(path, "user", "item", "timestamp").load()
    frame = CustomSource(path, "user", "item", "timestamp", encoding="latin-1").load()
    assert {"café", "cafè"} <= set(frame["user"].to_list())
    assert (
        CustomSource(path, "user", "item", "timestamp", encoding="latin-1").fingerprint()
        != CustomSource(path, "user", "item", "timestamp").fingerprint()
    )
    with pytest.raises(ValueError, match="dataset.source.encoding must name"):
        CustomSource(path, "user", "item", "timestamp", encoding="klingon")


def _custom_run(path: Path) -> list[str]:
    return [
        "dataset=custom",
        f"dataset.source.path={path}",
        "model.dim=8",
        "trainer.max_epochs=1",
        "data.batch_size=256",
        "data.valid_batch_size=256",
        "logger=none",
    ]


def _edit_in_place_keeping_stat(path: Path) -> None:
    """Change one digit of the file, same size, mtime put back (what `touch -r` does)."""
    stat = path.stat()
    data = bytearray(path.read_bytes())
    at = data.index(b",5,") + 1
    data[at : at + 1] = b"6"
    with open(path, "r+b") as handle:
        handle.write(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns


@pytest.mark.slow
def test_data_edited_in_place_is_rebuilt_and_refused_on_resume(tmp_path: Path) -> None:
    data = tmp_path / "clicks.csv"
    _interactions_csv(data)
    first, second = tmp_path / "first", tmp_path / "second"
    run_cli([*_custom_run(data), f"hydra.run.dir={first}"], cwd=tmp_path)
    fp_before = read_metrics(first)["provenance"]["split_fingerprint"]
    assert yaml.safe_load((first / ".hydra" / "run_record.yaml").read_text())["split_fingerprint"] == fp_before
    (first / "metrics.json").unlink()  # unfinished, so that a resume has work to do
    before = _digests(first)

    _edit_in_place_keeping_stat(data)
    refused = _resume(first, "trainer.max_epochs=2")
    assert refused.returncode != 0 and "has changed since the run started" in refused.stderr
    assert _digests(first) == before

    run_cli([*_custom_run(data), f"hydra.run.dir={second}"], cwd=tmp_path)
    assert read_metrics(second)["provenance"]["split_fingerprint"] != fp_before
    assert len(list((tmp_path / "data" / ".lopt_cache").glob("split-*.npz"))) == 2  # rebuilt, not reused

    moved = tmp_path / "elsewhere.csv"
    data.rename(moved)
    gone = _resume(first, "trainer.max_epochs=2")
    assert gone.returncode != 0 and "not found" in gone.stderr and _digests(first) == before


def test_the_same_bytes_give_the_same_fingerprint_anywhere(tmp_path: Path) -> None:
    from lopt.data.sources import CustomSource

    a, b = tmp_path / "a" / "r.csv", tmp_path / "b" / "other.csv"
    for path in (a, b):
        path.parent.mkdir()
        _interactions_csv(path)
    os.utime(b, ns=(1, 1))
    memo = tmp_path / "memo"
    assert (
        CustomSource(a, "user", "item", "timestamp").fingerprint(memo)
        == CustomSource(b, "user", "item", "timestamp").fingerprint()
    )
    _edit_in_place_keeping_stat(a)
    assert CustomSource(a, "user", "item", "timestamp").fingerprint(memo) != CustomSource(
        b, "user", "item", "timestamp"
    ).fingerprint(memo)


@pytest.mark.slow
def test_a_full_disk_while_writing_results_is_one_line_and_resumable(tmp_path: Path, straight: Path) -> None:
    run_dir = tmp_path / "run"
    patch = (
        "import polars as pl\n"
        "_write = pl.DataFrame.write_parquet\n"
        "def _full(self, path, *a, **k):\n"
        "    if 'per_user_test' in str(path):\n"
        "        raise pl.exceptions.ComputeError('parquet: I/O error: No space left on device (os error 28)')\n"
        "    return _write(self, path, *a, **k)\n"
        "pl.DataFrame.write_parquet = _full\n"
    )
    proc = patched_cli(tmp_path, patch, [*RUN, f"hydra.run.dir={run_dir}"])
    assert proc.returncode == 1, proc.stderr[-3000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: No space left on device writing ") and "per_user_test.parquet" in line
    assert f"kept {run_dir / 'checkpoints' / 'last.ckpt'} (training complete)" in line
    assert f"{RESUME_HINT}{run_dir}" in line
    assert not (run_dir / "metrics.json").exists()
    _resume(run_dir, check=True)
    _same_results(run_dir, straight)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("dataset.preprocess.valid_ratio=1.5", "dataset.preprocess.valid_ratio must be a number in [0, 1)"),
        ("protocol.split.kind=bogus", "protocol.split.kind must be one of"),
        ("eval.ties=optimistic", "eval.ties must be one of"),
        ("control.name=outer", "control.name must be one of"),
        ("trainer.devices=2", "trainer.devices must be 1"),
        ("callbacks.model_checkpoint.filename=../../x", "callbacks.model_checkpoint.filename must be a plain file"),
    ],
)
def test_enum_ratio_device_and_filename_keys_are_checked_after_composition(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(")", r"\)")):
        check_config(compose_config([override]))


@pytest.mark.slow
def test_a_bad_ratio_is_refused_before_the_raw_file_is_read(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = ["dataset=custom", f"dataset.source.path={tmp_path / 'absent.csv'}", "dataset.preprocess.valid_ratio=1.5"]
    proc = run_cli([*args, f"hydra.run.dir={run_dir}"], cwd=tmp_path, check=False, timeout=120)
    assert proc.returncode != 0 and "valid_ratio must be a number in [0, 1)" in proc.stderr
    assert "not found" not in proc.stderr


@pytest.mark.slow
def test_lock_names_the_holder_and_is_free_once_released(tmp_path: Path) -> None:
    from lopt.run.lock import RunLock

    code = f"from lopt.run.lock import RunLock; RunLock({str(tmp_path)!r}).acquire()"
    with RunLock(tmp_path):
        child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(tmp_path))
        assert child.returncode != 0 and f"is in use by pid {os.getpid()} on" in child.stderr
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(tmp_path))
    assert child.returncode == 0, child.stderr
