"""Progress lines of a run without a terminal (a subprocess writing into a pipe), the Python API
(`from lopt import train`), and the clear stop of trainer=gpu on a machine without a GPU."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig

from lopt.pipeline import check_accelerator
from tests.helpers.cli import TINY_OVERRIDES, run_cli
from tests.helpers.hydra import compose_config


@pytest.mark.slow
def test_piped_run_logs_a_line_per_epoch_and_progress_within(tmp_path: Path) -> None:
    """stdout/stderr are pipes (as under SLURM): no progress bar; one line per epoch with step,
    train loss, the Λ-step's validation loss, valid metrics when evaluated, elapsed and ETA;
    with every_n_seconds≈0 also lines within the epoch and within the evaluations."""
    proc = run_cli(
        [
            *TINY_OVERRIDES,
            "trainer.max_epochs=3",
            "eval.every_n_epochs=2",
            "trainer.log_every_n_steps=2",
            "callbacks.progress.every_n_seconds=1e-9",
            f"hydra.run.dir={tmp_path}/run",
        ],
        cwd=tmp_path,
    )
    out = proc.stdout + proc.stderr
    epoch_lines = [line for line in out.splitlines() if re.search(r"\] - epoch \d+/3  step \d+  train_loss", line)]
    assert len(epoch_lines) == 3, out[-3000:]
    for line in epoch_lines:
        assert re.search(r"train_loss \d\.\d{4}  lookahead_valid_loss \d\.\d{4}", line), line
        assert re.search(r"elapsed \d+:\d\d  ETA \d+:\d\d", line), line
    assert "valid auc=" in epoch_lines[1] and "valid auc=" not in epoch_lines[0]
    assert re.search(r"epoch 1/3  batch 1/\d+  step \d+  train_loss", out)
    assert re.search(r"valid evaluation: batch 1/\d+", out) and re.search(r"test evaluation: batch 1/\d+", out)
    assert re.search(r"valid \(after epoch 3\)  auc=", out)  # the final, unscheduled evaluation
    assert "reading SyntheticSource" in out and "read 3,000 interactions" in out  # the source, then
    assert "preprocess split" in out  # each preprocessing stage
    assert "\r" not in proc.stderr and "━" not in out  # no progress bar in a pipe


def test_python_api_from_a_script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`from lopt import train` outside any Hydra app: outputs under ./outputs/DATE/TIME with the
    results contract and .hydra/, data under ./data, the metrics returned; a second call works."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LOPT_DATA_DIR", raising=False)
    from lopt import train

    metrics = train([*TINY_OVERRIDES, "trainer.max_epochs=1", "seed=1"])
    out = Path(metrics["output_dir"])
    assert out.parent.parent == tmp_path / "outputs"
    assert json.loads((out / "metrics.json").read_text())["test"] == metrics["test"]
    assert metrics["seed"] == 1 and (out / "per_user_test.parquet").is_file()
    saved = (out / ".hydra" / "config.yaml").read_text()
    assert "seed: 1" in saved and "trainer.max_epochs=1" in (out / ".hydra" / "overrides.yaml").read_text()
    assert list((tmp_path / "data" / ".lopt_cache").glob("split-*.npz"))
    assert "epoch 1/1" in (out / "lopt.log").read_text()
    again = train(
        [*TINY_OVERRIDES, "trainer.max_epochs=1", "seed=1", f"hydra.run.dir={tmp_path}/second"], configure_logging=False
    )
    assert again["test"] == metrics["test"]  # same seed, same metrics
    with pytest.raises(ValueError, match="command line"):
        train(["-m", "seed=1,2"])
    # Hydra's global state is left as it was (in-process runs after this one see no stale app) …
    assert not HydraConfig.initialized() and not GlobalHydra.instance().is_initialized()
    # … and a resume through the API composes the recorded overrides (one more epoch is allowed).
    longer = train(["resume=true", f"hydra.run.dir={tmp_path}/second", "trainer.max_epochs=2"], configure_logging=False)
    assert longer["output_dir"] == again["output_dir"] and longer["best_epoch"] in (0, 1)


def test_gpu_trainer_without_gpu_names_trainer_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    gpu, cpu = compose_config(["trainer=gpu"]), compose_config(["trainer=cpu"])
    with pytest.raises(RuntimeError, match="trainer=cpu"):
        check_accelerator(gpu)
    check_accelerator(cpu)


def _run_in_a_terminal(args: list[str], cwd: Path, timeout: float = 600) -> tuple[int, str]:
    """Run ``python run.py ARGS`` with stdin, stdout and stderr on a pseudo-terminal (as in an
    interactive shell); (exit code, everything it printed)."""
    import os
    import pty
    import select
    import subprocess
    import sys
    import time

    from tests.helpers.paths import REPO_ROOT

    master, slave = pty.openpty()
    env = {**os.environ, "WANDB_MODE": "disabled", "LOPT_DATA_DIR": str(cwd / "data"), "COLUMNS": "160"}
    proc = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "run.py"), *args], cwd=cwd, env=env, stdin=slave, stdout=slave, stderr=slave
    )
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
    code = proc.wait(timeout=60)
    return code, b"".join(chunks).decode("utf-8", "replace")


@pytest.mark.slow
def test_run_in_a_terminal_shows_a_bar_and_logs_every_epoch_to_run_log(tmp_path: Path) -> None:
    """Under a pseudo-terminal: the rich bar counts epochs from 1 (Epoch 1/3 … 3/3, as the log),
    the epoch lines do not tear the bar on the console but are all in run.log, and the summary
    names the best epoch counted from 1 (metrics.json's best_epoch + 1)."""
    run_dir = tmp_path / "run"
    code, console = _run_in_a_terminal(
        [*TINY_OVERRIDES, "trainer.max_epochs=3", f"hydra.run.dir={run_dir}"], cwd=tmp_path
    )
    assert code == 0, console[-4000:]
    log = (run_dir / "run.log").read_text()
    epoch_lines = [line for line in log.splitlines() if re.search(r"\] - epoch \d/3  step \d+  train_loss", line)]
    assert [re.search(r"epoch (\d)/3", line).group(1) for line in epoch_lines] == ["1", "2", "3"], log[-3000:]
    assert "training: 3 epochs" in log and "test evaluation of the best checkpoint" in log
    assert "preprocess split" in log  # the rest of the log is there as before
    assert not re.search(r"\] - epoch \d/3  step", console)  # file only: not printed over the bar
    assert "Epoch 1/3" in console and "Epoch 3/3" in console and "Epoch 0/" not in console
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert f"best epoch {metrics['best_epoch'] + 1}" in console


def test_bar_counts_epochs_from_one_and_file_only_lines_skip_the_console(tmp_path: Path) -> None:
    """The bar's description is 1-based (`Epoch 1/15` … `Epoch 15/15`); records logged for the
    file only reach a file handler but not a handler with lopt's ConsoleFilter."""
    import io
    import logging
    from types import SimpleNamespace

    from lopt.tracking.log_routing import FILE_ONLY, ConsoleFilter
    from lopt.tracking.progress import RichBar

    bar = RichBar()
    bar._trainer = SimpleNamespace(max_epochs=15)
    assert bar._get_train_description(0).strip() == "Epoch 1/15"
    assert bar._get_train_description(14).strip() == "Epoch 15/15"
    console, file = io.StringIO(), tmp_path / "run.log"
    to_console, to_file = logging.StreamHandler(console), logging.FileHandler(file)
    to_console.addFilter(ConsoleFilter())
    logger = logging.getLogger("lopt.test_routing")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in (to_console, to_file):
        logger.addHandler(handler)
    try:
        logger.info("everywhere")
        logger.info("file only", extra=FILE_ONLY)
    finally:
        for handler in (to_console, to_file):
            logger.removeHandler(handler)
            handler.close()
    assert console.getvalue() == "everywhere\n" and file.read_text() == "everywhere\nfile only\n"
