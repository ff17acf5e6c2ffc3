"""``sweep_summary.csv`` and ``sweep_summary.md``: one row per job of a multirun (its overrides,
status, main metrics, run directory and logs), written by :class:`SweepSummary`, a Hydra callback
(``hydra.callbacks.sweep_summary`` in ``conf/config.yaml``).

Inside each job (any launcher) ``on_job_end`` records the job's status in
``<run dir>/.hydra/job_status.json``: completed or failed (with the error), and where submitit
put its stdout/stderr. The driver writes the summary at the end of the multirun, from those
files and each job's ``metrics.json``, also when the sweep stopped on a failed job (an ``atexit``
hook: Hydra skips ``on_multirun_end`` then). A job with no status file was killed or is still
running ("no result").
"""

from __future__ import annotations

import atexit
import csv
import io
import json
import logging
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from lopt.io import atomic_write

log = logging.getLogger(__name__)

STATUS_FILE = Path(".hydra") / "job_status.json"
SUMMARY_NAME = "sweep_summary"
#: Test metrics shown in the Markdown table besides the selection metric (all are in the CSV).
SHOWN_TEST_METRICS = ("auc", "recall@50", "ndcg@50", "hr@10", "ndcg@10")
#: Folders of a sweep directory that hold no job.
NOT_JOBS = (".submitit", ".hydra")


def _submitit_logs() -> dict[str, str]:
    """stdout/stderr of the current submitit job ({} outside submitit)."""
    if "SUBMITIT_EXECUTOR" not in os.environ:
        return {}
    try:
        import submitit

        paths = submitit.JobEnvironment().paths
        return {"stdout": str(paths.stdout), "stderr": str(paths.stderr)}
    except Exception:  # not in a submitit job after all
        return {}


def write_job_status(output_dir: Path, status: str, error: str | None) -> None:
    """``<output_dir>/.hydra/job_status.json``."""
    torch = sys.modules.get("torch")  # the run imported it: the threads it trained with
    payload = {
        "status": status,
        "error": error,
        "logs": _submitit_logs(),
        "threads": torch.get_num_threads() if torch is not None else None,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
    }
    atomic_write(output_dir / STATUS_FILE, lambda tmp: tmp.write_text(json.dumps(payload, indent=1)))


def job_dirs(sweep_dir: Path) -> Iterator[Path]:
    """Every job directory under ``sweep_dir`` (a folder with ``.hydra/overrides.yaml``)."""
    for overrides in sorted(sweep_dir.rglob(".hydra/overrides.yaml")):
        job = overrides.parent.parent
        if job != sweep_dir and not any(part in NOT_JOBS for part in job.relative_to(sweep_dir).parts):
            yield job


def _sort_key(job: Path, sweep_dir: Path) -> tuple:
    parts = job.relative_to(sweep_dir).parts
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def job_row(job: Path, sweep_dir: Path, monitor: str) -> dict[str, Any]:
    """The summary row of one job (see the module docstring)."""
    overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text(encoding="utf-8")) or []
    status = _read_json(job / STATUS_FILE) or {}
    metrics = _read_json(job / "metrics.json")
    state = status.get("status") or ("COMPLETED" if metrics is not None else "no result")
    row: dict[str, Any] = {
        "job": str(job.relative_to(sweep_dir)),
        "overrides": " ".join(str(o) for o in overrides),
        "status": state,
        f"valid/{monitor}": None,
    }
    if metrics is not None:
        row[f"valid/{monitor}"] = metrics.get("valid", {}).get(monitor)
        row["best_epoch"] = metrics.get("best_epoch")
        row["train_seconds"] = metrics.get("train_seconds")
        for split in ("valid", "test"):
            for key, value in (metrics.get(split) or {}).items():
                row[f"{split}/{key}"] = value
    row["threads"] = status.get("threads")
    row["error"] = status.get("error") or ""
    row["run_dir"] = str(job)
    logs = [str(p) for p in sorted(job.glob("*.log"))]
    logs += [status.get("logs", {}).get(k) for k in ("stdout", "stderr") if status.get("logs", {}).get(k)]
    row["logs"] = " ".join(logs)
    return row


def markdown_cell(value: Any, float_format: str = ".4f") -> str:
    """``value`` as one Markdown table cell: empty for None, floats in ``float_format`` (NaN as
    ``nan``), pipes escaped and newlines folded."""
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else format(value, float_format)
    return str(value).replace("|", "\\|").replace("\n", " ")


def _link(path: str, base: Path) -> str:
    try:
        shown = os.path.relpath(path, base)
    except ValueError:
        shown = path
    return f"[{Path(path).name}]({shown})"


def write_sweep_summary(sweep_dir: Path, monitor: str) -> list[dict[str, Any]]:
    """Write ``sweep_summary.csv`` and ``.md`` into ``sweep_dir``; return the rows."""
    sweep_dir = Path(sweep_dir)
    jobs = sorted(job_dirs(sweep_dir), key=lambda job: _sort_key(job, sweep_dir))
    rows = [job_row(job, sweep_dir, monitor) for job in jobs]
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    # the error, run dir and logs last in the CSV, after every metric
    columns = [c for c in columns if c not in ("error", "run_dir", "logs")] + ["error", "run_dir", "logs"]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(sweep_dir / f"{SUMMARY_NAME}.csv", lambda tmp: tmp.write_text(text.getvalue(), encoding="utf-8"))

    shown = [f"valid/{monitor}"] + [f"test/{m}" for m in SHOWN_TEST_METRICS if any(f"test/{m}" in r for r in rows)]
    # the overrides every job shares go above the table, the ones that differ into it
    split = [row["overrides"].split() for row in rows]
    common = [o for o in split[0] if all(o in s for s in split)] if split else []
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    lines = [
        f"# Sweep summary: {sweep_dir}",
        "",
        f"{len(rows)} job(s): "
        + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        + f". Selection metric: valid/{monitor} (maximized). Every metric: {SUMMARY_NAME}.csv.",
        "",
        f"Overrides of every job: `{markdown_cell(' '.join(common))}`" if common else "",
        "",
        "| job | its overrides | status | " + " | ".join(shown) + " | run dir | logs |",
        "|---|---|---|" + "---|" * len(shown) + "---|---|",
    ]
    for row, overrides in zip(rows, split):
        own = " ".join(o for o in overrides if o not in common)
        status = row["status"] + (f": {markdown_cell(row['error'])[:200]}" if row["error"] else "")
        logs = " ".join(_link(p, sweep_dir) for p in row["logs"].split())
        metrics = " | ".join(markdown_cell(row.get(key)) for key in shown)
        run_dir = _link(row["run_dir"], sweep_dir)
        lines.append(f"| {row['job']} | `{markdown_cell(own)}` | {status} | {metrics} | {run_dir} | {logs} |")
    md = "\n".join(lines) + "\n"
    atomic_write(sweep_dir / f"{SUMMARY_NAME}.md", lambda tmp: tmp.write_text(md, encoding="utf-8"))
    return rows


def _monitor(config: DictConfig) -> str:
    return str(config.get("eval", {}).get("monitor", "auc"))


class SweepSummary(Callback):
    """The Hydra callback that writes the job status files and the sweep summary."""

    def __init__(self) -> None:
        self._pending: tuple[Path, str] | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._pending = (Path(str(config.hydra.sweep.dir)).absolute(), _monitor(config))
        atexit.register(self._write_pending)  # also when the sweep raises (a failed job)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._write_pending()

    def _write_pending(self) -> None:
        if self._pending is None:
            return
        sweep_dir, monitor = self._pending
        self._pending = None
        if not sweep_dir.is_dir():  # nothing was launched
            return
        try:
            rows = write_sweep_summary(sweep_dir, monitor)
        except Exception as error:  # a summary must never hide the sweep's own result
            log.warning("could not write the sweep summary into %s: %s", sweep_dir, error)
            return
        log.info("sweep summary (%d jobs): %s", len(rows), sweep_dir / f"{SUMMARY_NAME}.md")

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
            return
        failed = job_return.status.name != "COMPLETED"
        error = f"{type(job_return._return_value).__name__}: {job_return._return_value}" if failed else None
        write_job_status(Path(HydraConfig.get().runtime.output_dir), job_return.status.name, error)
