"""Run a whole fair study in resumable chunks (docs/recipes.md, "The whole fair study, in resumable chunks").

    python experiments/study.py PLAN.yaml --plan                  # the chunks and the CPU estimate
    python experiments/study.py PLAN.yaml --measure [--epochs 3]  # time an epoch of every method
    python experiments/study.py PLAN.yaml [--max-chunks N] [--hours H] [--jobs N] [--commit] [--scratch DIR]
        [--code DIR]

PLAN.yaml (e.g. ``experiments/results/ml100k/study.yaml``) names the dataset's experiments, the
methods, the blocks, the seeds, the tuning trials, the epoch budget, the data, and overrides for
every run (``overrides``) and for the tuning trials only (``tune_overrides``); its folder is the
study's results folder. The study is a list of chunks, run in order:

* ``tune/<split>/<block>/<method>`` (blocks ``paper`` and ``inner``): one tuning study
  (``run.py -m +experiment=<prefix>_<method> +tune=<tune> control=…``) with its own sampler
  seed; its compact trial records and ``selection.json`` (best params) go to
  ``studies/<split>/<block>/<method>/``;
* ``runs/<split>/<block>/<method>``: the selected configuration re-run for every seed under the
  block's control (``paper``: none; ``inner``: control=inner with the inner selection;
  ``refit-final`` / ``refit-trajectory``: control=refit with the paper selection); compact records
  to ``runs/<split>/<block>/<method-label>/seed<seed>/``. Each seed is a one-job multirun of its
  own, and the fits of consecutive runs chunks share one pool, ``--jobs`` at a time (default: the
  cores, each fit's threads the cores shared among them unless OMP_NUM_THREADS is set; every fit
  at once where a cluster's launcher runs them), so the cores stay busy across chunks; a chunk is
  finished as its last fit ends;
* ``borrow/<split>/refit-trajectory/<method>``: a method without a Λ-step is not run again for
  ``refit-trajectory`` (``control.lambda`` does not reach it): its refit-final records are copied
  with ``control.borrowed: true`` and ``borrowed_from``. Nothing else is ever borrowed, and only
  when the source record's ``control.serves`` names the block.

Every chunk ends with its records and ``chunks/<chunk>.json`` (what ran, the code commit, when it
started and finished, its wall seconds: a suspended tuning chunk's runs summed, and of those its
``earlier_seconds``; pooled runs chunks overlap) in the results folder; ``--commit`` commits them
(``git add`` + ``git commit`` in the repository holding the results folder). A chunk whose
``chunks/<chunk>.json`` exists is done, so an interrupted study, or one resumed from a fresh clone
of what was committed, carries on with the first chunk not done. Full runs (checkpoints, logs) go
to ``--scratch`` (default ``data/study/<dataset>`` in the ``--code`` checkout), never committed.
``--code DIR`` runs every fit with ``DIR/run.py`` (a clone of the commit the whole study runs on,
while this checkout moves on) and names DIR's commit in the records; run the driver with DIR's
Python, whose packages the fits use.

A stop (SIGTERM, SIGINT, SIGHUP, or ``--hours`` of wall time spent: a batch job's or a session's
limit) suspends the study: the running commands and their local launcher's jobs (a process
group each) get SIGINT, then SIGKILL after 15 s; a tuning chunk writes its stored study (the
storage and, of each trial, its metrics.json, config and log: no weights) to
``carry/<chunk>.tar.gz`` in the results folder, committed with ``--commit``. The same command
resumes it, from the scratch folder on the same machine or from the carry in a fresh clone (the
carry replaces a scratch study only when it has more trials done, as the sweeper counts them):
finished trials are kept, the ones the stop cut short run again with their parameters, and the
chunk's own commit removes the carry. A seed-runs chunk the stop cut short runs again whole. A
stop while records are collected or committed takes effect after them; a chunk whose commit was lost anyway
is committed by the next run with ``--commit``. A signal the driver was started to ignore
(``nohup``: SIGHUP) stays ignored. The chunk's seconds sum its suspended runs (a run ended by an
error or SIGKILL is not counted). Jobs of the SLURM launcher are not in the driver's process
group: cancel them (``scancel``), or let them end before resuming on the machine holding the
scratch folder, whose study keeps the ones that wrote their metrics.json.
Exit status: 0 done (or ``--max-chunks`` reached), 1 an error in a chunk, 2 a bad plan or option,
3 suspended.

``--measure`` runs every method of the plan for 1 epoch (to fill the caches), ``--epochs`` epochs
and twice as many on the plan's data (one seed, the paper block) and writes the seconds per epoch
(training and the per-epoch validation; the difference of the last two runs, so that one-off
start-up costs drop out) to
``epoch_seconds.json`` in the results folder; ``--plan`` multiplies them by the runs and epochs of
every chunk (the epoch cap, an expected count: ``plan.expected_epochs``, and the mean epochs of
the tuning trials committed so far), gives the wall time of the chunks done (chunks that ran at
once counted once), and projects the wall time of the rest at their pace (wall time over CPU
estimate of the tuning and of the seed-runs chunks done).
"""

from __future__ import annotations

import argparse
import calendar
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lopt.io import atomic_write_json
from lopt.sweep.local import THREAD_VARIABLES, machine_cores
from lopt.sweep.study import (
    DRIVER_ATTR,
    HEARTBEAT_ATTR,
    INTERRUPTED,
    STORAGE_FILES,
    best_params,
    load_stored_study,
    storage_url,
    study_rows,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "experiments"))
from collect_records import collect  # noqa: E402

TIMINGS_FILE = "epoch_seconds.json"
SELECTION_FILE = "selection.json"
#: Every trial of a tuning study, finished or not (write_trials), beside its selection.
TRIALS_FILE = "trials.csv"
#: The folders of an absolute path (a machine's), shortened in a trial's error message.
ABSOLUTE_DIR = re.compile(r"(?<![\w.…])/(?:[^\s/'\"]+/)+")
CHUNK_DIR = "chunks"
#: Where a tuning chunk stopped part-way keeps its stored study until it resumes (see suspend).
CARRY_DIR = "carry"
#: What a carry keeps of each trial's run folder: its result (the sweeper's objective, the record),
#: its config and its log.
CARRY_TRIAL_FILES = {"metrics.json", ".hydra", "run.log"}
#: Seconds a stopped chunk's processes get to end after SIGINT, before SIGKILL (a batch system's
#: own grace, e.g. SLURM's KillWait of 30 s, must leave the driver time to write the carry).
STOP_GRACE_S = 15.0
#: Seconds between checks of the running commands (and of a stop asked for).
POLL_S = 0.5
#: How --plan names the kinds of chunks.
KIND_NAMES = {"tune": "tuning", "runs": "seed runs", "borrow": "borrowed"}
#: The launchers whose jobs run on the driver's machine (conf/hydra/launcher).
LOCAL_LAUNCHERS = {"local", "basic"}
#: The wall seconds a suspended tuning chunk has spent, in its stored study's folder (and carry).
SECONDS_FILE = "chunk_seconds.json"
#: Exit status of a suspended study (run the same command again to resume).
SUSPENDED_EXIT = 3
#: The blocks of a study and the control each runs under.
BLOCK_CONTROLS = {
    "paper": ["control=none"],
    "inner": ["control=inner"],
    "refit-final": ["control=refit", "control.lambda=final"],
    "refit-trajectory": ["control=refit", "control.lambda=trajectory"],
}
#: The block whose tuning study a block's runs take their selection from.
SELECTED_IN = {"paper": "paper", "inner": "inner", "refit-final": "paper", "refit-trajectory": "paper"}
#: The blocks tuned by a study of their own (refit reuses the paper selections).
TUNED_BLOCKS = ("paper", "inner")
#: The keys of a study plan (PLAN.yaml).
PLAN_KEYS = {
    "dataset",
    "experiment_prefix",
    "methods",
    "blocks",
    "seeds",
    "trials",
    "budget",
    "splits",
    "overrides",
    "tune_overrides",
    "expected_epochs",
    "selections",
}


@dataclass(frozen=True)
class Method:
    """One method of the plan: its name (the experiment ``<experiment_prefix>_<name>``), tune
    config, whether it has a Λ-step, and overrides of its own."""

    name: str
    tune: str | None
    learns_lambda: bool
    overrides: tuple[str, ...] = ()


@dataclass
class Plan:
    """A study plan (PLAN.yaml), checked."""

    path: Path
    dataset: str
    experiment_prefix: str | None
    methods: list[Method]
    blocks: list[str]
    seeds: list[int]
    trials: int
    budget: dict[str, Any]
    splits: dict[str, list[str]]
    overrides: list[str]
    expected_epochs: int
    selections: dict[str, dict[str, Any]] = field(default_factory=dict)
    tune_overrides: list[str] = field(default_factory=list)
    split_methods: dict[str, list[str]] = field(default_factory=dict)  # split → its methods (absent: all)
    code: Path = REPO_ROOT  # the checkout whose run.py runs every fit (--code), not a plan key

    def methods_of(self, split: str) -> list[Method]:
        """The methods run on ``split`` (every method unless the split names its own)."""
        names = self.split_methods.get(split)
        return [m for m in self.methods if names is None or m.name in names]

    @property
    def results(self) -> Path:
        return self.path.parent

    def method(self, name: str) -> Method:
        return next(m for m in self.methods if m.name == name)


def load_plan(path: Path) -> Plan:
    """The checked plan of ``path``; an unknown key or block, or a method without a tune config
    and without a fixed selection, is an error naming it. Its path is made absolute: the results
    folder is where git runs, so the paths given to git must not be relative to the caller's."""
    path = path.resolve()
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a study plan is a mapping (see experiments/results/ml100k/study.yaml)")
    unknown = set(raw) - PLAN_KEYS
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}; the plan keys are {sorted(PLAN_KEYS)}")
    blocks = list(raw.get("blocks") or BLOCK_CONTROLS)
    bad = [b for b in blocks if b not in BLOCK_CONTROLS]
    if bad:
        raise ValueError(f"{path}: blocks {bad} unknown; choose from {list(BLOCK_CONTROLS)}")
    selections = dict(raw.get("selections") or {})
    methods = []
    for name, spec in (raw.get("methods") or {}).items():
        spec = spec or {}
        unknown_spec = set(spec) - {"tune", "learns_lambda", "overrides"}
        if unknown_spec:
            raise ValueError(f"{path}: methods.{name} has unknown keys {sorted(unknown_spec)}")
        method = Method(
            str(name), spec.get("tune"), bool(spec.get("learns_lambda", False)), tuple(spec.get("overrides") or ())
        )
        if method.tune is None and str(name) not in selections:
            raise ValueError(
                f"{path}: method {name} has neither `tune` (a conf/tune config) nor a fixed `selections` entry"
            )
        methods.append(method)
    if not methods:
        raise ValueError(f"{path}: `methods` is empty")
    budget = dict(raw.get("budget") or {})
    if set(budget) != {"max_epochs", "patience", "min_delta"}:
        raise ValueError(f"{path}: budget needs exactly max_epochs, patience and min_delta (conf/budget/equal.yaml)")
    splits, split_methods = _load_splits(path, raw.get("splits") or {"temporal": []}, [m.name for m in methods])
    seeds = [int(s) for s in raw.get("seeds") or []]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"{path}: `seeds` must list distinct seeds, at least one (got {raw.get('seeds')!r})")
    return Plan(
        path=path,
        dataset=str(raw["dataset"]),
        experiment_prefix=raw.get("experiment_prefix"),
        methods=methods,
        blocks=blocks,
        seeds=seeds,
        trials=int(raw["trials"]),
        budget=budget,
        splits=splits,
        split_methods=split_methods,
        overrides=list(raw.get("overrides") or []),
        tune_overrides=list(raw.get("tune_overrides") or []),
        expected_epochs=int(raw.get("expected_epochs") or budget["max_epochs"]),
        selections=selections,
    )


def _load_splits(
    path: Path, raw: dict[str, Any], methods: list[str]
) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """``splits``: name → the overrides selecting the split, or → {overrides: […], methods: […]} for
    a split that runs only some methods. Returns (overrides per split, methods per such split)."""
    overrides: dict[str, list[str]] = {}
    chosen: dict[str, list[str]] = {}
    for name, spec in raw.items():
        name = str(name)
        if isinstance(spec, dict):
            unknown = set(spec) - {"overrides", "methods"}
            if unknown:
                raise ValueError(f"{path}: splits.{name} has unknown keys {sorted(unknown)} (overrides, methods)")
            names = [str(m) for m in spec.get("methods") or methods]
            missing = [m for m in names if m not in methods]
            if missing:
                raise ValueError(f"{path}: splits.{name}.methods names {missing}, which `methods` does not define")
            chosen[name] = names
            spec = spec.get("overrides")
        overrides[name] = list(spec or [])
    return overrides, chosen


@dataclass(frozen=True)
class Chunk:
    """One unit of the study that ends with committed records."""

    kind: str  # tune | runs | borrow
    split: str
    block: str
    method: str

    @property
    def name(self) -> str:
        return f"{self.kind}/{self.split}/{self.block}/{self.method}"

    @property
    def marker(self) -> str:
        return f"{CHUNK_DIR}/{self.name.replace('/', '--')}.json"

    @property
    def carry(self) -> str:
        """The committed stored study of this tuning chunk while it is suspended."""
        return f"{CARRY_DIR}/{self.name.replace('/', '--')}.tar.gz"


def chunks(plan: Plan) -> list[Chunk]:
    """The chunks of ``plan`` in the order they run (a block's runs after its selection's study)."""
    out: list[Chunk] = []
    for split in plan.splits:
        for block in TUNED_BLOCKS:
            if not any(SELECTED_IN[b] == block for b in plan.blocks):
                continue
            out += [
                Chunk("tune", split, block, m.name) for m in plan.methods_of(split) if m.name not in plan.selections
            ]
        for block in plan.blocks:
            for m in plan.methods_of(split):
                borrowed = block == "refit-trajectory" and not m.learns_lambda and "refit-final" in plan.blocks
                out.append(Chunk("borrow" if borrowed else "runs", split, block, m.name))
    return out


def study_seed(chunk: Chunk) -> int:
    """The tuning study's own sampler seed: a hash of its name (every study gets another stream)."""
    return zlib.crc32(chunk.name.encode()) % 2**31


def base_overrides(plan: Plan, chunk: Chunk) -> tuple[list[str], list[str]]:
    """(the experiment, the plan's overrides and the split's; the budget's overrides)."""
    b = plan.budget
    experiment = [f"+experiment={plan.experiment_prefix}_{chunk.method}"] if plan.experiment_prefix else []
    return [
        *experiment,
        *plan.method(chunk.method).overrides,
        *plan.overrides,
        *plan.splits[chunk.split],
    ], [
        f"budget.max_epochs={b['max_epochs']}",
        f"budget.patience={b['patience']}",
        f"budget.min_delta={b['min_delta']}",
    ]


def tune_command(plan: Plan, chunk: Chunk, sweep_dir: Path) -> list[str]:
    head, budget = base_overrides(plan, chunk)
    return [
        sys.executable,
        str(plan.code / "run.py"),
        "-m",
        *head,
        f"+tune={plan.method(chunk.method).tune}",
        *BLOCK_CONTROLS[chunk.block],
        *budget,
        *plan.tune_overrides,
        f"study.n_trials={plan.trials}",
        f"study.seed={study_seed(chunk)}",
        f"study.dir={sweep_dir.parent}",
        f"study.name={sweep_dir.name}",
    ]


def selection(plan: Plan, chunk: Chunk) -> dict[str, Any]:
    """The hyper-parameters a runs chunk uses: the plan's fixed selection, or the selection.json
    committed by its tuning chunk."""
    if chunk.method in plan.selections:
        return dict(plan.selections[chunk.method])
    path = plan.results / "studies" / chunk.split / SELECTED_IN[chunk.block] / chunk.method / SELECTION_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: its tuning chunk has not run")
    return dict(json.loads(path.read_text(encoding="utf-8"))["best_params"])


def runs_command(plan: Plan, chunk: Chunk, sweep_dir: Path, seeds: Sequence[int] | None = None) -> list[str]:
    """The multirun of ``chunk``'s selected configuration over ``seeds`` (default: the plan's)."""
    head, budget = base_overrides(plan, chunk)
    params = [f"{k}={v}" for k, v in sorted(selection(plan, chunk).items())]
    return [
        sys.executable,
        str(plan.code / "run.py"),
        "-m",
        *head,
        "+budget=equal",
        *BLOCK_CONTROLS[chunk.block],
        *budget,
        *params,
        f"seed={','.join(map(str, plan.seeds if seeds is None else seeds))}",
        f"hydra.sweep.dir={sweep_dir}",
    ]


class Suspended(Exception):
    """The study was asked to stop (SIGTERM, SIGINT, SIGHUP, or ``--hours`` ran out) while a
    chunk's command ran; ``chunks``: the chunks it cut short, where more than one ran."""

    chunks: Sequence[Chunk] = ()


#: The stop asked for: the signal's name, None while none was.
_STOP: dict[str, str | None] = {"asked": None}


def _ask_stop(signum: int, frame: Any) -> None:
    """Record the stop; the command being waited for is stopped by :func:`_run`, and anything
    else (collecting, committing records) finishes before the next chunk is refused."""
    _STOP["asked"] = signal.Signals(signum).name


def _run(command: Sequence[str], log: Path) -> None:
    """Run ``command`` (``python <checkout>/run.py …``) as :func:`_run_pool` runs one."""
    _run_pool([(command, log)], jobs=1)


def _run_pool(
    commands: Sequence[tuple[Sequence[str], Path]],
    jobs: int,
    on_exit: Callable[[int], None] = lambda i: None,
    env: dict[str, str] | None = None,
    on_start: Callable[[int], None] = lambda i: None,
) -> None:
    """Run ``commands`` (``python <checkout>/run.py …``, the log its output goes to), ``jobs`` at a
    time in the order given, each from its checkout in a process group of its own (a stop sent to
    the driver's group does not reach it half-way), with ``env`` added to the environment;
    ``on_start(i)`` runs as command ``i`` starts, ``on_exit(i)`` as it ends with status 0.

    A command that fails stops the others and raises RuntimeError naming its log; a stop asked for
    stops every running group (the launcher's local jobs included) and raises :class:`Suspended`,
    starting nothing more. A stop asked while ``on_exit`` runs (collecting, committing) takes
    effect after it; an exception from ``on_exit`` stops the others too."""
    pending = list(enumerate(commands))[::-1]
    running: dict[int, subprocess.Popen] = {}
    try:
        while pending or running:
            exited = [i for i, child in running.items() if child.poll() is not None]
            ended = {i: running.pop(i) for i in exited}
            for i in sorted(i for i, child in ended.items() if child.returncode == 0):
                on_exit(i)
            failed = sorted(i for i, child in ended.items() if child.returncode != 0)
            if failed:
                code = ended[failed[0]].returncode
                raise RuntimeError(f"the command exited with {code}; its output is in {commands[failed[0]][1]}")
            if _STOP["asked"]:
                raise Suspended(_STOP["asked"])
            while pending and len(running) < jobs:
                i, (command, log) = pending.pop()
                running[i] = _start(command, log, env)
                on_start(i)
            if not ended:
                time.sleep(POLL_S)
    except BaseException:
        _stop_groups(list(running.values()))
        raise


def _start(command: Sequence[str], log: Path, env: dict[str, str] | None) -> subprocess.Popen:
    """``command`` started from its checkout, leading a process group, output to ``log``, with
    SIGINT at its default: a driver started in the background ignores SIGINT and an ignored signal
    is inherited, while a handled one is reset by exec; so the driver handles it while it starts
    the command, and the stop (:func:`_stop_groups`) reaches every process of the group."""
    log.parent.mkdir(parents=True, exist_ok=True)
    print("  $ " + " ".join(command[2:]), flush=True)
    ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    if ignored:
        signal.signal(signal.SIGINT, _ignore)
    try:
        with open(log, "w", encoding="utf-8") as handle:  # the child holds its own descriptor
            return subprocess.Popen(
                list(command),
                cwd=Path(command[1]).parent,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, **(env or {})},
            )
    finally:
        if ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)


def _ignore(signum: int, frame: Any) -> None:
    """A SIGINT the driver ignores, handled (so not inherited) while a command starts."""


def _stop_groups(children: Sequence[subprocess.Popen], grace: float = STOP_GRACE_S) -> None:
    """SIGINT the process group of every child (each leads one), SIGKILL whatever of them is left
    after ``grace`` seconds, and reap the children.

    SIGINT, not SIGTERM: a launcher job ignores SIGTERM from its start until the run installs its
    own handlers (submitit's job environment waits for a scheduler's requeue on it), so a short
    trial could finish in the grace and one stop would cut trials short or not by chance. Every
    process ends on SIGINT: a run in whatever phase it is in (saving ``last.ckpt`` in a fit), the
    launcher, and the sweeper with its trials left running in the stored study."""
    live = list(children)
    for sig in (signal.SIGINT, signal.SIGKILL):
        live = [child for child in live if _signal_group(child, sig)]  # only the groups left
        deadline = time.monotonic() + grace
        while live and time.monotonic() < deadline:
            time.sleep(0.2)
            live = [child for child in live if _signal_group(child, 0)]
        if not live:
            break
    for child in children:
        child.wait()


def _signal_group(child: subprocess.Popen, sig: int) -> bool:
    """Send ``sig`` to ``child``'s process group (0: only check it); whether the group lives. The
    leader is reaped first: a zombie still counts as a member of its group."""
    child.poll()
    try:
        os.killpg(child.pid, sig)
    except ProcessLookupError:
        return False
    return True


def _carried(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    """The members of a carry: the study's own files, and of each trial's run folder what the
    sweeper and the records read (CARRY_TRIAL_FILES); no weights, Λ dumps or launcher files."""
    parts = [part for part in Path(info.name).parts if part != "."]  # below the archive's root
    if len(parts) <= 1:
        return None if parts and parts[0].startswith(".") else info
    return info if parts[0].isdigit() and parts[1] in CARRY_TRIAL_FILES else None


def pack_carry(sweep: Path, target: Path) -> None:
    """Write the stored study in ``sweep`` to the tar.gz ``target`` (see :func:`_carried`),
    through a temporary file renamed into place. Its driver is dead: the trials it left running
    are marked so first (:func:`orphan_running_trials`)."""
    orphan_running_trials(sweep)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=".carry.", dir=target.parent)
    os.close(handle)
    try:
        with tarfile.open(temp, "w:gz") as tar:
            tar.add(sweep, arcname=".", filter=_carried)
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def orphan_running_trials(sweep: Path) -> None:
    """Mark the trials left running in ``sweep``'s stored study as a dead driver's: a driver name
    no process has and a heartbeat of 0, so that a resumed sweeper (of this or an earlier lopt)
    re-runs their parameters at once, on any machine (where the process id they named may be a
    live, unrelated process)."""
    if not (sweep / "study.yaml").is_file():
        return
    import optuna

    stored = stored_study(sweep)
    for trial in stored.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        driver = str(trial.system_attrs.get(DRIVER_ATTR, ""))
        if not driver.startswith("suspended:"):
            stored._storage.set_trial_system_attr(trial._trial_id, DRIVER_ATTR, f"suspended:{driver}")
        stored._storage.set_trial_system_attr(trial._trial_id, HEARTBEAT_ATTR, 0.0)


def _extract(carry: Path, into: Path) -> None:
    with tarfile.open(carry, "r:gz") as tar:
        if hasattr(tarfile, "data_filter"):  # Python ≥ 3.11.4
            tar.extractall(into, filter="data")
            return
        for member in tar.getmembers():
            name = Path(member.name)
            if name.is_absolute() or ".." in name.parts or not (member.isfile() or member.isdir()):
                raise ValueError(f"{carry}: refusing the member {member.name!r}")
        tar.extractall(into)


def restore_carry(carry: Path, sweep: Path) -> bool:
    """Restore the carried stored study into ``sweep`` unless ``sweep`` holds a stored study with
    at least as many trials done (a scratch folder of this machine that went on after the carry
    was written); returns whether it was restored."""
    sweep.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".carry.", dir=sweep.parent))
    try:
        _extract(carry, staging)
        if (sweep / "study.yaml").is_file() and done_trials(sweep) >= done_trials(staging):
            return False
        if sweep.exists():
            shutil.rmtree(sweep)
        staging.rename(sweep)
        return True
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def stored_study(sweep: Path) -> Any:
    """The optuna study stored in ``sweep``, opened from the storage file in that folder (a
    carried study's study.yaml names the folder it was packed from)."""
    for kind, name in STORAGE_FILES.items():
        if (sweep / name).is_file():
            return load_stored_study(sweep, storage_url(kind, sweep))
    return load_stored_study(sweep)


def finished_trials(sweep: Path) -> int:
    """How many trials of the stored study in ``sweep`` are complete; 0 before it exists."""
    if not (sweep / "study.yaml").is_file():
        return 0
    import optuna

    return sum(t.state == optuna.trial.TrialState.COMPLETE for t in stored_study(sweep).trials)


def done_trials(sweep: Path) -> int:
    """How many trials of the stored study in ``sweep`` count toward its total as the sweeper
    counts them (complete, pruned, or failed but not interrupted); 0 before it exists."""
    if not (sweep / "study.yaml").is_file():
        return 0
    import optuna

    state = optuna.trial.TrialState
    return sum(
        t.state in (state.COMPLETE, state.PRUNED) or (t.state == state.FAIL and not t.user_attrs.get(INTERRUPTED))
        for t in stored_study(sweep).trials
    )


def _collect(sweep_dirs: Sequence[Path], staging: Path, trials: bool = False) -> Path:
    """The compact records of the runs under ``sweep_dirs`` (collect_records; folders of one name)
    in ``staging``; returns the folder holding their ``<method label>/seed…`` folders. ``trials``:
    a tuning study's trials (their records without per-user test metrics; an unfinished trial is
    left out)."""
    collect(sweep_dirs, staging, skip_unfinished=trials, trials=trials)
    return staging / sweep_dirs[0].name


def _install(staged: Path, target: Path) -> None:
    """Move ``staged`` to ``target``, replacing a leftover of an interrupted chunk."""
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staged.rename(target)


def _install_runs(plan: Plan, labels: Path, block_dir: Path, edit: Any = None) -> list[Path]:
    """Install every ``<method label>`` folder of ``labels`` into ``block_dir``; each record's
    metrics.json ``output_dir`` becomes its path under ``runs/`` (``edit(metrics, relative)`` may
    change the rest). Returns the installed label folders."""
    written = []
    for label in sorted(p for p in labels.iterdir() if p.is_dir()):
        for metrics_path in sorted(label.rglob("metrics.json")):
            metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
            relative = block_dir.relative_to(plan.results / "runs") / metrics_path.parent.relative_to(labels)
            metrics["output_dir"] = relative.as_posix()
            if edit is not None:
                edit(metrics, relative)
            metrics_path.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
        _install(label, block_dir / label.name)
        written.append(block_dir / label.name)
    return written


def _fresh(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _staging(parent: Path) -> Path:
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging.", dir=parent))
    staging.rmdir()  # collect_records writes a folder that does not exist yet
    return staging


def earlier_seconds(chunk: Chunk, scratch: Path) -> float:
    """Wall seconds that suspended runs of ``chunk`` spent before this one (kept in its stored
    study's folder, and so in its carry); 0 for a chunk never suspended."""
    path = scratch / chunk.name / "sweep" / SECONDS_FILE
    return float(json.loads(path.read_text(encoding="utf-8"))["seconds"]) if path.is_file() else 0.0


def run_tune(plan: Plan, chunk: Chunk, scratch: Path, started: float) -> list[Path]:
    """A tuning study; its trials' compact records and selection.json. The stored study resumes
    from ``scratch`` on the same machine, or from the chunk's carry (a suspended study's commit);
    a :class:`Suspended` stop adds this run's seconds since ``started`` (``time.perf_counter``)
    to the study's and writes the carry before it propagates."""
    sweep = scratch / chunk.name / "sweep"
    carry = plan.results / chunk.carry
    if carry.is_file() and restore_carry(carry, sweep):
        print(f"  resumed from {chunk.carry}: {finished_trials(sweep)} of {plan.trials} trials finished", flush=True)
    try:
        _run(tune_command(plan, chunk, sweep), scratch / chunk.name / "log.txt")
    except Suspended:
        if (sweep / "study.yaml").is_file():
            seconds = earlier_seconds(chunk, scratch) + time.perf_counter() - started
            atomic_write_json(sweep / SECONDS_FILE, {"seconds": round(seconds, 1)})
            pack_carry(sweep, carry)
        raise
    stored = stored_study(sweep)
    results = {"best_params": best_params(stored), "best_value": stored.best_value}
    target = plan.results / "studies" / chunk.split / chunk.block / chunk.method
    staging = _staging(target.parent)
    try:
        _install(_collect([sweep], staging, trials=True), target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    best = {"best_params": results["best_params"], "best_value": results.get("best_value")}
    best |= {"trials": plan.trials, "sampler_seed": study_seed(chunk)}
    (target / SELECTION_FILE).write_text(json.dumps(best, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    write_trials(stored, target / TRIALS_FILE, roots=(scratch, plan.code, REPO_ROOT))
    return [target]


def write_trials(stored: Any, path: Path, roots: Sequence[Path] = ()) -> None:
    """Every trial of the optuna study ``stored`` as a row of the CSV ``path``: number, state
    (a failed, diverged or interrupted trial too, which leaves no record of its own), objective,
    parameters, seconds, the trial it retries, and its error without machine paths (``roots``,
    e.g. the scratch folder and the checkouts, become ``…``, then any other absolute folder
    ``…/``); no run folder (a machine path)."""
    metric = str(stored.user_attrs.get("metric", "value"))
    rows = [{k: v for k, v in row.items() if k != "run_dir"} for row in study_rows(stored, metric)]
    known = sorted({str(r) for r in (*roots, Path.home())}, key=len, reverse=True)
    for row in rows:
        error = str(row["error"] or "")
        for root in known:
            error = error.replace(root, "…")
        row["error"] = ABSOLUTE_DIR.sub("…/", error)
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["trial"])
        writer.writeheader()
        writer.writerows(rows)


def fit_dir(scratch: Path, chunk: Chunk, seed: int) -> Path:
    """The scratch folder of one seed's fit of a runs chunk (its one-job multirun in ``sweep/``)."""
    return scratch / chunk.name / f"seed{seed}"


def fit_commands(plan: Plan, chunk: Chunk, scratch: Path) -> list[tuple[list[str], Path]]:
    """One (command, log) per seed of a runs chunk: a one-job multirun each, so that the fits of
    several chunks share one pool."""
    return [
        (runs_command(plan, chunk, fit_dir(scratch, chunk, s) / "sweep", [s]), fit_dir(scratch, chunk, s) / "log.txt")
        for s in plan.seeds
    ]


def collect_runs(plan: Plan, chunk: Chunk, scratch: Path) -> list[Path]:
    """The compact records of a runs chunk's fits, installed under ``runs/<split>/<block>/``."""
    block_dir = plan.results / "runs" / chunk.split / chunk.block
    staging = _staging(block_dir)
    try:
        return _install_runs(
            plan, _collect([fit_dir(scratch, chunk, s) / "sweep" for s in plan.seeds], staging), block_dir
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def run_runs(plan: Plan, group: Sequence[Chunk], scratch: Path, commit: bool, jobs: int | None) -> None:
    """The seed runs of the runs chunks ``group``, ``jobs`` fits at a time in one pool (the next
    chunk's fits start while the last of one end; default: the cores, or every fit at once where
    a cluster's launcher runs them); each chunk is finished (records, marker, commit) as its last
    fit ends. A stop raises :class:`Suspended` with ``chunks`` set to the chunks it cut short,
    which run again whole."""
    fits = [(chunk, *fit) for chunk in group for fit in fit_commands(plan, chunk, scratch)]
    here = runs_here(plan, group[0])
    jobs = jobs or (machine_cores() if here else len(fits))
    left = {chunk.name: len(plan.seeds) for chunk in group}
    started: dict[str, tuple[float, str]] = {}
    for chunk in group:
        _fresh(scratch / chunk.name)

    def on_start(i: int) -> None:
        started.setdefault(fits[i][0].name, (time.perf_counter(), _now()))

    def on_exit(i: int) -> None:
        chunk = fits[i][0]
        left[chunk.name] -= 1
        if left[chunk.name] == 0:
            finish_chunk(plan, chunk, collect_runs(plan, chunk, scratch), *started[chunk.name], commit=commit)

    threads = str(max(1, machine_cores() // jobs))
    try:
        _run_pool(
            [(command, log) for _, command, log in fits],
            jobs,
            on_exit,
            env={name: os.environ.get(name, threads) for name in THREAD_VARIABLES} if here else None,
            on_start=on_start,
        )
    except Suspended as stop:
        stop.chunks = [c for c in group if c.name in started and left[c.name] > 0]
        raise


def runs_here(plan: Plan, chunk: Chunk) -> bool:
    """Whether ``chunk``'s fits run on this machine (the local or the basic launcher), not as a
    cluster's jobs (whose cores are not this machine's)."""
    head, _ = base_overrides(plan, chunk)
    return all(o.split("=", 1)[1] in LOCAL_LAUNCHERS for o in head if o.startswith("hydra/launcher="))


def _now() -> str:
    """The time now, UTC, to the second (a chunk marker's ``started``/``finished``)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def run_borrow(plan: Plan, chunk: Chunk) -> list[Path]:
    """Copy the refit-final records of a method into ``chunk.block``, marked borrowed
    (``control.borrowed``, ``borrowed_from``); refused unless each record's ``control.serves``
    names the block."""
    source_chunk = Chunk("runs", chunk.split, "refit-final", chunk.method)
    marker = plan.results / source_chunk.marker
    if not marker.is_file():
        raise FileNotFoundError(f"{marker} is missing: the chunk {source_chunk.name} has not run")
    sources = [plan.results / p for p in json.loads(marker.read_text(encoding="utf-8"))["records"]]
    block_dir = plan.results / "runs" / chunk.split / chunk.block
    staging = _staging(block_dir)
    try:
        for source in sources:
            shutil.copytree(source, staging / source.name)

        def mark(metrics: dict[str, Any], relative: Path) -> None:
            control = metrics.get("control") or {}
            if chunk.block not in (control.get("serves") or []):
                raise ValueError(
                    f"{relative}: its run serves {control.get('serves')}, not {chunk.block}; it cannot be borrowed"
                )
            origin = Path(chunk.split) / "refit-final" / relative.relative_to(Path(chunk.split) / chunk.block)
            control.update(borrowed=True, borrowed_from=origin.as_posix(), block=chunk.block)
            metrics["control"] = control

        return _install_runs(plan, staging, block_dir, mark)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def code_commit(plan: Plan) -> str:
    """The commit of the checkout running the study's fits (``-dirty`` with changes; ``unknown``
    outside git)."""
    from lopt.run.provenance import commit_label  # imports torch: only where a record is written

    return commit_label(plan.code)


def run_chunk(plan: Plan, chunk: Chunk, scratch: Path, commit: bool) -> None:
    """A tuning or borrowing chunk, finished with its records, marker and (``commit``) commit."""
    started = time.perf_counter(), _now()
    if chunk.kind == "tune":
        written = run_tune(plan, chunk, scratch, started[0])
        earlier = earlier_seconds(chunk, scratch)
    else:
        written, earlier = run_borrow(plan, chunk), 0.0
    finish_chunk(plan, chunk, written, *started, commit=commit, earlier=earlier)


def finish_chunk(
    plan: Plan, chunk: Chunk, written: list[Path], clock: float, since: str, commit: bool, earlier: float = 0.0
) -> None:
    """Write ``chunk``'s marker: its records, the code commit, when it started (``since``, UTC) and
    finished, and its wall seconds since ``clock`` (``time.perf_counter``) plus ``earlier``
    (a suspended tuning chunk's earlier runs); remove its carry; commit it when ``commit`` (a
    failed commit is reported, and left to the next run: the study goes on)."""
    marker = plan.results / chunk.marker
    marker.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "chunk": chunk.name,
        "records": [p.relative_to(plan.results).as_posix() for p in written],
        "code_commit": code_commit(plan),
        "seconds": round(earlier + time.perf_counter() - clock, 1),
        "earlier_seconds": round(earlier, 1),
        "started": since,
        "finished": _now(),
    }
    atomic_write_json(marker, record)
    (plan.results / chunk.carry).unlink(missing_ok=True)
    if commit:
        try:
            commit_chunk(plan, chunk)
        except RuntimeError as error:  # the records are written: the next run with --commit commits them
            print(f"the commit of chunk {chunk.name} failed ({error}); the next run with --commit commits it")


def commit_chunk(plan: Plan, chunk: Chunk, note: str = "") -> None:
    """Commit a done chunk: its records and marker, and the removal of its carry where the
    commit checked out holds one. Only these paths: whatever else is staged stays out (a staged
    carry of this chunk is unstaged)."""
    marker = plan.results / chunk.marker
    record = json.loads(marker.read_text(encoding="utf-8"))
    paths = [str(plan.results / r) for r in record["records"]] + [str(marker)]
    carry = plan.results / chunk.carry
    _git(["rm", "-q", "--cached", "--ignore-unmatch", "--", str(carry)], plan.results)
    message = f"study {plan.dataset}: {chunk.name} ({record['seconds']:.0f} s, code {record['code_commit'][:12]}){note}"
    _git(["add", "-A", "--", *paths], plan.results)
    removal = [str(carry)] if _in_head(plan.results, chunk.carry) else []
    _git(["commit", "-q", "-m", message, "--", *paths, *removal], plan.results)


def suspended(plan: Plan, cut: Sequence[Chunk], scratch: Path, commit: bool, why: str) -> int:
    """After a stop that cut the chunks ``cut`` short: commit a tuning chunk's carry (its stored
    study) when ``commit``, say what resumes, and return :data:`SUSPENDED_EXIT`."""
    chunk = cut[0]
    carry = plan.results / chunk.carry
    if chunk.kind == "tune" and carry.is_file():
        kept = finished_trials(scratch / chunk.name / "sweep")
        what = f"its stored study ({kept} of {plan.trials} trials finished) is kept in {chunk.carry}"
        if commit:
            message = f"study {plan.dataset}: suspend {chunk.name} ({kept} of {plan.trials} trials finished)"
            try:
                _git(["add", "--", str(carry)], plan.results)
                _git(["commit", "-q", "-m", message, "--", str(carry)], plan.results)
                what += ", committed"
            except RuntimeError as error:
                what += f", NOT committed ({error}): commit it before this machine goes"
    else:
        what = "it runs again whole" if len(cut) == 1 else "they run again whole"
    names = ", ".join(c.name for c in cut)
    print(f"suspended ({why}) in chunk {names}: {what}; run the same command to resume", flush=True)
    return SUSPENDED_EXIT


def _git(args: list[str], cwd: Path, attempts: int = 30) -> str:
    """``git *args`` in ``cwd`` (its stdout), retried while another git process holds the index
    lock (the results folder may live in a checkout where other commits are being made). Git
    runs in a session of its own, so that a stop sent to the driver's process group (Ctrl-C, a
    batch system's SIGTERM) does not kill a commit half-way."""
    for attempt in range(attempts):
        result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, start_new_session=True)
        if result.returncode == 0:
            return result.stdout
        if "index.lock" not in result.stderr or attempt == attempts - 1:
            raise RuntimeError(f"git {args[0]} failed in {cwd}: {result.stderr.strip()}")
        time.sleep(2.0)
    raise AssertionError("unreachable")


def _in_head(folder: Path, relative: str) -> bool:
    """Whether the commit checked out holds ``folder/relative`` (it may be gone from the work
    tree, with its folder); False outside git or before a first commit."""
    result = subprocess.run(
        ["git", "cat-file", "-e", f"HEAD:./{relative}"],
        cwd=folder,
        capture_output=True,
        text=True,
        start_new_session=True,
    )
    return result.returncode == 0


def uncommitted_chunks(plan: Plan) -> list[Chunk]:
    """Done chunks whose marker no commit holds: their commit failed (or the study ran without
    ``--commit``)."""
    return [c for c in chunks(plan) if done(plan, c) and not _in_head(plan.results, c.marker)]


def done(plan: Plan, chunk: Chunk) -> bool:
    return (plan.results / chunk.marker).is_file()


# --------------------------------------------------------------------------- timings and the plan
def measure(plan: Plan, epochs: int, scratch: Path) -> dict[str, float]:
    """Seconds per epoch (training + that epoch's validation) of every method in the paper block,
    one seed: the difference of the ``train_seconds`` (metrics.json) of a ``2·epochs`` and an
    ``epochs`` run, divided by ``epochs``, so that what a run pays once (its first epoch's
    warm-up, loading the compiled look-ahead kernels) is not counted per epoch. A 1-epoch run
    before them, not timed, fills the caches a first run on a machine fills (inductor's compiled
    kernels, the prepared split)."""
    seconds: dict[str, float] = {}
    for m in plan.methods:
        params = [f"{k}={v}" for k, v in sorted(plan.selections.get(m.name, {}).items())]
        head, _ = base_overrides(plan, Chunk("runs", next(iter(plan.splits)), "paper", m.name))
        train_seconds = []
        for length in (1, epochs, 2 * epochs):
            run_dir = scratch / "measure" / f"{m.name}-{length}"
            command = [
                sys.executable,
                str(plan.code / "run.py"),
                *head,
                *params,
                f"trainer.max_epochs={length}",
                "logger=none",
                "overwrite=true",
                f"hydra.run.dir={run_dir}",
            ]
            _run(command, run_dir.with_suffix(".log"))
            metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
            if metrics["epochs_trained"] != length:
                raise RuntimeError(f"{run_dir}: trained {metrics['epochs_trained']} epochs, not {length}")
            train_seconds.append(metrics["train_seconds"])
        longer, shorter = train_seconds[2], train_seconds[1]
        if longer <= shorter:
            raise RuntimeError(
                f"{m.name}: {2 * epochs} epochs took {longer:.1f} s, {epochs} epochs {shorter:.1f} s: the machine's "
                "load changed during the measurement; measure again on a quiet machine (or with more --epochs)"
            )
        seconds[m.name] = (longer - shorter) / epochs
        print(f"  {m.name}: {seconds[m.name]:.2f} s/epoch", flush=True)
    return seconds


def chunk_epochs(plan: Plan, chunk: Chunk, epochs: int, inner_share: float) -> float:
    """Epochs (in units of a paper-block epoch of the method) a chunk trains when each fit runs
    ``epochs`` epochs: a tuning study runs ``trials`` fits, a runs chunk one per seed; an inner fit
    trains on ``inner_share`` of train; a refit trains the first fit, then ``epochs`` more on
    train ∪ valid (valid_share more data, counted as the paper epoch: an upper bound is the cap)."""
    fits = plan.trials if chunk.kind == "tune" else len(plan.seeds) if chunk.kind == "runs" else 0
    per_fit = epochs * (inner_share if chunk.block == "inner" else 1.0)
    if chunk.block.startswith("refit"):
        per_fit = 2 * epochs
    return fits * per_fit


def observed_epochs(plan: Plan) -> dict[str, list[int]]:
    """The epochs every committed tuning trial of each method trained (``studies/*/*/<method>/``),
    the evidence for how long the fits still to run will be."""
    out: dict[str, list[int]] = {}
    for m in plan.methods:
        for path in sorted((plan.results / "studies").glob(f"*/*/{m.name}/*/*/metrics.json")):
            epochs = json.loads(path.read_text(encoding="utf-8")).get("epochs_trained")
            if isinstance(epochs, int):
                out.setdefault(m.name, []).append(epochs)
    return out


def estimate(
    plan: Plan, timings: dict[str, float], inner_share: float, observed: dict[str, float] | None = None
) -> dict[str, dict[str, float]]:
    """CPU seconds of each chunk ``{chunk name: {"cap": …, "expected": …, "observed": …}}``: its
    fits' epochs (:func:`chunk_epochs`) at the epoch cap, at ``plan.expected_epochs`` and at the
    method's mean observed epochs a fit (``observed``; the plan's expected where it has none),
    times the method's measured seconds per epoch."""
    observed = observed or {}
    return {
        c.name: {
            "cap": chunk_epochs(plan, c, plan.budget["max_epochs"], inner_share) * timings[c.method],
            "expected": chunk_epochs(plan, c, plan.expected_epochs, inner_share) * timings[c.method],
            "observed": chunk_epochs(plan, c, observed.get(c.method, plan.expected_epochs), inner_share)
            * timings[c.method],
        }
        for c in chunks(plan)
    }


def carried_trials(carry: Path) -> int:
    """Trials done, as the sweeper counts them, in the stored study of the carry ``carry``."""
    with tempfile.TemporaryDirectory() as folder:
        _extract(carry, Path(folder))
        return done_trials(Path(folder))


def print_plan(plan: Plan, timings: dict[str, float] | None, inner_share: float) -> None:
    """The chunks (done, ``part``: suspended with a carry, or to run), their fits and, with timings,
    their CPU time (of a suspended chunk, that of the trials it has still to run)."""
    all_chunks = chunks(plan)
    todo = [c for c in all_chunks if not done(plan, c)]
    epochs_seen = observed_epochs(plan)
    mean_seen = {m: sum(e) / len(e) for m, e in epochs_seen.items()}
    seconds = estimate(plan, timings, inner_share, mean_seen) if timings is not None else {}
    carried = {c.name: carried_trials(plan.results / c.carry) for c in todo if (plan.results / c.carry).is_file()}
    for name, trials_done in carried.items():
        if name in seconds:
            left = max(0, plan.trials - trials_done) / plan.trials
            seconds[name] = {key: value * left for key, value in seconds[name].items()}
    print(f"study {plan.dataset}: {len(all_chunks)} chunks, {len(all_chunks) - len(todo)} done, {len(todo)} to run")
    fits = 0
    for c in all_chunks:
        n = plan.trials if c.kind == "tune" else len(plan.seeds) if c.kind == "runs" else 0
        fits += n
        state = "done" if done(plan, c) else "part" if c.name in carried else "todo"
        line = f"  {state}  {c.name:<44} {n:>3} fits"
        if c.name in seconds:
            line += (
                f"  cap {seconds[c.name]['cap'] / 3600:7.2f} h  expected {seconds[c.name]['expected'] / 3600:7.2f} h"
            )
        if c.name in carried:
            line += f"  ({carried[c.name]} done)"
        print(line)
    print(
        f"  {fits} fits (tuning trials and seed runs); epoch cap {plan.budget['max_epochs']}, "
        f"{plan.expected_epochs} expected a fit"
    )
    if timings is None:
        print(f"  no {TIMINGS_FILE} in {plan.results}: run --measure first for a CPU estimate")
        return
    cap = sum(seconds[c.name]["cap"] for c in todo)
    expected = sum(seconds[c.name]["expected"] for c in todo)
    print(
        f"  CPU time of the chunks to run, one process: {expected / 3600:.1f} h at {plan.expected_epochs} epochs a fit "
        f"({expected:.0f} s), at most {cap / 3600:.1f} h if every fit ran to the cap ({cap:.0f} s); "
        "divide by the parallel jobs the cores allow"
    )
    if epochs_seen:
        seen = ", ".join(f"{m} {mean_seen[m]:.1f} ({len(e)} trials)" for m, e in epochs_seen.items())
        observed = sum(seconds[c.name]["observed"] for c in todo)
        print(f"  epochs a fit in the committed trials: {seen}")
        print(
            f"  CPU time of the chunks to run at those epochs ({plan.expected_epochs} for a method with none yet): "
            f"{observed / 3600:.1f} h ({observed:.0f} s)"
        )
    markers = {
        c.name: json.loads((plan.results / c.marker).read_text(encoding="utf-8")) for c in all_chunks if done(plan, c)
    }
    if not markers:
        return
    print(f"  wall time of the {len(markers)} chunks done: {wall_seconds(list(markers.values())) / 3600:.2f} h")
    pace = {}  # wall seconds per estimated CPU second, by kind of chunk, in the chunks done
    for kind in ("tune", "runs"):
        ran = [c.name for c in all_chunks if c.kind == kind and c.name in markers]
        estimated = sum(seconds[name]["observed"] for name in ran)
        if estimated > 0:
            pace[kind] = wall_seconds([markers[name] for name in ran]) / estimated
    rest = [c for c in todo if seconds[c.name]["observed"] > 0]
    if rest and all(c.kind in pace for c in rest):
        projected = sum(seconds[c.name]["observed"] * pace[c.kind] for c in rest)
        kinds = ", ".join(f"{KIND_NAMES[k]} {v:.2f}" for k, v in pace.items())
        print(
            f"  at the pace of the chunks done (their wall time / their CPU estimate: {kinds}), "
            f"the chunks to run take about {projected / 3600:.1f} h of wall time"
        )


def wall_seconds(markers: Sequence[dict[str, Any]]) -> float:
    """The wall seconds the chunks of ``markers`` took, chunks that ran at once counted once: the
    union of their ``started``–``finished`` spans, plus their ``earlier_seconds`` (a suspended
    chunk's earlier runs), plus the ``seconds`` of markers without a span."""
    spans = sorted((_epoch(m["started"]), _epoch(m["finished"])) for m in markers if "started" in m and "finished" in m)
    total, reach = 0.0, float("-inf")
    for begin, end in spans:
        total += max(0.0, end - max(begin, reach))
        reach = max(reach, end)
    return total + sum(
        float(m.get("earlier_seconds", 0.0)) if "started" in m and "finished" in m else float(m["seconds"])
        for m in markers
    )


def _epoch(stamp: str) -> float:
    """Seconds since the epoch of a marker's UTC time stamp (:func:`_now`)."""
    return calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("plan", type=Path, help="the study plan (e.g. experiments/results/ml100k/study.yaml)")
    parser.add_argument("--plan", dest="dry", action="store_true", help="print the chunks and the CPU estimate")
    parser.add_argument(
        "--measure", action="store_true", help="time an epoch of every method, write epoch_seconds.json"
    )
    parser.add_argument("--epochs", type=int, default=3, help="epochs of each --measure run (default 3)")
    parser.add_argument("--max-chunks", type=int, default=None, help="stop after this many chunks")
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="seed runs at once, one pool across consecutive runs chunks (default: the cores; with a "
        "cluster's launcher, every fit of the pool)",
    )
    parser.add_argument("--commit", action="store_true", help="git-commit each chunk's records as it ends")
    parser.add_argument(
        "--hours",
        type=float,
        default=None,
        help="suspend after this many hours of wall time, as SIGTERM does (a batch job's time limit)",
    )
    parser.add_argument(
        "--scratch", type=Path, default=None, help="full runs (default data/study/<dataset> in the --code checkout)"
    )
    parser.add_argument(
        "--code",
        type=Path,
        default=None,
        help="a checkout (a clone of the study's commit) whose run.py runs every fit and whose commit the "
        "records name; default: the checkout holding this script",
    )
    args = parser.parse_args(argv)
    try:
        plan = load_plan(args.plan)
    except (OSError, ValueError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.code is not None:
        plan.code = args.code.resolve()
        if not (plan.code / "run.py").is_file():
            print(f"error: --code {args.code}: no run.py there; name a checkout of lopt", file=sys.stderr)
            return 2
    scratch = (args.scratch or plan.code / "data" / "study" / plan.dataset).resolve()
    timings_path = plan.results / TIMINGS_FILE
    if args.dry:
        timings = json.loads(timings_path.read_text())["seconds_per_epoch"] if timings_path.is_file() else None
        ratio = next(
            (float(o.split("=", 1)[1]) for o in plan.overrides if o.startswith("control.lambda_split_ratio=")), 0.25
        )
        print_plan(plan, timings, 1.0 - ratio)
        return 0
    if args.hours is not None and not args.hours > 0:
        print(f"error: --hours {args.hours}: give a positive number of hours", file=sys.stderr)
        return 2
    if args.max_chunks is not None and args.max_chunks < 0:
        print(f"error: --max-chunks {args.max_chunks}: give a number of chunks ≥ 0", file=sys.stderr)
        return 2
    if args.jobs is not None and args.jobs < 1:
        print(f"error: --jobs {args.jobs}: give a number of fits at once ≥ 1", file=sys.stderr)
        return 2
    _STOP["asked"] = None
    # a stop suspends the study; a signal the driver was started to ignore (nohup) stays ignored
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGALRM)}
    for sig, handler in handlers.items():
        if handler is not signal.SIG_IGN:
            signal.signal(sig, _ask_stop)
    if args.hours is not None:
        signal.setitimer(signal.ITIMER_REAL, args.hours * 3600.0)
    try:
        if args.measure:
            try:
                timings = measure(plan, args.epochs, scratch)
            except Suspended as stop:
                print(f"suspended ({stop}) while measuring: nothing written; run --measure again", flush=True)
                return SUSPENDED_EXIT
            record = {"seconds_per_epoch": timings, "epochs": args.epochs, "code_commit": code_commit(plan)}
            timings_path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            return 0
        return run_study(plan, scratch, args.commit, args.max_chunks, args.jobs)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0.0)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def run_study(plan: Plan, scratch: Path, commit: bool, max_chunks: int | None, jobs: int | None = None) -> int:
    """Run the chunks not done, in order; 0 when every chunk is done or ``max_chunks`` ran, 1 on
    an error, :data:`SUSPENDED_EXIT` after a stop. Consecutive runs chunks share one pool of
    ``jobs`` fits at a time (default: the cores). With ``commit``, a done chunk whose commit failed
    is committed first."""
    if commit:
        for chunk in uncommitted_chunks(plan):
            print(f"committing chunk {chunk.name}: its records were written but not committed", flush=True)
            commit_chunk(plan, chunk, note=" (committed by a later run)")
    todo = [c for c in chunks(plan) if not done(plan, c)]
    if max_chunks is not None:
        todo = todo[:max_chunks]
    for group in _groups(todo, lambda c: runs_here(plan, c)):
        if _STOP["asked"]:
            print(f"suspended ({_STOP['asked']}) before chunk {group[0].name}; run the same command to resume")
            return SUSPENDED_EXIT
        print("chunk " + ", ".join(c.name for c in group), flush=True)
        try:
            if group[0].kind == "runs":
                run_runs(plan, group, scratch, commit, jobs)
            else:
                run_chunk(plan, group[0], scratch, commit)
        except Suspended as stop:
            return suspended(plan, list(stop.chunks) or group, scratch, commit, str(stop))
        except (OSError, RuntimeError, ValueError) as error:
            where = group[0].name if len(group) == 1 else f"the seed runs of {group[0].name} … {group[-1].name}"
            print(f"error in {where}: {error}\nthe chunks done are kept; run again to resume", file=sys.stderr)
            return 1
    if max_chunks is not None and any(not done(plan, c) for c in chunks(plan)):
        print(f"stopped after {len(todo)} chunks (--max-chunks); run again to continue")
        return 0
    print(f"study {plan.dataset}: every chunk done")
    return 0


def _groups(todo: Sequence[Chunk], here: Callable[[Chunk], bool]) -> list[list[Chunk]]:
    """``todo`` cut into what runs at once: consecutive runs chunks whose fits run alike (``here``:
    on this machine, or not) together (their fits share one pool: a runs chunk needs only its
    tuning chunk, which runs before it), any other chunk alone."""
    groups: list[list[Chunk]] = []
    for chunk in todo:
        last = groups[-1][0] if groups else None
        if chunk.kind == "runs" and last is not None and last.kind == "runs" and here(chunk) == here(last):
            groups[-1].append(chunk)
        else:
            groups.append([chunk])
    return groups


if __name__ == "__main__":
    raise SystemExit(main())
