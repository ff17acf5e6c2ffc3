"""Real SLURM: a 2-job multirun through `hydra/launcher=slurm`, and a requeued job that resumes.

Needs a running cluster: `.ci/slurm.sh start` (CI does this in `.ci/run`), then `source
/tmp/lopt-slurm/env` (or nothing: the env file at its default place is read when SLURM_CONF is
unset). Without a cluster the tests skip, except under CI=true where they fail.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.cli import TINY_OVERRIDES
from tests.helpers.paths import REPO_ROOT

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

# Where .ci/slurm.sh writes `export SLURM_CONF=...` (keep in sync with LOPT_SLURM_DIR there).
SLURM_ENV_FILE = Path(os.environ.get("LOPT_SLURM_DIR", "/tmp/lopt-slurm")) / "env"

# One job per core, small memory request, short time limit.
SLURM_OVERRIDES = [
    "hydra/launcher=slurm",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=1",
    "hydra.launcher.timeout_min=10",
]
# The preemption test's job must still be training when its first checkpoint appears: more epochs
# than the tiny run. Raise LOPT_TEST_PREEMPT_EPOCHS if it finishes before it could be requeued.
PREEMPT_EPOCHS = int(os.environ.get("LOPT_TEST_PREEMPT_EPOCHS", "50"))
PREEMPT_OVERRIDES = [f"trainer.max_epochs={PREEMPT_EPOCHS}"]

MULTIRUN_TIMEOUT_S = 150
PREEMPT_TIMEOUT_S = 170


def _cluster_problem(env: dict[str, str]) -> str | None:
    """Why the SLURM cluster cannot be used (None when it can)."""
    if not env.get("SLURM_CONF"):
        return f"SLURM_CONF is unset and {SLURM_ENV_FILE} does not exist (start one: .ci/slurm.sh start)"
    for tool in ("sinfo", "sbatch", "squeue", "scontrol"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not on PATH (install slurm-client, or run .ci/slurm.sh start)"
    try:
        # `scontrol ping` answers at once; sinfo would retry a dead controller for ~20 s.
        ping = subprocess.run(["scontrol", "ping"], env=env, capture_output=True, text=True, timeout=20)
        if ping.returncode != 0:
            said = ((ping.stdout + ping.stderr).strip().splitlines() or ["no output"])[0]
            return f"slurmctld is not answering `scontrol ping` ({said})"
        proc = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], env=env, capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "`scontrol ping`/`sinfo` did not answer within 20 s (is slurmctld running?)"
    if proc.returncode != 0:
        return f"`sinfo` failed (rc={proc.returncode}): {proc.stderr.strip()[-300:]}"
    states = proc.stdout.split()
    if not any(s.rstrip("*~#") in {"idle", "mixed", "allocated", "completing"} for s in states):
        return f"no SLURM node accepts jobs (node states: {states or 'none'})"
    return None


@pytest.fixture(scope="module")
def slurm_env(tmp_path_factory) -> dict[str, str]:
    """Environment for the CLI: SLURM_CONF set, fast imports, W&B off, a data folder shared by the
    module's runs. Skips without SLURM (fails under CI=true)."""
    env = dict(os.environ)
    if not env.get("SLURM_CONF") and SLURM_ENV_FILE.is_file():
        match = re.search(r"SLURM_CONF=(\S+)", SLURM_ENV_FILE.read_text())
        if match:
            env["SLURM_CONF"] = shlex.split(match.group(1))[0]
    problem = _cluster_problem(env)
    if problem:
        if os.environ.get("CI", "").lower() in {"true", "1"}:
            pytest.fail(
                f"CI=true but no usable SLURM cluster: {problem}. `.ci/run` must start it "
                f"with `.ci/slurm.sh start` and source {SLURM_ENV_FILE} before pytest."
            )
        pytest.skip(f"no SLURM cluster: {problem}")
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # .pyc files halve each job's `import lightning`
    env["WANDB_MODE"] = "disabled"
    env["LOPT_DATA_DIR"] = str(tmp_path_factory.mktemp("slurm-data"))
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture(scope="module")
def tiny_overrides() -> list[str]:
    """The overrides that make a run tiny (conf/debug/tiny.yaml), shared by the e2e tests."""
    return list(TINY_OVERRIDES)


def _cli(sweep_dir: Path, overrides: list[str]) -> list[str]:
    return [sys.executable, str(REPO_ROOT / "run.py"), "-m", *overrides, f"hydra.sweep.dir={sweep_dir}"]


def _start(cmd: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """Start the CLI from the test's folder (SLURM jobs inherit it as their working directory).
    Own process group, so a timeout kills the launcher and anything it spawned."""
    with log_path.open("w") as log:
        return subprocess.Popen(
            cmd, cwd=log_path.parent, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def _job_ids(sweep_dir: Path) -> list[str]:
    """SLURM ids of the sweep's jobs (submitit keeps one folder per job: <id> or <array>_<task>)."""
    sub = sweep_dir / ".submitit"
    if not sub.is_dir():
        return []
    return sorted(
        p.name for p in sub.iterdir() if re.fullmatch(r"\d+_\d+|\d+", p.name) and any(p.glob("*_submitted.pkl"))
    )


def _cancel(sweep_dir: Path, env: dict[str, str]) -> None:
    """Leave no job of this sweep on the shared CI node."""
    ids = _job_ids(sweep_dir)
    if ids:
        subprocess.run(["scancel", *ids], env=env, capture_output=True, timeout=30)


def _diagnostics(sweep_dir: Path, cli_log: Path, env: dict[str, str]) -> str:
    """The launcher's output, the jobs' logs and the queue: what to read when a test fails."""
    parts = [f"--- launcher output ({cli_log}) ---", cli_log.read_text()[-4000:] if cli_log.exists() else ""]
    for path in sorted(sweep_dir.rglob("*")):
        if path.is_file() and (path.suffix in {".out", ".err", ".log"}):
            parts += [f"--- {path} ---", path.read_text(errors="replace")[-3000:]]
    queue = subprocess.run(["squeue", "-a", "-o", "%i %T %r %j"], env=env, capture_output=True, text=True, timeout=30)
    parts += ["--- squeue ---", queue.stdout + queue.stderr]
    return "\n".join(parts)


def _job_dirs_with(sweep_dir: Path, name: str) -> list[Path]:
    """Job output folders (not submitit's) that contain the file NAME."""
    return sorted(p.parent for p in sweep_dir.rglob(name) if ".submitit" not in p.parts)


def _test_auc(metrics_path: Path) -> float:
    metrics = json.loads(metrics_path.read_text())
    assert "test" in metrics and "auc" in metrics["test"], f"{metrics_path} lacks test.auc: {metrics}"
    auc = metrics["test"]["auc"]
    assert isinstance(auc, float) and 0.0 <= auc <= 1.0, f"{metrics_path}: test.auc={auc!r}"
    return auc


def test_two_job_multirun_on_slurm(slurm_env, tiny_overrides, tmp_path, capsys, record_property):
    """`run.py -m hydra/launcher=slurm ... seed=1,2` runs both jobs on SLURM and writes their metrics."""
    sweep_dir = tmp_path / "sweep"
    cli_log = tmp_path / "cli.log"
    cmd = _cli(sweep_dir, [*SLURM_OVERRIDES, *tiny_overrides, "seed=1,2"])
    start = time.monotonic()
    proc = _start(cmd, slurm_env, cli_log)
    try:
        rc = proc.wait(timeout=MULTIRUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        _stop(proc)
        _cancel(sweep_dir, slurm_env)
        pytest.fail(
            f"multirun did not finish within {MULTIRUN_TIMEOUT_S} s: {shlex.join(cmd)}\n"
            + _diagnostics(sweep_dir, cli_log, slurm_env)
        )
    if rc != 0:
        _cancel(sweep_dir, slurm_env)
    wall_s = time.monotonic() - start
    record_property("slurm_multirun_wall_s", round(wall_s, 1))
    with capsys.disabled():
        print(f"\n[slurm] 2-job multirun on SLURM, submit to both metrics.json: {wall_s:.1f} s wall")

    assert rc == 0, f"multirun failed (rc={rc}): {shlex.join(cmd)}\n" + _diagnostics(sweep_dir, cli_log, slurm_env)
    assert len(_job_ids(sweep_dir)) == 2, f"expected 2 SLURM jobs, found {_job_ids(sweep_dir)}"
    job_dirs = _job_dirs_with(sweep_dir, "metrics.json")
    assert len(job_dirs) == 2, (
        f"expected metrics.json from 2 jobs under {sweep_dir}, found {job_dirs}\n"
        + _diagnostics(sweep_dir, cli_log, slurm_env)
    )
    seeds = {json.loads((d / "metrics.json").read_text()).get("seed") for d in job_dirs}
    assert seeds == {1, 2}, f"each job must run its own seed, got {seeds}"
    for d in job_dirs:
        _test_auc(d / "metrics.json")


def _nudge_requeued(job_id: str, env: dict[str, str]) -> None:
    """SLURM holds a requeued job back ~2 minutes (Reason=BeginTime); start it now instead."""
    out = subprocess.run(
        ["squeue", "-h", "-j", job_id, "-o", "%T %r"], env=env, capture_output=True, text=True, timeout=30
    ).stdout.split()
    if out[:2] == ["PENDING", "BeginTime"]:
        subprocess.run(
            ["scontrol", "update", f"JobId={job_id}", "StartTime=now"], env=env, capture_output=True, timeout=30
        )


def test_requeued_job_resumes_from_last_checkpoint(slurm_env, tiny_overrides, tmp_path):
    """`scontrol requeue` on a training job (what preemption does): it restarts in the same output
    directory, resumes from checkpoints/last.ckpt, and the multirun still completes."""
    sweep_dir = tmp_path / "sweep"
    cli_log = tmp_path / "cli.log"
    cmd = _cli(sweep_dir, [*SLURM_OVERRIDES, *tiny_overrides, *PREEMPT_OVERRIDES, "seed=1"])
    deadline = time.monotonic() + PREEMPT_TIMEOUT_S
    proc = _start(cmd, slurm_env, cli_log)
    try:
        # 1. Wait for the first checkpoint of the running job.
        ckpt = None
        while ckpt is None and time.monotonic() < deadline and proc.poll() is None:
            found = [p for p in sweep_dir.rglob("checkpoints/last.ckpt") if ".submitit" not in p.parts]
            ckpt = found[0] if found else None
            time.sleep(0.2)
        if ckpt is None:
            why = (
                "the multirun ended before any checkpoints/last.ckpt appeared (raise "
                "LOPT_TEST_PREEMPT_EPOCHS if the job was too quick)"
                if proc.poll() is not None
                else f"no checkpoints/last.ckpt within {PREEMPT_TIMEOUT_S} s"
            )
            pytest.fail(why + "\n" + _diagnostics(sweep_dir, cli_log, slurm_env))
        (job_id,) = _job_ids(sweep_dir)
        job_dir = ckpt.parent.parent
        assert not (job_dir / "metrics.json").exists(), (
            f"job {job_id} already finished when its first checkpoint appeared; raise LOPT_TEST_PREEMPT_EPOCHS"
        )

        # 2. Requeue it, as preemption would: SIGTERM now, SIGKILL after KillWait, back to the queue.
        requeue = subprocess.run(
            ["scontrol", "requeue", job_id], env=slurm_env, capture_output=True, text=True, timeout=30
        )
        assert requeue.returncode == 0, f"scontrol requeue {job_id} failed: {requeue.stderr}"

        # 3. Wait for the restarted job and the launcher to finish.
        while proc.poll() is None and time.monotonic() < deadline:
            _nudge_requeued(job_id, slurm_env)
            time.sleep(1)
        if proc.poll() is None:
            _stop(proc)
            pytest.fail(
                f"requeued multirun did not finish within {PREEMPT_TIMEOUT_S} s\n"
                + _diagnostics(sweep_dir, cli_log, slurm_env)
            )
    finally:
        _stop(proc)
        if proc.returncode != 0:  # failed or killed: leave nothing running on the CI node
            _cancel(sweep_dir, slurm_env)

    diagnostics = _diagnostics(sweep_dir, cli_log, slurm_env)
    assert proc.returncode == 0, f"requeued multirun failed (rc={proc.returncode})\n{diagnostics}"
    restarts = subprocess.run(
        ["scontrol", "show", "job", job_id], env=slurm_env, capture_output=True, text=True, timeout=30
    ).stdout
    match = re.search(r"Restarts=(\d+)", restarts)
    assert match is None or int(match.group(1)) >= 1, f"job {job_id} was not restarted:\n{restarts}"
    assert (job_dir / "metrics.json").is_file(), f"the resumed job wrote no {job_dir}/metrics.json\n{diagnostics}"
    _test_auc(job_dir / "metrics.json")
    logs = [p for p in sweep_dir.rglob("*") if p.is_file() and p.suffix in {".log", ".out", ".err"}]
    resumed = [p for p in logs if "resuming from" in p.read_text(errors="replace").lower()]
    assert resumed, f"no log under {sweep_dir} says 'resuming from' (the restart did not resume)\n{diagnostics}"
