"""A run's record across interruptions: fresh run vs resume, the saved config, the csv log.

* :func:`prepare_output_dir` — a fresh run refuses an output directory that already holds a run
  (unless ``overwrite=true``, which clears it first); a resumed run (``resume=true``, or a SLURM
  restart that finds ``last.ckpt``) reloads the config recorded when the run started and refuses
  command-line overrides that change it, except the few in :data:`RESUMABLE_CHANGES` (recorded).
* :class:`CsvLogKeeper` — the csv log of a resumed run keeps the rows written before the
  interruption (Lightning's CSV writer deletes ``metrics.csv`` when it starts).

The record is ``<output_dir>/.hydra/run_record.yaml`` (``config``: the composed config as Hydra
saved it, unresolved; ``overrides``: the command-line overrides; ``resumes``: one entry per
resume with the overrides allowed then). Hydra rewrites ``.hydra/config.yaml`` and
``overrides.yaml`` at every start, so they are restored from the record on resume.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as L
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig, OmegaConf, open_dict

from lopt.io import atomic_write
from lopt.run.validate import ConfigError, check_recorded_config, check_targets

log = logging.getLogger("lopt")

RECORD = Path(".hydra") / "run_record.yaml"
#: Config keys a resume may change: they do not change what has been learned so far (a longer
#: or shorter schedule, evaluation memory, checkpoint frequency, where the split cache lives).
RESUMABLE_CHANGES: tuple[str, ...] = (
    "trainer.max_epochs",
    "data.eval_batch_users",
    "checkpoint.every_n_train_steps",
    "checkpoint.keep",
    "paths.cache_dir",
    "data.cache",
)
#: Keys never compared: how this start was asked for, and Hydra's own settings.
_NOT_COMPARED = ("resume", "overwrite", "hydra", "paths.output_dir")
#: What Hydra itself writes into the output directory before the run starts.
_HYDRA_OWN = (".hydra",)
#: Where a resume keeps the finished run's metrics.json until the resumed run writes its own.
METRICS_ASIDE = ".metrics.json.before-resume"


def resume_command(output_dir: Path) -> str:
    """The command that continues the run in ``output_dir`` (its config is reloaded from it)."""
    return f"python run.py resume=true hydra.run.dir={output_dir}"


@dataclass
class RunStart:
    """How this start relates to the output directory: ``resuming`` (a checkpoint is to be
    loaded) and the config to run (the recorded one when resuming).

    A resume writes nothing until :meth:`commit` (called once the checkpoint loads and the data
    matches the record): it then records the resume and moves ``metrics.json`` aside;
    :meth:`finish` drops the set-aside file once a new ``metrics.json`` is written, and
    :meth:`roll_back` puts it back when the resume fails or is interrupted first."""

    cfg: DictConfig
    resuming: bool
    changes: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    output_dir: Path | None = None
    record: dict[str, Any] | None = None
    checkpoint: Path | None = None
    #: The checkpoint's global step (where the csv log and the trajectories are cut).
    resume_step: int | None = None
    #: Set when a resume finds nothing left to do: what to tell the user (nothing is written).
    nothing_to_do: str | None = None
    _aside: Path | None = None

    def commit(self) -> None:
        """Write what a resume changes in the run directory (once every check has passed)."""
        if not self.resuming or self.output_dir is None:
            return
        output_dir = self.output_dir
        if self.changes:
            log.info("resume changes %s", ", ".join(f"{k}={v!r}" for k, (_, v) in self.changes.items()))
        if self.record is not None:
            _write_yaml(output_dir / RECORD, self.record)
            _restore_hydra_files(output_dir, self.record["config"], self.record["overrides"])
        if self.checkpoint is not None:  # temp files of interrupted checkpoint writes
            for stale in self.checkpoint.parent.glob(".*.ckpt.*.tmp"):
                stale.unlink(missing_ok=True)
        # metrics.json describes a finished run: until this segment finishes, the run is not.
        metrics = output_dir / "metrics.json"
        if metrics.is_file():
            aside = output_dir / METRICS_ASIDE
            os.replace(metrics, aside)
            self._aside = aside

    def finish(self) -> None:
        """The resumed run wrote its new metrics.json: the set-aside one is dropped."""
        if self._aside is not None:
            self._aside.unlink(missing_ok=True)
            self._aside = None

    def roll_back(self) -> None:
        """The resume failed before writing a new metrics.json: the finished run's is put back."""
        if self._aside is None or self.output_dir is None:
            return
        metrics = self.output_dir / "metrics.json"
        if not metrics.exists():
            os.replace(self._aside, metrics)
            log.warning("restored %s (the resume did not finish)", metrics)
        self._aside = None


def _leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_leaves(value, f"{prefix}{key}."))
        if not node and prefix:
            out[prefix[:-1]] = {}
        return out
    return {prefix[:-1]: node}


def _differences(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{dotted key: (old, new)} of the leaves that differ (missing = None), ignoring _NOT_COMPARED."""
    a, b = _leaves(old), _leaves(new)
    diff = {}
    for key in sorted(set(a) | set(b)):
        if any(key == skip or key.startswith(skip + ".") for skip in _NOT_COMPARED):
            continue
        if a.get(key) != b.get(key):
            diff[key] = (a.get(key), b.get(key))
    return diff


def _task_overrides() -> list[str] | None:
    """This process's command-line overrides (None outside a Hydra app, where no composition of
    the recorded overrides is possible either)."""
    if not (HydraConfig.initialized() and GlobalHydra.instance().is_initialized()):
        return None
    return list(HydraConfig.get().overrides.task)


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _without_start_flags(overrides: list[str]) -> list[str]:
    return [o for o in overrides if _override_key(o) not in ("resume", "overwrite")]


def _merge_overrides(base: list[str], new: list[str]) -> list[str]:
    """``base`` with every override of ``new`` replacing one of the same key (or appended)."""
    new_keys = {_override_key(o) for o in new}
    return [o for o in base if _override_key(o) not in new_keys] + list(new)


def _composed(overrides: list[str]) -> dict[str, Any]:
    from hydra import compose

    cfg = compose(config_name=HydraConfig.get().job.config_name, overrides=overrides)
    return OmegaConf.to_container(cfg, resolve=False)


def _write_yaml(path: Path, payload: Any) -> None:
    text = OmegaConf.to_yaml(OmegaConf.create(payload))
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _restore_hydra_files(output_dir: Path, config: dict[str, Any], overrides: list[str]) -> None:
    """Put the run's own config/overrides back where Hydra wrote this start's."""
    hydra_dir = output_dir / ".hydra"
    if (hydra_dir / "config.yaml").exists():
        _write_yaml(hydra_dir / "config.yaml", config)
    if (hydra_dir / "overrides.yaml").exists():
        _write_yaml(hydra_dir / "overrides.yaml", overrides)


def _previous_contents(output_dir: Path) -> list[Path]:
    """Entries of ``output_dir`` left by an earlier run (not Hydra's own files of this start)."""
    if not output_dir.is_dir():
        return []
    job_log = _job_log_name()
    return sorted(p for p in output_dir.iterdir() if p.name not in _HYDRA_OWN and p.name != job_log)


def _job_log_name() -> str | None:
    return f"{HydraConfig.get().job.name}.log" if HydraConfig.initialized() else None


#: Entries of a run directory that lopt (or a logger it configures) writes: the only ones
#: ``overwrite=true`` deletes. Anything else in the directory is the user's and is kept.
LOPT_ENTRIES = frozenset(
    {
        "metrics.json",
        METRICS_ASIDE,
        "per_user_test.parquet",
        "lambda.npz",
        "lambda_trajectories.parquet",
        "lambda_snapshots",
        "recommendations.parquet",
        "checkpoints",
        "csv",
        "wandb",
        "refit",
        "lightning_logs",
        "lopt.log",
        "run.log",
    }
)


def lopt_entries(output_dir: Path, entries: list[Path]) -> tuple[list[Path], list[Path]]:
    """(entries lopt wrote, foreign entries) among ``entries`` of ``output_dir``."""
    job_log = _job_log_name()
    own = [p for p in entries if p.name in LOPT_ENTRIES or p.name == job_log]
    return own, [p for p in entries if p not in own]


def _listed(entries: list[Path], limit: int = 8) -> str:
    return ", ".join(p.name + ("/" if p.is_dir() and not p.is_symlink() else "") for p in entries[:limit]) + (
        ", …" if len(entries) > limit else ""
    )


def _clear(entries: list[Path]) -> None:
    for entry in entries:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink(missing_ok=True)


def load_record(output_dir: Path) -> dict[str, Any] | None:
    """The run record of ``output_dir`` (None when there is none); ConfigError for a record that
    is not plain YAML data (e.g. a ``!!python`` tag: the loader never builds objects)."""
    path = Path(output_dir) / RECORD
    if not path.is_file():
        return None
    try:
        record = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception as err:  # a YAML error, an unsupported tag: never constructed
        raise ConfigError(f"{path} is not a readable run record ({type(err).__name__}: {err})") from None
    return record if isinstance(record, dict) else None


def record_split_fingerprint(output_dir: Path, fingerprint: str) -> None:
    """Store the prepared split's fingerprint in the run record (what a resume checks its data against)."""
    record = load_record(output_dir)
    if record is None or record.get("split_fingerprint") == fingerprint:
        return
    record["split_fingerprint"] = fingerprint
    _write_yaml(Path(output_dir) / RECORD, record)


def _fresh_start(cfg: DictConfig, output_dir: Path, record: dict[str, Any] | None, restarts: int) -> RunStart:
    """A fresh run into ``output_dir``: refuse a directory holding a run (or anything else) unless
    ``overwrite=true`` and it is lopt's own run, whose entries alone are then cleared."""
    previous = _previous_contents(output_dir)
    overwrite = bool(cfg.get("overwrite", False)) or restarts > 0
    if previous:
        own, foreign = lopt_entries(output_dir, previous)
        if record is None:
            raise FileExistsError(
                f"the output directory {output_dir} is not an empty folder and holds no lopt run "
                f"(no {RECORD}): {_listed(previous)}. lopt deletes nothing it did not write: "
                "choose another hydra.run.dir (or empty that folder yourself)"
            )
        if not overwrite:
            _restore_hydra_files(output_dir, record["config"], record.get("overrides", []))
            raise FileExistsError(
                f"the output directory {output_dir} already holds a run ({_listed(previous)}). Continue it "
                f"with `{resume_command(output_dir)}`, replace it with overwrite=true, or choose "
                "another hydra.run.dir"
            )
        if foreign:
            log.warning("overwrite=true keeps what lopt did not write in %s: %s", output_dir, _listed(foreign, 20))
        if own:
            log.warning("overwrite=true: clearing the run in %s (%s)", output_dir, _listed(own, 20))
            _clear(own)
    output_dir.mkdir(parents=True, exist_ok=True)
    config = OmegaConf.to_container(cfg, resolve=False)
    overrides = _task_overrides()
    _write_yaml(
        output_dir / RECORD, {"config": config, "overrides": _without_start_flags(overrides or []), "resumes": []}
    )
    return RunStart(cfg, resuming=False, output_dir=output_dir)


def prepare_output_dir(cfg: DictConfig, output_dir: Path, last_checkpoint: Path) -> RunStart:
    """Decide fresh run vs resume for ``output_dir`` and return the config to run.

    Fresh: a directory holding an earlier run raises FileExistsError (``overwrite=true`` clears
    lopt's entries of it; a SLURM restart before the first checkpoint too); a directory holding
    anything but a lopt run is refused even with ``overwrite=true``. Then the record is written.
    Resume: the recorded config is reloaded and its ``_target_``s checked; overrides that change
    it raise :class:`ConfigError` listing them, except :data:`RESUMABLE_CHANGES`. Nothing of the
    run is written: :meth:`RunStart.commit` writes the new record once every check has passed.
    """
    output_dir = Path(output_dir)
    restarts = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    resuming = bool(cfg.resume) or (restarts > 0 and last_checkpoint.is_file())
    record = load_record(output_dir)
    if not resuming:
        return _fresh_start(cfg, output_dir, record, restarts)

    overrides = _task_overrides()
    if record is None:  # a run directory written without a record: run the config as given
        if not last_checkpoint.is_file():
            raise FileNotFoundError(
                f"resume=true but {output_dir} holds no lopt run (no {RECORD}, no {last_checkpoint}). "
                "Point hydra.run.dir at the output directory of the run to continue, or start a new run "
                "without resume=true"
            )
        log.warning("%s has no %s: resuming with the config given on the command line", output_dir, RECORD)
        return RunStart(cfg, resuming=True, output_dir=output_dir)
    saved = record.get("config")
    if not isinstance(saved, dict):
        raise ConfigError(f"{output_dir / RECORD} holds no recorded config (its 'config' entry is missing)")
    check_targets(saved, output_dir / RECORD)
    check_recorded_config(OmegaConf.create(saved), output_dir / RECORD)
    saved_overrides = list(record.get("overrides") or [])
    _restore_hydra_files(output_dir, saved, saved_overrides)  # put back what Hydra rewrote at this start
    if overrides is not None:
        new = _without_start_flags(overrides)
        merged = _merge_overrides(saved_overrides, new)
        changes = _differences(_composed(saved_overrides), _composed(merged))
    else:
        new, merged = [], saved_overrides
        changes = _differences(saved, OmegaConf.to_container(cfg, resolve=False))
    refused = {k: v for k, v in changes.items() if k not in RESUMABLE_CHANGES}
    if refused:
        listed = "\n  ".join(f"{k}: {old!r} (recorded) → {value!r}" for k, (old, value) in refused.items())
        raise ConfigError(
            f"resume=true continues the run recorded in {output_dir / RECORD}; these overrides "
            f"change its config:\n  {listed}\nDrop them (the recorded config is reloaded, no need "
            f"to repeat the original overrides), or start a new run. A resume may change only "
            f"{', '.join(RESUMABLE_CHANGES)}."
        )
    resumed = OmegaConf.create(saved)
    with open_dict(resumed):
        for key, (_, value) in changes.items():
            OmegaConf.update(resumed, key, value, force_add=True)
        resumed.resume = True
        if overrides is None:  # outside Hydra the caller's paths are the ones to use
            resumed.paths = cfg.paths
    allowed_overrides = [o for o in new if _override_key(o) in changes]
    new_record = dict(record)
    new_record["config"] = OmegaConf.to_container(resumed, resolve=False)
    new_record["config"]["resume"] = False
    new_record["overrides"] = _merge_overrides(saved_overrides, allowed_overrides)
    new_record["resumes"] = [
        *list(record.get("resumes") or []),
        {
            "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "overrides": allowed_overrides,
            "changed": {k: [old, value] for k, (old, value) in changes.items()},
        },
    ]
    return RunStart(resumed, resuming=True, changes=changes, output_dir=output_dir, record=new_record)


class CsvLogKeeper(L.Callback):
    """Keeps a resumed run's earlier ``metrics.csv`` rows (those logged up to the step the run
    resumes from): read before Lightning's CSV writer deletes the file, written back when the
    fit starts (also when nothing is left to train), so later rows are appended to them. A row
    torn by a crash or a full disk (a wrong number of fields, or no line end) is dropped."""

    def __init__(self, loggers: list[Any], resume_step: int | None = None) -> None:
        self.resume_step = resume_step
        self.kept: list[tuple[CSVLogger, Path, str]] = []
        for logger in loggers:
            if isinstance(logger, CSVLogger):
                path = Path(logger.log_dir) / "metrics.csv"
                if path.is_file():
                    self.kept.append((logger, path, path.read_text(encoding="utf-8", errors="replace")))

    @staticmethod
    def kept_rows(text: str, step: int) -> tuple[list[str], list[dict[str, str]]]:
        """(header, complete rows logged at steps ≤ ``step``) of a metrics.csv's ``text``."""
        import csv
        import io

        lines = text.splitlines(keepends=True)
        if lines and not lines[-1].endswith("\n"):
            lines = lines[:-1]  # the last row was cut mid-write
        reader = csv.reader(io.StringIO("".join(lines)))
        header = next(reader, [])
        rows = []
        for fields in reader:
            if len(fields) != len(header):
                continue
            row = dict(zip(header, fields, strict=True))
            try:
                if row.get("step") and int(float(row["step"])) > step:
                    continue
            except ValueError:
                continue
            rows.append(row)
        return header, rows

    def _restore(self, step: int) -> None:
        import csv
        import io

        for logger, path, text in self.kept:
            header, rows = self.kept_rows(text, step)
            writer = logger.experiment  # creating the writer is what deletes the file
            out = io.StringIO()
            dict_writer = csv.DictWriter(out, fieldnames=header)
            dict_writer.writeheader()
            dict_writer.writerows(rows)
            data = out.getvalue()
            atomic_write(path, lambda tmp, data=data: tmp.write_text(data, encoding="utf-8"))
            writer.metrics_keys = list(header)
        self.kept = []

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore(self._resume_step(trainer))

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if self.kept:  # the fit failed before it started: the rows go back as they were
            self._restore(self._resume_step(trainer))

    def _resume_step(self, trainer: L.Trainer) -> int:
        """The step the fit resumes from (the checkpoint's: Lightning restores the loops only
        after ``on_fit_start``)."""
        return trainer.global_step if self.resume_step is None else self.resume_step
