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
    def control(self) -> str:
        """The fairness control of the run (``none``: the paper's protocol; also for runs that
        predate the key)."""
        return str((self.metrics.get("control") or {}).get("name") or "none")

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
    def config_key(self) -> str:
        """A fingerprint of everything in the config that changes the model (not the seed,
        paths, logging or tracking): runs with equal keys are seeds of one configuration."""
        node = {k: v for k, v in self.config.items() if k not in NON_CONFIG_KEYS}
        node = json.loads(json.dumps(node, default=str))
        for path in NON_CONFIG_PATHS:
            parent = node
            for key in path[:-1]:
                parent = parent.get(key, {}) if isinstance(parent, dict) else {}
            if isinstance(parent, dict):
                parent.pop(path[-1], None)
        return hashlib.sha1(json.dumps(node, sort_keys=True).encode()).hexdigest()[:12]


def find_runs(root: str | Path) -> list[Run]:
    """Every finished run under ``root`` (sorted by path). Raises if ``root`` is not a folder;
    skips (and names, on stderr) folders whose metrics.json cannot be read."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"results folder {root} does not exist (give the folder that holds outputs/ or multirun/)"
        )
    runs = []
    for metrics_path in sorted(root.rglob("metrics.json")):
        run_dir = metrics_path.parent
        config_path = run_dir / ".hydra" / "config.yaml"
        if not config_path.is_file():
            continue
        try:
            metrics = json.loads(metrics_path.read_text())
            config = OmegaConf.to_container(OmegaConf.load(config_path), resolve=False)
        except (OSError, ValueError) as error:
            import sys

            print(f"skipping {run_dir}: {error}", file=sys.stderr)
            continue
        if not isinstance(metrics, dict) or not metrics.get("test"):
            continue
        runs.append(Run(run_dir, metrics, config if isinstance(config, dict) else {}))
    return runs


def find_unfinished_runs(root: str | Path) -> list[Path]:
    """Run directories under ``root`` (sorted) that started but did not finish: a Hydra
    ``.hydra/config.yaml`` or a ``checkpoints/`` folder, and no ``metrics.json`` with test
    metrics (interrupted, failed or still running). :func:`find_runs` leaves them out."""
    root = Path(root)
    if not root.is_dir():
        return []
    finished = {run.path for run in find_runs(root)}
    started = {p.parent.parent for p in root.rglob(".hydra/config.yaml")}
    started |= {p.parent for p in root.rglob("checkpoints") if p.is_dir()}
    return sorted(d for d in started if d not in finished)


def table_blocks(runs: Iterable[Run]) -> list[tuple[str, str]]:
    """The (protocol, control) blocks of ``runs``: the default protocol first; within a protocol
    the paper's protocol (control ``none``), then the controls in their order (refit, inner)."""
    order = {name: k for k, name in enumerate(CONTROLS)}
    return sorted(
        {(r.protocol, r.control) for r in runs},
        key=lambda b: (b[0] != DEFAULT_PROTOCOL, b[0], order.get(b[1], len(order)), b[1]),
    )


def block_runs(runs: Iterable[Run], protocol: str, control: str) -> list[Run]:
    """The runs of one (protocol, control) block. A control block also takes the paper-protocol
    runs (control ``none``) of the methods the control does not change
    (:func:`lopt.data.controls.control_changes`): under the switch they would run exactly so.
    A method with runs of its own in the block keeps only those."""
    runs = [r for r in runs if r.protocol == protocol]
    own = [r for r in runs if r.control == control]
    if control == "none":
        return own
    present = {(r.dataset, r.method) for r in own}
    borrowed = [
        r
        for r in runs
        if r.control == "none"
        and (r.dataset, r.method) not in present
        and not control_changes(control, r.learns_lambda)
    ]
    return own + borrowed


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
    """The chosen configuration of one (dataset, method): its runs (one per seed) and why."""

    dataset: str
    method: str
    runs: tuple[Run, ...]
    select_metric: str
    valid_score: float
    n_configs: int
    candidates: tuple[tuple[str, float, int], ...]  # (label, mean valid score, n seeds) per config

    @property
    def lambda_value(self) -> float | None:
        return self.runs[0].lambda_value if self.runs else None

    @property
    def seeds(self) -> list[int | None]:
        return [r.seed for r in self.runs]

    def mean_std(self, split: str, metric: str) -> tuple[float, float, int]:
        """(mean, sample std — NaN for one seed —, n) over the selected runs' seeds."""
        values = np.array([r.value(split, metric) for r in self.runs], dtype=np.float64)
        values = values[np.isfinite(values)]
        if len(values) == 0:
            return math.nan, math.nan, 0
        std = float(values.std(ddof=1)) if len(values) > 1 else math.nan
        return float(values.mean()), std, len(values)


def _config_label(runs: Sequence[Run]) -> str:
    lam = runs[0].lambda_value
    return f"λ={lam:g}" if lam is not None else runs[0].config_key


def select_configurations(runs: Iterable[Run], select_metric: str = "auc") -> dict[tuple[str, str], Selection]:
    """Per (dataset, method): group runs into configurations (:attr:`Run.config_key`), keep the
    one with the best mean VALIDATION ``select_metric`` over its seeds (test metrics are never
    read), one run per seed (the last found when a seed repeats). λFix's λ grid is one such case."""
    grouped: dict[tuple[str, str], dict[str, dict[int | None, Run]]] = {}
    for run in runs:
        configs = grouped.setdefault((run.dataset, run.method), {})
        configs.setdefault(run.config_key, {})[run.seed] = run
    selections = {}
    for (dataset, method), configs in grouped.items():
        scored = []
        for per_seed in configs.values():
            config_runs = tuple(per_seed[s] for s in sorted(per_seed, key=lambda s: (s is None, s)))
            values = np.array([r.value("valid", select_metric) for r in config_runs], dtype=np.float64)
            finite = values[np.isfinite(values)]
            score = float(finite.mean()) if len(finite) else -math.inf
            scored.append((score, config_runs))
        scored.sort(key=lambda item: (-item[0], str(item[1][0].path)))
        best_score, best_runs = scored[0]
        candidates = tuple(
            (_config_label(r), s, len(r))
            for s, r in sorted(scored, key=lambda item: (item[1][0].lambda_value or 0.0, str(item[1][0].path)))
        )
        selections[(dataset, method)] = Selection(
            dataset, method, best_runs, select_metric, best_score, len(configs), candidates
        )
    return selections


def ordered_methods(methods: Iterable[str]) -> list[str]:
    """The paper's rows first (all of them), then any other method found, alphabetically."""
    found = set(methods)
    return [*PAPER_METHODS, *sorted(found - set(PAPER_METHODS))]


def per_user_metrics(runs: Sequence[Run], metric: str) -> pl.DataFrame:
    """Per-user ``metric`` of ``runs`` averaged over the runs (seeds): columns ``raw_user_id``
    (String), ``train_frequency``, ``value``, ``n_runs``. Users with no finite value are dropped."""
    frames = []
    for run in runs:
        path = run.path / "per_user_test.parquet"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: the run at {run.path} did not finish its results files")
        frame = pl.read_parquet(path, columns=["raw_user_id", "train_frequency", metric])
        frames.append(
            frame.select(
                pl.col("raw_user_id").cast(pl.String),
                pl.col("train_frequency").cast(pl.Int64),
                pl.col(metric).cast(pl.Float64).fill_nan(None).alias("value"),
            )
        )
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


def paired_wilcoxon(method: Sequence[Run], baseline: Sequence[Run], metric: str) -> tuple[float, float, int]:
    """(mean per-user difference method − baseline, two-sided p-value, n users) of a paired
    Wilcoxon signed-rank test over users, each user's metric averaged over the seeds of each side
    first; users are joined by raw id. p is NaN when every difference is zero or n < 2."""
    from scipy.stats import wilcoxon

    joined = per_user_metrics(method, metric).join(per_user_metrics(baseline, metric), on="raw_user_id", suffix="_base")
    diff = (joined["value"] - joined["value_base"]).to_numpy()
    n = len(diff)
    if n == 0:
        return math.nan, math.nan, 0
    mean = float(diff.mean())
    if n < 2 or not np.any(diff != 0):
        return mean, math.nan, n
    return mean, float(wilcoxon(diff, zero_method="wilcox", alternative="two-sided").pvalue), n


#: Provenance keys that must agree across the runs of one table (different code or different data).
PROVENANCE_MUST_MATCH: tuple[str, ...] = ("git_commit", "split_fingerprint")


class MixedProvenanceError(ValueError):
    """Runs made by different commits or on different prepared splits were put in one table."""


def provenance_differences(
    runs: Sequence[Run], keys: Sequence[str] = PROVENANCE_MUST_MATCH
) -> dict[str, dict[str, list[Path]]]:
    """For each of ``keys`` on which ``runs`` disagree: value → the run folders holding it.

    A run without a ``provenance`` block (made before lopt recorded it) has the value
    ``"unknown"``; a run outside a git checkout has git_commit ``"null"``."""
    differences = {}
    for key in keys:
        by_value: dict[str, list[Path]] = {}
        for run in runs:
            block = run.metrics.get("provenance")
            value = (
                "unknown"
                if not isinstance(block, dict)
                else str(block.get(key))
                if block.get(key) is not None
                else "null"
            )
            by_value.setdefault(value, []).append(run.path)
        if len(by_value) > 1:
            differences[key] = by_value
    return differences


def check_provenance(runs: Sequence[Run], allow_mixed: bool = False) -> str | None:
    """None when every run shares one commit and one split fingerprint. Otherwise a report of
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
