"""``hydra/launcher=local``: the jobs of a multirun as parallel processes on this machine, at most
``max_parallel`` at a time (default: the cores this process may use), each with a thread budget
that fits (``OMP_NUM_THREADS``/``MKL_NUM_THREADS``, which torch's intra-op pool follows).

It is hydra-submitit-launcher's local launcher with a pool in front: submitit's local executor
starts every job of a batch at once, which oversubscribes a laptop with a 20-value grid. Each
job's stdout/stderr land in ``<sweep dir>/.submitit/<pid>_0_log.{out,err}`` (one folder for the
sweep, no per-job ``%j`` folders) and are linked from ``sweep_summary.md``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher

log = logging.getLogger(__name__)

#: Environment variables that size a job's thread pools (torch reads OMP_NUM_THREADS at start).
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
#: Launcher keys handled here, not passed to submitit.
OWN_KEYS = ("max_parallel", "threads_per_job")
#: Seconds between checks of the running jobs.
POLL_S = 0.5


def machine_cores() -> int:
    """Cores this process may run on (its CPU affinity; all cores where that is unknown)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def plan(n_jobs: int, max_parallel: int | None, threads_per_job: int | None, cores: int) -> tuple[int, int]:
    """(jobs at once, threads per job) for ``n_jobs`` jobs on ``cores`` cores: at most
    ``max_parallel`` jobs (null: ``cores``), and the cores shared among the jobs that run at once
    unless ``threads_per_job`` is given."""
    for key, value in (("max_parallel", max_parallel), ("threads_per_job", threads_per_job)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ValueError(f"hydra.launcher.{key} must be an integer ≥ 1 or null (automatic), got {value!r}")
    parallel = max(1, min(n_jobs, max_parallel if max_parallel is not None else cores))
    threads = threads_per_job if threads_per_job is not None else max(1, cores // parallel)
    return parallel, threads


@contextmanager
def thread_budget(threads: int):
    """Set the thread variables for the jobs started inside (a user's own setting wins)."""
    saved = {name: os.environ.get(name) for name in THREAD_VARIABLES}
    for name in THREAD_VARIABLES:
        os.environ.setdefault(name, str(threads))
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class CappedLocalLauncher(LocalLauncher):
    """submitit's local launcher, at most ``max_parallel`` jobs at a time (see the module)."""

    def __init__(self, max_parallel: int | None = None, threads_per_job: int | None = None, **params: Any) -> None:
        super().__init__(**params)
        self.max_parallel, self.threads_per_job = max_parallel, threads_per_job

    def _executor(self) -> Any:
        import submitit

        executor = submitit.AutoExecutor(
            cluster="local", folder=self.params["submitit_folder"], local_max_num_timeout=self.params["max_num_timeout"]
        )
        passed = {k: v for k, v in self.params.items() if k not in ("submitit_folder", "max_num_timeout")}
        executor.update_parameters(**passed)
        return executor

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None
        if "%" in str(self.params["submitit_folder"]):
            raise ValueError(
                f"hydra.launcher.submitit_folder={self.params['submitit_folder']}: the local launcher keeps "
                "every job's log in one folder (named by the job's process id); drop the %j"
            )
        n_jobs = len(job_overrides)
        parallel, threads = plan(n_jobs, self.max_parallel, self.threads_per_job, machine_cores())
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info(
            "local launcher: %d job(s) in %s, %d at a time, %d thread(s) each", n_jobs, sweep_dir, parallel, threads
        )
        executor = self._executor()
        pending = list(enumerate(job_overrides))
        running: dict[int, Any] = {}
        results: dict[int, JobReturn] = {}
        with thread_budget(threads):
            while pending or running:
                while pending and len(running) < parallel:
                    index, overrides = pending.pop(0)
                    number = initial_job_idx + index
                    log.info("\t#%d : %s", number, " ".join(filter_overrides(overrides)))
                    running[index] = executor.submit(
                        self, list(overrides), "hydra.sweep.dir", number, f"job_id_for_{number}", Singleton.get_state()
                    )
                finished = [index for index, job in running.items() if job.done()]
                for index in finished:
                    results[index] = self._result(running.pop(index), job_overrides[index])
                if not finished:
                    time.sleep(POLL_S)
        return [results[index] for index in range(n_jobs)]

    @staticmethod
    def _result(job: Any, overrides: Sequence[str]) -> JobReturn:
        """The job's JobReturn; a job that died without one (killed, out of memory) becomes a
        failed JobReturn naming its log, so the other jobs' results are kept."""
        try:
            return job.results()[0]
        except Exception as error:  # submitit's UncompletedJobError / FailedJobError
            failed = JobReturn(overrides=list(overrides))
            failed.status = JobStatus.FAILED
            failed.return_value = RuntimeError(f"job {job.job_id} ended without a result ({job.paths.stderr}): {error}")
            return failed
