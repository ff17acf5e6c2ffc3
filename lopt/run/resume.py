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
from lopt.run.validate import ConfigError, check_recorded_config

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


def resume_command(output_dir: Path) -> str:
    """The command that continues the run in ``output_dir`` (its config is reloaded from it)."""
    return f"python run.py resume=true hydra.run.dir={output_dir}"


@dataclass
class RunStart:
    """How this start relates to the output directory: ``resuming`` (a checkpoint is to be
    loaded) and the config to run (the recorded one when resuming)."""

    cfg: DictConfig
    resuming: bool
    changes: dict[str, tuple[Any, Any]] = field(default_factory=dict)


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
    job_log = f"{HydraConfig.get().job.name}.log" if HydraConfig.initialized() else None
    return sorted(p for p in output_dir.iterdir() if p.name not in _HYDRA_OWN and p.name != job_log)


def _clear(entries: list[Path]) -> None:
    for entry in entries:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink(missing_ok=True)


def load_record(output_dir: Path) -> dict[str, Any] | None:
    """The run record of ``output_dir`` (None when there is none)."""
    path = Path(output_dir) / RECORD
    if not path.is_file():
        return None
    record = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    return record if isinstance(record, dict) else None


def prepare_output_dir(cfg: DictConfig, output_dir: Path, last_checkpoint: Path) -> RunStart:
    """Decide fresh run vs resume for ``output_dir`` and return the config to run.

    Fresh: a directory holding an earlier run raises FileExistsError (``overwrite=true`` clears
    it; a SLURM restart before the first checkpoint clears it too), then the record is written.
    Resume: the recorded config is reloaded; overrides that change it raise :class:`ConfigError`
    listing them, except :data:`RESUMABLE_CHANGES`, which are applied and recorded.
    """
    output_dir = Path(output_dir)
    restarts = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    resuming = bool(cfg.resume) or (restarts > 0 and last_checkpoint.is_file())
    record = load_record(output_dir)
    overrides = _task_overrides()
    if not resuming:
        previous = _previous_contents(output_dir)
        if previous and not (cfg.get("overwrite", False) or restarts > 0):
            if record is not None:
                _restore_hydra_files(output_dir, record["config"], record.get("overrides", []))
            names = ", ".join(p.name for p in previous[:8]) + (", …" if len(previous) > 8 else "")
            raise FileExistsError(
                f"the output directory {output_dir} already holds a run ({names}). Continue it "
                f"with `{resume_command(output_dir)}`, replace it with overwrite=true, or choose "
                "another hydra.run.dir"
            )
        if previous:
            log.warning("overwrite=true: clearing %s (%s)", output_dir, ", ".join(p.name for p in previous))
            _clear(previous)
        output_dir.mkdir(parents=True, exist_ok=True)
        config = OmegaConf.to_container(cfg, resolve=False)
        _write_yaml(
            output_dir / RECORD, {"config": config, "overrides": _without_start_flags(overrides or []), "resumes": []}
        )
        return RunStart(cfg, resuming=False)

    if record is None:  # a run directory written without a record: run the config as given
        log.warning("%s has no %s: resuming with the config given on the command line", output_dir, RECORD)
        return RunStart(cfg, resuming=True)
    saved = record["config"]
    check_recorded_config(OmegaConf.create(saved), output_dir / RECORD)
    saved_overrides = list(record.get("overrides") or [])
    _restore_hydra_files(output_dir, saved, saved_overrides)  # whatever happens next
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
    if changes:
        log.info("resume changes %s", ", ".join(f"{k}={v!r}" for k, (_, v) in changes.items()))
    allowed_overrides = [o for o in new if _override_key(o) in changes]
    record["config"] = OmegaConf.to_container(resumed, resolve=False)
    record["config"]["resume"] = False
    record["overrides"] = _merge_overrides(saved_overrides, allowed_overrides)
    record.setdefault("resumes", []).append(
        {
            "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "overrides": allowed_overrides,
            "changed": {k: [old, value] for k, (old, value) in changes.items()},
        }
    )
    _write_yaml(output_dir / RECORD, record)
    _restore_hydra_files(output_dir, record["config"], record["overrides"])
    # metrics.json describes a finished run: until this segment finishes, the run is not.
    (output_dir / "metrics.json").unlink(missing_ok=True)
    return RunStart(resumed, resuming=True, changes=changes)


class CsvLogKeeper(L.Callback):
    """Keeps a resumed run's earlier ``metrics.csv`` rows (those logged up to the step the run
    resumes from): read before Lightning's CSV writer deletes the file, written back when
    training starts, so later rows are appended to them."""

    def __init__(self, loggers: list[Any]) -> None:
        self.kept: list[tuple[CSVLogger, Path, str]] = []
        for logger in loggers:
            if isinstance(logger, CSVLogger):
                path = Path(logger.log_dir) / "metrics.csv"
                if path.is_file():
                    self.kept.append((logger, path, path.read_text(encoding="utf-8")))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        import csv
        import io

        for logger, path, text in self.kept:
            rows = list(csv.DictReader(io.StringIO(text)))
            header = next(csv.reader(io.StringIO(text)), [])
            rows = [r for r in rows if not r.get("step") or int(float(r["step"])) <= trainer.global_step]
            writer = logger.experiment
            out = io.StringIO()
            dict_writer = csv.DictWriter(out, fieldnames=header)
            dict_writer.writeheader()
            dict_writer.writerows(rows)
            data = out.getvalue()
            atomic_write(path, lambda tmp, data=data: tmp.write_text(data, encoding="utf-8"))
            writer.metrics_keys = list(header)
        self.kept = []
