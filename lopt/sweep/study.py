"""lopt's Optuna study sweeper (``hydra/sweeper=lopt``, selected by ``+tune=…``).

Why it exists: Hydra's Optuna sweeper plugin (1.3.0, its latest release) requires optuna < 3 and
keeps a study in the driver's memory by default. This sweeper keeps what it gave (search spaces
in config, ``python run.py -m +tune=…``, each batch of trials launched through the configured
Hydra launcher: local processes or SLURM jobs) over optuna ≥ 4's ask-and-tell API, and stores
every study:

* The study lives in ``<study.dir>/<study.name>/`` (not in the time-stamped sweep directory): its
  storage (``study.db``, SQLite, by default; ``study.storage=journal``: ``study.journal``, optuna's
  journal file for a shared filesystem; or any SQLAlchemy URL), one run directory per trial named
  by its optuna number (``0/``, ``1/``, …), ``study.yaml`` and ``study_summary.{csv,md}``.
* ``study.n_trials`` is the study's total. The same command resumes an interrupted study: finished
  trials are kept, a trial left running by a dead driver is re-run with its parameters, and a
  finished study runs none. Several drivers given the same command and storage share the study
  (optuna's distributed mode), each launching its trials through its launcher.
* Every trial is sampled by TPE seeded from ``study.seed`` (null: derived from the study name)
  and the trial's number, so a resumed or shared study never repeats a start-up sample.
* A trial's objective is ``valid/<eval.monitor>`` of its ``metrics.json`` (maximized), the value
  ``run.py`` returns; a trial without it (an error, a non-finite value) is failed.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Transformer
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from lopt.io import atomic_write
from lopt.sweep.summary import _read_json, markdown_cell, write_sweep_summary

log = logging.getLogger(__name__)

#: Seconds between a driver's heartbeats for the trials it runs.
HEARTBEAT_S = 30.0
#: A running trial without a heartbeat for this long belongs to a dead driver (on another host;
#: a dead driver on this host is seen at once by its process id).
STALE_S = 4 * HEARTBEAT_S
#: Trial system attributes: the driver that runs the trial and its last heartbeat.
DRIVER_ATTR, HEARTBEAT_ATTR = "lopt:driver", "lopt:heartbeat"
#: User attribute of a trial stopped by its driver's death (not counted; its parameters re-run).
INTERRUPTED = "interrupted"
STORAGE_FILES = {"sqlite": "study.db", "journal": "study.journal"}
SUMMARY_NAME = "study_summary"
#: The file in a study's folder that names the study, its storage and metric.
STUDY_INFO = "study.yaml"


# --- the search space ---------------------------------------------------------------------------


def distribution(override: Override) -> Any:
    """The optuna distribution of a sweep override: ``interval(a, b)`` (float, or int when both
    ends are), ``tag(log, interval(a, b))`` (log scale), ``range(a, b[, step])`` (stepped),
    ``choice(…)`` (categorical; lists stay override strings such as ``[64,32]``)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    value = override.value()
    key = override.get_key_element()
    if override.is_choice_sweep() or (override.is_range_sweep() and value.shuffle):
        return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
    if override.is_range_sweep():
        # Hydra's range stops before `stop`; optuna's high is inclusive
        step, start = value.step, value.start
        last = start + step * math.floor((value.stop - start - 1e-12) / step)
        if all(isinstance(v, int) for v in (value.start, value.stop, value.step)):
            return IntDistribution(int(start), int(last), step=int(step))
        return FloatDistribution(float(start), float(last), step=float(step))
    if override.is_interval_sweep():
        log_scale = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int) and "float" not in value.tags:
            return IntDistribution(value.start, value.end, log=log_scale)
        return FloatDistribution(float(value.start), float(value.end), log=log_scale)
    raise ValueError(f"{key}: a search space entry is interval(…), range(…) or choice(…), not {override.input_line}")


def search_space(params: dict[str, str], arguments: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """({key: distribution}, fixed overrides) from ``hydra.sweeper.params`` and the command line:
    a sweep on the command line (``key=choice(…)``) joins the space, any other override is passed
    to every trial as it is."""
    parser = OverridesParser.create()
    space: dict[str, Any] = {}
    for key, value in params.items():
        override = parser.parse_override(f"{key}={value}")
        if not override.is_sweep_override():
            raise ValueError(f"hydra.sweeper.params.{key}={value} is not a range: use interval, range or choice")
        space[key] = distribution(override)
    fixed = []
    for argument, override in zip(arguments, parser.parse_overrides(list(arguments))):
        if override.is_sweep_override():
            space[override.get_key_element()] = distribution(override)
        else:
            fixed.append(argument)
    fixed = [a for a in fixed if _key(a) not in space]  # the space replaces a value given for it
    return space, fixed


def suggest(trial: Any, space: dict[str, Any]) -> dict[str, Any]:
    """Sample every parameter of ``space`` through the trial's public suggest API."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    for name, dist in space.items():
        if isinstance(dist, CategoricalDistribution):
            trial.suggest_categorical(name, dist.choices)
        elif isinstance(dist, IntDistribution):
            trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
        else:
            trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
    return dict(trial.params)


# --- names, seeds, storage ----------------------------------------------------------------------


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _value_of(arguments: Sequence[str], key: str) -> str | None:
    found = [a.split("=", 1)[1] for a in arguments if "=" in a and _key(a) == key]
    return found[-1] if found else None


def default_study_name(arguments: Sequence[str]) -> str:
    """``<experiment>-<tune>``, and a short hash of the other overrides (sorted, ``study.*``
    left out) when there are any: the same command names the same study, whatever the order of
    its overrides, its trial count or its launcher."""
    experiment = (_value_of(arguments, "experiment") or "default").replace("/", "_")
    tune = (_value_of(arguments, "tune") or "study").replace("/", "_")
    others = sorted(a for a in arguments if _key(a) not in ("experiment", "tune") and not _key(a).startswith("study."))
    name = f"{experiment}-{tune}"
    if others:
        name += "-" + hashlib.sha256("\n".join(others).encode()).hexdigest()[:8]
    return name


def _seed(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:4], "little")


def study_seed(name: str, seed: int | None) -> int:
    """The study's sampler seed: ``study.seed``, or one derived from the study's name."""
    return int(seed) if seed is not None else _seed("lopt-study", name)


def storage_url(storage: str, study_dir: Path) -> str:
    """What ``study.storage`` names: ``sqlite`` → ``sqlite:///<study dir>/study.db``, ``journal``
    → the journal file ``<study dir>/study.journal``; a URL (``postgresql://…``) as it is."""
    if storage in STORAGE_FILES:
        path = study_dir / STORAGE_FILES[storage]
        return f"sqlite:///{path}" if storage == "sqlite" else str(path)
    if "://" not in storage:
        raise ValueError(
            f"study.storage={storage!r}: use sqlite (the default), journal (a journal file on a shared "
            "filesystem) or an SQLAlchemy URL such as postgresql://user@host/db"
        )
    return storage


def open_storage(url: str) -> Any:
    """The optuna storage behind ``url`` (a journal file when it is not a URL)."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    if "://" not in url:
        return JournalStorage(JournalFileBackend(url))
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}  # many writers wait
    return optuna.storages.RDBStorage(url, engine_kwargs=engine)


def _shown_url(url: str) -> str:
    """The storage URL without its password (for logs and study.yaml)."""
    if "://" not in url or url.startswith("sqlite"):
        return url
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


# --- the driver ---------------------------------------------------------------------------------


@dataclass
class Outcome:
    """The result of one trial's job."""

    value: float | None
    error: str | None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Heartbeat:
    """A thread that records a heartbeat every :data:`HEARTBEAT_S` for the trials this driver runs."""

    def __init__(self, storage: Any, trial_ids: list[int]) -> None:
        self.storage, self.trial_ids = storage, trial_ids
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="lopt-study-heartbeat")

    def _run(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            for trial_id in self.trial_ids:
                try:
                    self.storage.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())
                except Exception as error:  # a finished trial, or a storage hiccup: next beat
                    log.debug("heartbeat of trial %d: %s", trial_id, error)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class StudySweeper(Sweeper):
    """See the module docstring. ``params``: the search space (``hydra.sweeper.params``);
    ``study``: the ``study`` node of the config; ``monitor``: ``eval.monitor``."""

    def __init__(self, params: DictConfig | None, study: DictConfig, monitor: str) -> None:
        self.params = {str(k): str(v) for k, v in (params or {}).items()}
        self.study_cfg = OmegaConf.to_container(study, resolve=True) if OmegaConf.is_config(study) else dict(study)
        self.metric = f"valid/{monitor}"
        self.monitor = monitor
        self.config: DictConfig | None = None
        self.launcher: Any = None
        self.driver = f"{socket.gethostname()}:{os.getpid()}"
        self._storage: Any = None

    # Hydra calls setup() with the sweep config, then sweep() with the command line's overrides.
    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def _check(self) -> None:
        cfg = self.study_cfg
        for key in ("n_trials", "n_jobs", "n_startup_trials"):
            value = cfg.get(key)
            if not isinstance(value, int) or isinstance(value, bool) or value < (0 if key == "n_startup_trials" else 1):
                least = 0 if key == "n_startup_trials" else 1
                raise ValueError(f"study.{key} must be an integer ≥ {least}, got {value!r}")
        if cfg["n_startup_trials"] >= cfg["n_trials"]:
            log.warning(
                "study.n_startup_trials=%d ≥ study.n_trials=%d: every trial is sampled at random (TPE never starts)",
                cfg["n_startup_trials"],
                cfg["n_trials"],
            )

    def _sampler(self, seed: int, number: int) -> Any:
        import optuna

        # one sampler per trial, seeded by the trial's number: the start-up samples of a resumed
        # study or of several drivers never repeat, and a study's samples do not depend on how
        # often it was interrupted
        return optuna.samplers.TPESampler(seed=_seed(seed, number), n_startup_trials=self.study_cfg["n_startup_trials"])

    def sweep(self, arguments: list[str]) -> None:
        import optuna

        assert self.config is not None
        self._check()
        space, fixed = search_space(self.params, arguments)
        if not space:
            raise ValueError("the study has no search space: set hydra.sweeper.params (a conf/tune/*.yaml does)")
        name = self.study_cfg.get("name") or default_study_name(arguments)
        study_dir = Path(str(self.study_cfg["dir"])).expanduser().absolute() / name
        study_dir.mkdir(parents=True, exist_ok=True)
        url = storage_url(str(self.study_cfg["storage"]), study_dir)
        storage = open_storage(url)
        seed = study_seed(name, self.study_cfg.get("seed"))
        study = optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True)
        self._record(study, study_dir, url, seed, arguments)
        log.info(
            "study %s: %s, storage %s, %d trials in total, %d at a time; watch it with: optuna-dashboard %s",
            name,
            study_dir,
            _shown_url(url),
            self.study_cfg["n_trials"],
            self.study_cfg["n_jobs"],
            _shown_url(url) if "://" in url else url,
        )
        # the launcher writes its files (multirun.yaml, .submitit/) into the study's folder
        with_study_dir = OmegaConf.merge(self.config, {"hydra": {"sweep": {"dir": str(study_dir)}}})
        self._storage = storage
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=self.hydra_context, task_function=self.task_function, config=with_study_dir
        )
        try:
            self._optimize(study, storage, study_dir, space, fixed, seed)
        finally:
            self._summarize(study, study_dir)
        n_complete = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
        if n_complete:
            best = study.best_trial
            log.info("study %s: best trial %d, %s=%.6g, %s", name, best.number, self.metric, best.value, best.params)

    def _record(self, study: Any, study_dir: Path, url: str, seed: int, arguments: Sequence[str]) -> None:
        """The study's metric and command line, in the storage (for ``rerun_best.py``) and in
        ``study.yaml``; a study stored with another metric is refused."""
        known = study.user_attrs.get("metric")
        if known is not None and known != self.metric:
            raise ValueError(
                f"study {study.study_name} in {_shown_url(url)} optimizes {known}, this command {self.metric}: "
                "use another study.name (or the same eval.monitor)"
            )
        assert self.config is not None
        hydra_overrides = [
            o
            for o in OmegaConf.to_container(self.config.hydra.overrides.hydra, resolve=False)
            if not _key(o).startswith(("hydra.sweep.", "hydra.mode"))
        ]
        if known is None:
            study.set_user_attr("metric", self.metric)
            study.set_user_attr("direction", "maximize")
            study.set_user_attr("overrides", list(arguments))
            study.set_user_attr("hydra_overrides", hydra_overrides)
        info = {
            "name": study.study_name,
            "storage": _shown_url(url),
            "metric": self.metric,
            "direction": "maximize",
            "n_trials": self.study_cfg["n_trials"],
            "seed": seed,
            "overrides": list(study.user_attrs.get("overrides", arguments)),
            "hydra_overrides": list(study.user_attrs.get("hydra_overrides", hydra_overrides)),
        }
        atomic_write(study_dir / STUDY_INFO, lambda tmp: tmp.write_text(yaml.safe_dump(info, sort_keys=False)))

    # --- the loop ---------------------------------------------------------------------------------

    def _counts(self, study: Any) -> tuple[int, int]:
        """(trials done: complete, pruned or failed, not interrupted; trials running)."""
        from optuna.trial import TrialState

        done = running = 0
        for trial in study.get_trials(deepcopy=False):
            if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
                done += 1
            elif trial.state == TrialState.FAIL and not trial.user_attrs.get(INTERRUPTED):
                done += 1
            elif trial.state == TrialState.RUNNING:
                running += 1
        return done, running

    def _optimize(
        self, study: Any, storage: Any, study_dir: Path, space: dict[str, Any], fixed: list[str], seed: int
    ) -> None:
        n_trials, n_jobs = self.study_cfg["n_trials"], self.study_cfg["n_jobs"]
        waited = False
        while True:
            self._recover_stale(study, study_dir)
            done, running = self._counts(study)
            batch = min(n_jobs, n_trials - done - running)
            if batch <= 0:
                if running == 0:
                    log.info("study %s: %d of %d trials done", study.study_name, done, n_trials)
                    return
                if not waited:
                    log.info("study %s: waiting for %d trial(s) of other drivers", study.study_name, running)
                    waited = True
                time.sleep(min(HEARTBEAT_S, 5.0))
                continue
            waited = False
            try:
                self._run_batch(study, storage, study_dir, space, fixed, seed, batch)
            finally:
                self._summarize(study, study_dir)

    def _summarize(self, study: Any, study_dir: Path) -> None:
        """study_summary.{csv,md} and the trials' sweep_summary.{csv,md} (their logs)."""
        write_study_summary(study, study_dir, self.metric)
        write_sweep_summary(study_dir, self.monitor)

    def _run_batch(
        self, study: Any, storage: Any, study_dir: Path, space: dict[str, Any], fixed: list[str], seed: int, size: int
    ) -> None:
        import optuna

        trials = []
        for _ in range(size):
            trial = study.ask()
            study.sampler = self._sampler(seed, trial.number)
            suggest(trial, space)
            storage.set_trial_system_attr(trial._trial_id, DRIVER_ATTR, self.driver)
            storage.set_trial_system_attr(trial._trial_id, HEARTBEAT_ATTR, time.time())
            trial.set_user_attr("run_dir", str(study_dir / str(trial.number)))
            trials.append(trial)
        overrides = [
            [
                *fixed,
                *(f"{key}={value}" for key, value in trial.params.items()),
                f"hydra.sweep.dir={study_dir}",
                f"hydra.sweep.subdir={trial.number}",
            ]
            for trial in trials
        ]
        errors: list[str | None] = [None] * size
        with _Heartbeat(storage, [t._trial_id for t in trials]):
            try:
                returns = self.launcher.launch(overrides, initial_job_idx=trials[0].number)
                for i, ret in enumerate(returns):
                    if ret.status.name != "COMPLETED":
                        errors[i] = f"{type(ret._return_value).__name__}: {ret._return_value}"
            except Exception as error:  # the launcher lost the batch; what the runs wrote still counts
                log.error("the launcher failed on trials %s: %s", [t.number for t in trials], error)
                errors = [f"{type(error).__name__}: {error}"] * size
        outcomes = [self._outcome(study_dir / str(t.number), err) for t, err in zip(trials, errors)]
        # every trial of a study without any result failed: a broken setup, not a bad region of
        # the space. Stop, and leave these trials to be run again once it is fixed.
        broken = all(o.value is None for o in outcomes) and not self._any_complete(study)
        for trial, outcome in zip(trials, outcomes):
            if outcome.value is not None:
                study.tell(trial, outcome.value)
                continue
            trial.set_user_attr("error", (outcome.error or "")[:1000])
            if broken:
                trial.set_user_attr(INTERRUPTED, True)
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            log.warning("trial %d failed: %s", trial.number, outcome.error)
        if broken:
            for trial in trials:
                study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
            raise RuntimeError(
                f"study {study.study_name}: every trial of the first batch failed (trial {trials[0].number}: "
                f"{outcomes[0].error}); see {study_dir / 'sweep_summary.md'} for the logs. Fix it and run "
                "the same command again: these trials are re-run, not counted"
            )

    @staticmethod
    def _any_complete(study: Any) -> bool:
        from optuna.trial import TrialState

        return bool(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))

    def _outcome(self, run_dir: Path, error: str | None) -> Outcome:
        """The trial's objective from its ``metrics.json`` (None and why, when it has none)."""
        metrics = _read_json(run_dir / "metrics.json")
        if metrics is None:
            return Outcome(None, error or f"no {run_dir / 'metrics.json'}")
        value = (metrics.get("valid") or {}).get(self.monitor)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return Outcome(None, f"{self.metric}={value!r} in {run_dir / 'metrics.json'}")
        return Outcome(float(value), None)

    def _stale(self, trial: Any) -> bool:
        """Whether a running ``trial`` was left by a dead driver. Asked between batches only, when
        none of this driver's own trials runs: one that names this driver was left by an earlier
        process of the same host and id. A driver's id is its host name and process id, and
        both recur (a reboot, a machine cloned from one image): a live process with that id on
        this host is the driver only while the trial's heartbeat is fresh."""
        driver = str(trial.system_attrs.get(DRIVER_ATTR, ""))
        if driver == self.driver:
            return True
        beat = trial.system_attrs.get(HEARTBEAT_ATTR)
        started = trial.datetime_start.timestamp() if trial.datetime_start else time.time()
        silent = time.time() - float(beat if beat is not None else started) > STALE_S
        host, _, pid = driver.rpartition(":")
        if host == socket.gethostname() and pid.isdigit():
            return silent or not _alive(int(pid))
        return silent

    def _recover_stale(self, study: Any, study_dir: Path) -> None:
        """Trials left running by a dead driver: told complete when their run finished anyway
        (its metrics.json), else failed as interrupted and their parameters queued again."""
        import optuna

        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if not self._stale(trial):
                continue
            outcome = self._outcome(study_dir / str(trial.number), None)
            try:
                if outcome.value is not None:
                    study.tell(trial.number, outcome.value)
                    log.info("trial %d of a dead driver finished: %s=%.6g", trial.number, self.metric, outcome.value)
                    continue
                self._storage.set_trial_user_attr(trial._trial_id, INTERRUPTED, True)
                study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
            except (RuntimeError, ValueError):  # another driver recovered it first
                continue
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
            log.warning("trial %d was interrupted (its driver died): its parameters run again", trial.number)


# --- the summary --------------------------------------------------------------------------------


def study_rows(study: Any, metric: str) -> list[dict[str, Any]]:
    """One row per trial: number, state, objective, parameters, run directory, best marked."""
    from optuna.trial import TrialState

    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    best = max(complete, key=lambda t: t.value).number if complete else None
    names: list[str] = []
    for trial in study.get_trials(deepcopy=False):
        names += [n for n in trial.params if n not in names]
    rows = []
    for trial in study.get_trials(deepcopy=False):
        state = trial.state.name + (" (interrupted)" if trial.user_attrs.get(INTERRUPTED) else "")
        seconds = (
            (trial.datetime_complete - trial.datetime_start).total_seconds()
            if trial.datetime_complete and trial.datetime_start
            else None
        )
        rows.append(
            {
                "trial": trial.number,
                "best": "★" if trial.number == best else "",
                "state": state,
                metric: trial.value,
                **{name: trial.params.get(name) for name in names},
                "seconds": seconds,
                "retry_of": trial.user_attrs.get("retry_of"),
                "error": trial.user_attrs.get("error", ""),
                "run_dir": trial.user_attrs.get("run_dir", ""),
            }
        )
    return rows


def write_study_summary(study: Any, study_dir: Path, metric: str) -> None:
    """``study_summary.csv`` and ``study_summary.md`` in the study's folder."""
    import csv
    import io

    rows = study_rows(study, metric)
    columns = list(rows[0]) if rows else ["trial", "best", "state", metric, "run_dir"]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(study_dir / f"{SUMMARY_NAME}.csv", lambda tmp: tmp.write_text(text.getvalue(), encoding="utf-8"))

    def cell(value: Any) -> str:
        return markdown_cell(value, ".6g")

    best = next((r for r in rows if r["best"]), None)
    states: dict[str, int] = {}
    for row in rows:
        states[row["state"]] = states.get(row["state"], 0) + 1
    lines = [
        f"# Study {study.study_name}",
        "",
        f"Objective: **{metric}** of each trial's metrics.json (maximized). "
        + ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
        + ".",
        "",
        (
            f"Best: trial {best['trial']} ★, {metric} = {cell(best[metric])}, run dir {best['run_dir']}"
            if best
            else "No trial has completed yet."
        ),
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]
    lines += ["| " + " | ".join(cell(row[c]) for c in columns) + " |" for row in rows]
    md = "\n".join(lines) + "\n"
    atomic_write(study_dir / f"{SUMMARY_NAME}.md", lambda tmp: tmp.write_text(md, encoding="utf-8"))


def load_stored_study(study_dir: Path, storage: str | None = None):
    """The optuna study of ``study_dir`` (its study.yaml names it and its storage)."""
    import optuna

    info_path = study_dir / STUDY_INFO
    if not info_path.is_file():
        raise FileNotFoundError(
            f"{info_path} is missing: give the folder of a study, <study.dir>/<study.name> (studies/… by default)"
        )
    info = yaml.safe_load(info_path.read_text(encoding="utf-8"))
    url = storage or info["storage"]
    try:
        return optuna.load_study(study_name=info["name"], storage=open_storage(url))
    except KeyError as error:
        raise FileNotFoundError(f"{url} holds no study {info['name']!r} ({info_path})") from error


def best_params(study) -> dict[str, object]:
    """The parameters of the study's best completed trial."""
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise ValueError(f"study {study.study_name} has no completed trial yet: run (or resume) it first")
    return dict(study.best_trial.params)
