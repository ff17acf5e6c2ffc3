"""Finished runs on disk → tables: discovery, configuration grouping, validation-based selection,
seed aggregation, per-user metrics (used by ``experiments/reproduce_table.py`` and ``figures.py``).

A run is a directory holding ``metrics.json`` and ``.hydra/config.yaml`` (the results contract of
docs/results.md); single runs and multirun jobs are found alike, at any depth.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from omegaconf import OmegaConf

from lopt.data.controls import CONTROLS, control_changes

#: The paper's table columns (the lambdaopt protocol at K = 50, 100), in its order.
METRICS: tuple[str, ...] = ("auc", "hr@50", "hr@100", "ndcg@50", "ndcg@100")
#: Protocol of a run whose metrics.json predates the protocol key.
DEFAULT_PROTOCOL = "lambdaopt"
_TITLES = {
    "auc": "AUC",
    "mrr": "MRR",
    "hr": "HR",
    "ndcg": "NDCG",
    "recall": "Recall",
    "precision": "Precision",
    "map": "MAP",
}
FIX_METHOD = "MF-λFix"
#: The paper table's rows, in its order; other methods found are appended after these.
PAPER_METHODS: tuple[str, ...] = (
    "SGDA",
    "AMF",
    "NeuMF",
    "MF-λFix",
    "MF-λOpt-D",
    "MF-λOpt-DU",
    "MF-λOpt-DI",
    "MF-λOpt-DUI",
)
#: Config keys that do not change what is learned (ignored when grouping runs into configurations).
NON_CONFIG_KEYS: tuple[str, ...] = ("seed", "paths", "logger", "tracking", "resume", "checkpoint", "hydra")
NON_CONFIG_PATHS: tuple[tuple[str, ...], ...] = (
    ("dataset", "source", "path"),
    ("dataset", "source", "default_path"),
    ("dataset", "source", "lock_dir"),
    ("dataset", "source", "download"),
    ("dataset", "download"),
    ("data", "cache"),
    ("overwrite",),
)


#: Config nodes that define the data split: runs that differ in them are different splits of
#: one dataset (units of the study, like seeds), never different configurations of a method.
SPLIT_PATHS: tuple[tuple[str, ...], ...] = (("dataset", "preprocess"), ("protocol", "split"))
#: What a record names each Θ stream by (a control block is matched when all its rows share one).
THETA_TRAIN = "train"
THETA_REFIT = "train ∪ valid (refit)"


def _select(node: Any, path: Sequence[str]) -> Any:
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def resolve_key(config: dict[str, Any], dotted: str, depth: int = 10) -> Any:
    """``config``'s value at ``dotted`` (e.g. ``trainer.max_epochs``), following whole-string
    interpolations such as ``${budget.max_epochs}`` within the config; None when absent or when
    the value needs a resolver the record cannot supply (``${hydra:…}``, ``${oc.env:…}``)."""
    value = _select(config, dotted.split("."))
    for _ in range(depth):
        if not (isinstance(value, str) and value.startswith("${") and value.endswith("}")):
            return value
        inner = value[2:-1]
        if ":" in inner or "${" in inner:
            return None
        value = _select(config, inner.split("."))
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True)
class Run:
    """One finished run: its directory, metrics.json and composed config."""

    path: Path
    metrics: dict[str, Any]
    config: dict[str, Any] = field(repr=False)

    @property
    def dataset(self) -> str:
        return str(self.metrics.get("dataset"))

    @property
    def method(self) -> str:
        return str(self.metrics.get("method") or self.metrics.get("model"))

    @property
    def seed(self) -> int | None:
        seed = self.metrics.get("seed")
        return None if seed is None else int(seed)

    @property
    def lambda_value(self) -> float | None:
        value = self.metrics.get("lambda_value")
        return None if value is None else float(value)

    @property
    def protocol(self) -> str:
        """The evaluation protocol of the run (``lambdaopt`` for runs that predate the key)."""
        return str(self.metrics.get("protocol") or DEFAULT_PROTOCOL)

    @property
    def matched(self) -> bool:
        """Whether the run was made under the matched controls (its record names its block)."""
        return bool((self.metrics.get("control") or {}).get("matched"))

    @property
    def control(self) -> str:
        """The run's block under the fairness controls: ``none`` (the paper's protocol; also for
        runs that predate the key), ``inner``, ``refit``, or for matched records the block they
        name (``refit-final``, ``refit-trajectory``: the refit's two ways of setting Λ)."""
        control = self.metrics.get("control") or {}
        block = control.get("block") if control.get("matched") else None
        if block:
            return "none" if block == "paper" else str(block)
        return str(control.get("name") or "none")

    @property
    def learns_lambda(self) -> bool:
        """Whether the run's model has a Λ-step (λOpt, SGDA): its declared ``model.needs_valid_triples``;
        for records that predate the declaration, whether its config has a ``lambda_optimizer``."""
        declared = (self.config.get("model") or {}).get("needs_valid_triples")
        return bool(declared) if declared is not None else "lambda_optimizer" in self.config

    def value(self, split: str, metric: str) -> float:
        """``metrics.json[split][metric]`` as a float (NaN when absent)."""
        raw = (self.metrics.get(split) or {}).get(metric)
        return math.nan if raw is None else float(raw)

    @property
    def best_epoch(self) -> int | None:
        """The selected checkpoint's epoch as metrics.json counts it (0-based)."""
        value = self.metrics.get("best_epoch")
        return None if value is None else int(value)

    @property
    def max_epochs(self) -> int | None:
        """The run's epoch cap (``trainer.max_epochs``, interpolations followed)."""
        value = resolve_key(self.config, "trainer.max_epochs")
        return int(value) if _is_number(value) else None

    @property
    def stopped_early(self) -> bool | None:
        """Whether early stopping, not the epoch cap, ended the run's training. Read from the
        record when it says so (``stopped_early``, or ``epochs_trained`` against the cap); else
        derived from the config: with patience P evaluations every E epochs and the best
        checkpoint at epoch b (0-based), early stopping ends training after epoch b + P·E, which is
        early when b + P·E + 1 < max_epochs. None when the record cannot tell."""
        if isinstance(self.metrics.get("stopped_early"), bool):
            return self.metrics["stopped_early"]
        cap = self.max_epochs
        trained = self.metrics.get("epochs_trained")
        if _is_number(trained) and cap is not None:
            return int(trained) < cap
        if "callbacks" in self.config and _select(self.config, ("callbacks", "early_stopping")) is None:
            return False  # no early stopping configured: the cap ends every run
        patience = resolve_key(self.config, "callbacks.early_stopping.patience")
        every = resolve_key(self.config, "eval.every_n_epochs")
        every = int(every) if _is_number(every) else 1
        if patience is None and _select(self.config, ("callbacks", "early_stopping")) is not None:
            return False  # patience null: early stopping off
        if not _is_number(patience) or cap is None or self.best_epoch is None:
            return None
        return self.best_epoch + int(patience) * every + 1 < cap

    @property
    def split_params(self) -> str:
        """The canonical JSON of the config nodes that define the data split (:data:`SPLIT_PATHS`)."""
        node = {".".join(path): _select(self.config, path) for path in SPLIT_PATHS}
        return json.dumps(node, sort_keys=True, default=str)

    @property
    def split_fingerprint(self) -> str | None:
        """The prepared split's fingerprint as the run recorded it (``provenance.split_fingerprint``)."""
        block = self.metrics.get("provenance")
        value = block.get("split_fingerprint") if isinstance(block, dict) else None
        return None if value is None else str(value)

    @property
    def theta_stream(self) -> str:
        """The interactions the run's Θ trained on, as its record states: ``train`` (the paper's
        protocol, or a control that did not apply), ``train ∪ valid (refit)``, or train less the
        inner control's Λ-split (with its ratio and size when recorded)."""
        control = self.metrics.get("control") or {}
        if not control.get("applied"):
            return THETA_TRAIN
        if control.get("name") == "refit":
            return THETA_REFIT
        if control.get("name") == "inner":
            ratio = control.get("lambda_split_ratio")
            return f"train less the latest {ratio:g} of each user's train (inner)" if _is_number(ratio) else "inner"
        return str(control.get("name"))

    @property
    def config_key(self) -> str:
        """A fingerprint of everything in the config that changes the model (not the seed, the
        split, paths, logging or tracking): runs with equal keys are seeds of one configuration."""
        return hashlib.sha1(json.dumps(config_identity(self.config), sort_keys=True).encode()).hexdigest()[:12]


def config_identity(config: dict[str, Any]) -> dict[str, Any]:
    """The part of a config that identifies a configuration: :attr:`Run.config_key`'s input."""
    node = {k: v for k, v in config.items() if k not in NON_CONFIG_KEYS}
    node = json.loads(json.dumps(node, default=str))
    for path in (*NON_CONFIG_PATHS, *SPLIT_PATHS):
        parent = node
        for key in path[:-1]:
            parent = parent.get(key, {}) if isinstance(parent, dict) else {}
        if isinstance(parent, dict):
            parent.pop(path[-1], None)
    return node


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        flat: dict[str, Any] = {}
        for key, value in node.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: node}


def differing_keys(configs: Sequence[dict[str, Any]], ignore: Sequence[str] = ()) -> list[str]:
    """The dotted keys (sorted) whose values differ among ``configs`` (their identities,
    :func:`config_identity`), ``ignore`` left out."""
    flats = [_flatten(config_identity(c)) for c in configs]
    keys = sorted(set().union(*flats)) if flats else []
    return [
        k
        for k in keys
        if k not in ignore and len({json.dumps(f.get(k), sort_keys=True, default=str) for f in flats}) > 1
    ]


def config_labels(groups: Sequence[Sequence[Run]], ignore: Sequence[str] = ()) -> list[str]:
    """A label per group of runs (one configuration each): the keys in which the configurations
    differ, ``key=value`` joined by ", "; "" when they do not differ (or there is one group)."""
    keys = differing_keys([g[0].config for g in groups], ignore)
    labels = []
    for group in groups:
        flat = _flatten(config_identity(group[0].config))
        labels.append(", ".join(f"{k}={_short(flat.get(k))}" for k in keys))
    return labels


def _short(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else json.dumps(value, default=str).strip('"')


@dataclass(frozen=True)
class Malformed:
    """A run folder that could not be read as a finished run, and why."""

    path: Path
    reason: str


def _metrics_problem(metrics: Any) -> str | None:
    """Why ``metrics`` (metrics.json, parsed) is not a usable record; None when it is."""
    if not isinstance(metrics, dict):
        return f"metrics.json holds a {type(metrics).__name__}, not an object"
    for split in ("test", "valid"):
        block = metrics.get(split, {})
        if block is None:
            continue
        if not isinstance(block, dict):
            return f'metrics.json: "{split}" is {block!r}, not an object of metric values'
        for key, value in block.items():
            if value is not None and not _is_number(value):
                return f'metrics.json: {split}["{key}"] is {value!r}, not a number'
    for key in ("dataset",):
        if not isinstance(metrics.get(key), str) or not metrics[key]:
            return f'metrics.json: "{key}" is {metrics.get(key)!r}, not a name'
    if not isinstance(metrics.get("method") or metrics.get("model"), str):
        return 'metrics.json: neither "method" nor "model" names the method'
    for key in ("seed", "best_epoch"):
        value = metrics.get(key)
        if value is not None and not (isinstance(value, int) and not isinstance(value, bool)):
            return f'metrics.json: "{key}" is {value!r}, not an integer'
    if metrics.get("lambda_value") is not None and not _is_number(metrics["lambda_value"]):
        return f'metrics.json: "lambda_value" is {metrics["lambda_value"]!r}, not a number'
    for key in ("control", "provenance"):
        if metrics.get(key) is not None and not isinstance(metrics[key], dict):
            return f'metrics.json: "{key}" is {metrics[key]!r}, not an object'
    return None


def scan_runs(root: str | Path) -> tuple[list[Run], list[Malformed]]:
    """(finished runs, malformed run folders) under ``root``, each sorted by path.

    A finished run is a folder with ``metrics.json`` holding test metrics and a readable
    ``.hydra/config.yaml``. A folder whose metrics.json or config cannot be read, or whose
    metrics.json holds a value of the wrong kind (``"auc": "n/a"``, a seed that is not an
    integer), is malformed: it is returned with the reason, never tabulated. Raises
    FileNotFoundError if ``root`` is not a folder."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"results folder {root} does not exist (give the folder that holds outputs/ or multirun/)"
        )
    runs, malformed = [], []
    for metrics_path in sorted(root.rglob("metrics.json")):
        run_dir = metrics_path.parent
        config_path = run_dir / ".hydra" / "config.yaml"
        if not config_path.is_file():
            continue
        try:
            metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            malformed.append(Malformed(run_dir, f"metrics.json cannot be read: {error}"))
            continue
        if isinstance(metrics, dict) and not metrics.get("test"):
            continue  # no test metrics: unfinished (find_unfinished_runs)
        problem = _metrics_problem(metrics)
        if problem is not None:
            malformed.append(Malformed(run_dir, problem))
            continue
        try:
            config = OmegaConf.to_container(OmegaConf.load(config_path), resolve=False)
        except Exception as error:  # noqa: BLE001 - any parse failure of the YAML is the run's defect
            malformed.append(Malformed(run_dir, f".hydra/config.yaml cannot be read: {error}"))
            continue
        if not isinstance(config, dict):
            malformed.append(Malformed(run_dir, f".hydra/config.yaml holds a {type(config).__name__}, not a mapping"))
            continue
        runs.append(Run(run_dir, metrics, config))
    return runs, malformed


def find_runs(root: str | Path) -> list[Run]:
    """Every finished, well-formed run under ``root`` (sorted by path); :func:`scan_runs` also
    returns the malformed ones. Raises FileNotFoundError if ``root`` is not a folder."""
    return scan_runs(root)[0]


def find_unfinished_runs(root: str | Path) -> list[Path]:
    """Run directories under ``root`` (sorted) that started but did not finish: a Hydra
    ``.hydra/config.yaml`` or a ``checkpoints/`` folder, and no ``metrics.json`` with test
    metrics (interrupted, failed or still running). :func:`scan_runs` leaves them out; a
    malformed run (it has test metrics that cannot be used) is not unfinished."""
    root = Path(root)
    if not root.is_dir():
        return []
    runs, malformed = scan_runs(root)
    finished = {run.path for run in runs} | {m.path for m in malformed}
    started = {p.parent.parent for p in root.rglob(".hydra/config.yaml")}
    started |= {p.parent for p in root.rglob("checkpoints") if p.is_dir()}
    return sorted(d for d in started if d not in finished)


@dataclass(frozen=True, order=True)
class Block:
    """Runs tabulated together: one dataset, one evaluation protocol, one fairness control."""

    dataset: str
    protocol: str
    control: str

    def title(self, protocol_shown: bool, control_shown: bool) -> str:
        """``dataset`` with the protocol and control when the folder needs them told apart."""
        qualifiers = [f"{self.protocol} protocol"] * protocol_shown + [f"control={self.control}"] * control_shown
        return f"{self.dataset} ({', '.join(qualifiers)})" if qualifiers else self.dataset

    def suffix(self, protocol_shown: bool) -> str:
        """File-name suffix of the block's figures: ``_<protocol>`` when shown, ``_<control>`` for a control."""
        return f"_{self.protocol}" * protocol_shown + f"_{self.control}" * (self.control != "none")


def blocks(runs: Iterable[Run]) -> list[Block]:
    """The (dataset, protocol, control) blocks of ``runs``: by dataset; within it the default
    protocol first; within a protocol the paper's protocol (control ``none``), then the controls
    in their order (refit, inner)."""
    order = {name: k for k, name in enumerate(CONTROLS)}
    return sorted(
        {Block(r.dataset, r.protocol, r.control) for r in runs},
        key=lambda b: (
            b.dataset,
            b.protocol != DEFAULT_PROTOCOL,
            b.protocol,
            order.get(b.control.split("-")[0], len(order)),
            b.control,
        ),
    )


def block_runs(runs: Iterable[Run], block: Block) -> list[Run]:
    """The runs of one block. A control block also takes the paper-protocol runs (control
    ``none``) of the methods the control does not change
    (:func:`lopt.data.controls.control_changes`) and that have no run of their own in the block;
    such rows are borrowed (:func:`is_borrowed`) and the tables say so."""
    runs = [r for r in runs if r.dataset == block.dataset and r.protocol == block.protocol]
    own = [r for r in runs if r.control == block.control]
    if block.control == "none":
        return own
    present = {r.method for r in own}
    borrowed = [
        r
        for r in runs
        if r.control == "none"
        and not r.matched  # matched studies record their borrowed rows in the block itself
        and r.method not in present
        and block.control in CONTROLS
        and not control_changes(block.control, r.learns_lambda)
    ]
    return own + borrowed


def is_borrowed(run: Run, block: Block) -> bool:
    """Whether ``run`` sits in ``block`` as a row borrowed from another block (the paper block's,
    for unmatched records; the one its record names, ``control.borrowed``, for matched ones)."""
    return run.control != block.control or bool((run.metrics.get("control") or {}).get("borrowed"))


def metric_title(key: str) -> str:
    """Display name of a metric key: ``auc`` → AUC, ``ndcg@20`` → NDCG@20, ``recall@10`` → Recall@10."""
    name, at, k = key.partition("@")
    return f"{_TITLES.get(name, name)}{at}{k}"


def available_metrics(runs: Iterable[Run], split: str = "test", prefer: Sequence[str] = METRICS) -> list[str]:
    """The metric keys present in ``metrics.json[split]`` of any run: those of ``prefer`` first
    (in its order), then the others in order of first appearance."""
    seen: dict[str, None] = {}
    for run in runs:
        for key in run.metrics.get(split) or {}:
            seen.setdefault(str(key), None)
    return [m for m in prefer if m in seen] + [m for m in seen if m not in prefer]


def check_metrics(requested: Sequence[str], runs: Sequence[Run], split: str, option: str) -> list[str]:
    """``requested`` if every key is in some run's ``split`` metrics; ValueError naming the
    option and the keys the runs have otherwise."""
    have = available_metrics(runs, split)
    missing = [m for m in requested if m not in have]
    if missing:
        raise ValueError(f"{option}: no run has {split} metric(s) {missing}; the runs have {', '.join(have) or 'none'}")
    return list(requested)


@dataclass(frozen=True)
class Selection:
    """The chosen configuration of one (dataset, method) in a block: its runs (one per seed and
    split; on each split the configuration with the best mean validation score) and why."""

    dataset: str
    method: str
    runs: tuple[Run, ...]
    select_metric: str
    valid_score: float
    n_configs: int
    candidates: tuple[tuple[str, float, int], ...]  # (label, mean valid score, n seeds) per config and split
    borrowed: bool = False

    @property
    def lambda_value(self) -> float | None:
        return self.runs[0].lambda_value if self.runs else None

    @property
    def seeds(self) -> list[int | None]:
        return sorted({r.seed for r in self.runs}, key=lambda s: (s is None, s))

    @property
    def n_splits(self) -> int:
        return len({r.split_params for r in self.runs})

    def mean_std(self, split: str, metric: str) -> tuple[float, float, int]:
        """(mean, sample std — NaN for one run —, n) over the selected runs (seeds × splits)."""
        values = np.array([r.value(split, metric) for r in self.runs], dtype=np.float64)
        values = values[np.isfinite(values)]
        if len(values) == 0:
            return math.nan, math.nan, 0
        std = float(values.std(ddof=1)) if len(values) > 1 else math.nan
        return float(values.mean()), std, len(values)

    def early_stopping(self) -> tuple[int, int, float | None, int | None]:
        """(runs stopped early, runs whose record tells, median best epoch 1-based, epoch cap):
        the convergence of the selected runs (``best_epoch`` + 1: epochs counted from 1, as the log)."""
        told = [r.stopped_early for r in self.runs if r.stopped_early is not None]
        epochs = [r.best_epoch + 1 for r in self.runs if r.best_epoch is not None]
        caps = {r.max_epochs for r in self.runs if r.max_epochs is not None}
        median = float(np.median(epochs)) if epochs else None
        return sum(told), len(told), median, (max(caps) if caps else None)


def _labels(groups: Sequence[Sequence[Run]]) -> list[str]:
    """Labels of configurations of one method: ``λ=…`` when only λ differs, else the differing keys."""
    keys = differing_keys([g[0].config for g in groups])
    if keys == ["model.lambda_value"] or (not keys and groups and groups[0][0].lambda_value is not None):
        return [f"λ={g[0].lambda_value:g}" if g[0].lambda_value is not None else "λ=?" for g in groups]
    labels = config_labels(groups)
    return [label or g[0].config_key for label, g in zip(labels, groups, strict=True)]


def select_configurations(
    runs: Iterable[Run], select_metric: str = "auc", block: Block | None = None
) -> dict[tuple[str, str], Selection]:
    """Per (dataset, method): group runs by split and into configurations (:attr:`Run.config_key`);
    on each split keep the configuration with the best mean VALIDATION ``select_metric`` over its
    seeds (test metrics are never read), one run per seed (the last found when a seed repeats).
    λFix's λ grid is one such case; a method re-tuned on each split keeps each split's choice.
    ``block``: marks the selections whose runs are borrowed from the paper block."""
    grouped: dict[tuple[str, str], dict[str, dict[str, dict[int | None, Run]]]] = {}
    for run in runs:
        by_split = grouped.setdefault((run.dataset, run.method), {})
        by_split.setdefault(run.split_params, {}).setdefault(run.config_key, {})[run.seed] = run
    selections = {}
    for (dataset, method), by_split in grouped.items():
        chosen: list[Run] = []
        scores, candidates, n_configs = [], [], 0
        for split_index, configs in enumerate(by_split[k] for k in sorted(by_split)):
            groups = [tuple(p[s] for s in sorted(p, key=lambda s: (s is None, s))) for p in configs.values()]
            labels = _labels(groups)
            scored = []
            for label, config_runs in zip(labels, groups, strict=True):
                values = np.array([r.value("valid", select_metric) for r in config_runs], dtype=np.float64)
                finite = values[np.isfinite(values)]
                scored.append((float(finite.mean()) if len(finite) else -math.inf, label, config_runs))
            scored.sort(key=lambda item: (-item[0], str(item[2][0].path)))
            best_score, _, best_runs = scored[0]
            chosen += best_runs
            scores.append(best_score)
            n_configs = max(n_configs, len(configs))
            prefix = f"split {split_index + 1}: " if len(by_split) > 1 else ""
            candidates += [
                (f"{prefix}{label}", score, len(r))
                for score, label, r in sorted(scored, key=lambda item: (item[2][0].lambda_value or 0.0, item[1]))
            ]
        borrowed = block is not None and all(is_borrowed(r, block) for r in chosen)
        selections[(dataset, method)] = Selection(
            dataset,
            method,
            tuple(chosen),
            select_metric,
            float(np.mean(scores)),
            n_configs,
            tuple(candidates),
            borrowed,
        )
    return selections


def ordered_methods(methods: Iterable[str]) -> list[str]:
    """The paper's rows first (all of them), then any other method found, alphabetically."""
    found = set(methods)
    return [*PAPER_METHODS, *sorted(found - set(PAPER_METHODS))]


class PerUserError(ValueError):
    """A run's per-user test metrics cannot be read (missing or broken file, absent column)."""

    def __init__(self, run: Path, reason: str) -> None:
        super().__init__(f"{run}: {reason}")
        self.run, self.reason = run, reason


def read_per_user(run: Run, metrics: Sequence[str]) -> pl.DataFrame:
    """``raw_user_id`` (String), ``train_frequency`` and ``metrics`` (Float64, NaN as null) of the
    run's ``per_user_test.parquet``; PerUserError naming the file otherwise."""
    path = run.path / "per_user_test.parquet"
    if not path.is_file():
        raise PerUserError(run.path, "per_user_test.parquet is missing (the run did not finish its results files)")
    try:
        frame = pl.read_parquet(path)
    except Exception as error:  # noqa: BLE001 - any reader failure means the file is unusable
        raise PerUserError(run.path, f"per_user_test.parquet cannot be read: {error}") from None
    missing = [c for c in ("raw_user_id", "train_frequency", *metrics) if c not in frame.columns]
    if missing:
        raise PerUserError(run.path, f"per_user_test.parquet has no column(s) {missing}")
    return frame.select(
        pl.col("raw_user_id").cast(pl.String),
        pl.col("train_frequency").cast(pl.Int64),
        *(pl.col(m).cast(pl.Float64).fill_nan(None) for m in metrics),
    )


def per_user_metrics(runs: Sequence[Run], metric: str) -> pl.DataFrame:
    """Per-user ``metric`` of ``runs`` averaged over the runs (seeds): columns ``raw_user_id``
    (String), ``train_frequency``, ``value``, ``n_runs``. Users with no finite value are dropped."""
    frames = [read_per_user(run, [metric]).rename({metric: "value"}) for run in runs]
    if not frames:
        return pl.DataFrame(
            schema={"raw_user_id": pl.String, "train_frequency": pl.Int64, "value": pl.Float64, "n_runs": pl.UInt32}
        )
    return (
        pl.concat(frames)
        .drop_nulls("value")
        .group_by("raw_user_id")
        .agg(pl.col("train_frequency").first(), pl.col("value").mean(), pl.len().alias("n_runs"))
        .sort("raw_user_id")
    )


def _aligned(keys: pl.DataFrame, frame: pl.DataFrame, metrics: Sequence[str]) -> np.ndarray:
    """(M, n) values of ``frame`` for the users of ``keys``, in their order (NaN where missing)."""
    aligned = keys.join(frame, on="raw_user_id", how="left", maintain_order="left")
    return aligned.select(metrics).to_numpy().astype(np.float64).T


@dataclass(frozen=True)
class Paired:
    """Per-user differences of two methods' runs, paired by split and seed: ``deltas[s]`` is the
    (M, K_s, n_s) array of split s (metric, common seed, common user; NaN where a value is missing)."""

    deltas: tuple[np.ndarray, ...]
    units: int  # (split, seed) pairs
    users: int  # users of the largest split


def paired_deltas(method: Sequence[Run], baseline: Sequence[Run], metrics: Sequence[str]) -> Paired:
    """``method`` − ``baseline`` per user, from EVERY run: the runs are paired by split
    (:attr:`Run.split_params`) and seed, users joined by raw id within a split (those every run of
    the split has). Splits or seeds only one side has are left out. PerUserError names a run whose
    per-user file is unusable."""

    def by_unit(runs: Sequence[Run]) -> dict[str, dict[int | None, Run]]:
        units: dict[str, dict[int | None, Run]] = {}
        for run in runs:
            units.setdefault(run.split_params, {})[run.seed] = run
        return units

    ours, theirs = by_unit(method), by_unit(baseline)
    deltas, units, users = [], 0, 0
    for split in sorted(set(ours) & set(theirs)):
        seeds = sorted(set(ours[split]) & set(theirs[split]), key=lambda s: (s is None, s))
        if not seeds:
            continue
        frames = [(read_per_user(ours[split][s], metrics), read_per_user(theirs[split][s], metrics)) for s in seeds]
        common = frames[0][0]["raw_user_id"]
        for a, b in frames:
            common = common.filter(common.is_in(a["raw_user_id"]) & common.is_in(b["raw_user_id"]))
        common = common.unique().sort()
        if common.len() == 0:
            continue

        keys = pl.DataFrame({"raw_user_id": common})
        delta = np.stack([_aligned(keys, a, metrics) - _aligned(keys, b, metrics) for a, b in frames], axis=1)
        deltas.append(delta)
        units += len(seeds)
        users = max(users, common.len())
    return Paired(tuple(deltas), units, users)


#: Provenance keys that must agree across the runs of one table (different code or different data).
PROVENANCE_MUST_MATCH: tuple[str, ...] = ("git_commit", "split_fingerprint")


class MixedProvenanceError(ValueError):
    """Runs made by different commits or on different prepared splits were put in one table."""


def _by_recorded_value(runs: Sequence[Run], key: str) -> dict[str, list[Path]]:
    """``provenance[key]`` → the run folders recording it ("unknown": no provenance block; "null")."""
    by_value: dict[str, list[Path]] = {}
    for run in runs:
        block = run.metrics.get("provenance")
        if not isinstance(block, dict):
            value = "unknown"
        else:
            value = "null" if block.get(key) is None else str(block.get(key))
        by_value.setdefault(value, []).append(run.path)
    return by_value


def provenance_differences(
    runs: Sequence[Run], keys: Sequence[str] = PROVENANCE_MUST_MATCH
) -> dict[str, dict[str, list[Path]]]:
    """For each of ``keys`` on which ``runs`` disagree: value → the run folders holding it.

    ``split_fingerprint`` is compared among the runs of one declared split (equal
    :attr:`Run.split_params`): several splits of a dataset are one study, one fingerprint each;
    two fingerprints for the same split parameters mean different data. A run without a
    ``provenance`` block (made before lopt recorded it) has the value ``"unknown"``; a run outside
    a git checkout has git_commit ``"null"``."""
    differences = {}
    for key in keys:
        if key != "split_fingerprint":
            by_value = _by_recorded_value(runs, key)
            if len(by_value) > 1:
                differences[key] = by_value
            continue
        by_split: dict[str, list[Run]] = {}
        for run in runs:
            by_split.setdefault(run.split_params, []).append(run)
        merged: dict[str, list[Path]] = {}
        for group in by_split.values():
            by_value = _by_recorded_value(group, key)
            if len(by_value) > 1:
                for value, paths in by_value.items():
                    merged.setdefault(value, []).extend(paths)
        if merged:
            differences[key] = merged
    return differences


def check_provenance(runs: Sequence[Run], allow_mixed: bool = False) -> str | None:
    """None when every run shares one commit and each declared split one fingerprint. Otherwise a report of
    which runs differ: raised as :class:`MixedProvenanceError` unless ``allow_mixed``, else
    returned (for a warning)."""
    differences = provenance_differences(runs)
    if not differences:
        return None
    lines = []
    for key, by_value in differences.items():
        lines.append(f"runs differ in {key}:")
        for value, paths in sorted(by_value.items(), key=lambda item: (-len(item[1]), item[0])):
            lines.append(f"  {value} ({len(paths)} run{'s' if len(paths) > 1 else ''}):")
            lines += [f"    {path}" for path in paths]
    report = "\n".join(lines)
    if not allow_mixed:
        raise MixedProvenanceError(
            f"{report}\nrefusing to mix runs from different commits or prepared splits in one table: "
            "re-run them with one code version on one split, or pass --allow-mixed"
        )
    return report
