"""The paper's Figures 2, 7 and 8 from a folder of finished runs (PNG + the data behind as CSV).

    python experiments/figures.py RESULTS_DIR [--out DIR] [--metric auc] [--select-metric auc]
        [--fig2-metrics auc,hr@50,ndcg@50]

(``lopt figures`` runs the same :func:`main`.)

Metrics are picked by name, any key the runs' metrics.json have (e.g. ``--metric ndcg@20
--fig2-metrics recall@20,ndcg@20`` for standard-protocol runs).

Per dataset found under RESULTS_DIR, and per block of runs as in ``reproduce_table.py`` (the
paper's protocol; a fairness control adds ``_<control>`` to the file name, e.g.
``fig7_ml100k_inner``, and takes the runs of the methods it does not change from the paper's):
- ``fig2_<dataset>``: test metrics against λ of the MF-λFix runs (mean ± std over seeds; log-x,
  λ = 0 drawn at a separate "0" tick left of the smallest positive λ); learned-Λ methods as
  horizontal reference lines. Needs λFix runs at two or more λ (a grid, or a study's trials).
- ``fig7_<dataset>``: per-user test metric gain of each MF-λOpt variant over the selected
  MF-λFix (validation-selected, as in the table) by user training-frequency bucket (quintiles of
  the users' training frequency): bars from per-user values averaged over seeds, whiskers the
  min–max over seeds of each seed's gain against λFix's run of the same seed.
- ``fig8_<dataset>``: λ-trajectories (mean over dimensions) of the tracked users and items of one
  λOpt run (DUI first; lowest seed), coloured by frequency stratum, each line labelled with the
  entity's raw id and number of training interactions.
A figure whose runs are absent is skipped with a note; the script fails only if none can be drawn.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from lopt.analysis.results import (
    FIX_METHOD,
    Malformed,
    PerUserError,
    Run,
    Selection,
    available_metrics,
    block_runs,
    blocks,
    check_metrics,
    config_identity,
    config_labels,
    metric_title,
    per_user_metrics,
    scan_runs,
    select_configurations,
)
from lopt.io import atomic_write
from lopt.tracking.trajectories import MEAN_DIM, TRAJECTORY_FILE

if TYPE_CHECKING:
    import matplotlib.figure


def _pyplot() -> Any:
    """matplotlib's pyplot on the non-interactive Agg backend, imported on first use: only drawing
    needs matplotlib, so importing this module (``lopt figures --help``, the table) stays light."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


#: Figure 2's panels when the runs have them (the paper's); otherwise AUC and the first two others.
FIG2_METRICS = ("auc", "hr@50", "ndcg@50")
#: Figure file formats (``--format``); the data behind each figure is always written as CSV too.
FORMATS = ("png", "svg", "pdf")
LAMBDA_OPT_ORDER = ("MF-λOpt-DUI", "MF-λOpt-DU", "MF-λOpt-DI", "MF-λOpt-D")
STRATUM_COLOURS = {"sparse": "tab:red", "median": "tab:orange", "active": "tab:blue"}
LINE_STYLES = ("-", "--", ":", "-.")


def _save(fig: matplotlib.figure.Figure, frame: pl.DataFrame, out: Path, stem: str, fmt: str = "png") -> Path:
    """Write ``stem.<fmt>`` (png, svg or pdf) and ``stem.csv`` atomically; return the figure's path."""
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    path = out / f"{stem}.{fmt}"
    atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=130, bbox_inches="tight"))
    _pyplot().close(fig)
    atomic_write(out / f"{stem}.csv", lambda tmp: frame.write_csv(tmp))
    return path


def _learned_methods(selections: dict[tuple[str, str], Selection], dataset: str) -> list[str]:
    found = [m for d, m in selections if d == dataset and m != FIX_METHOD and m.startswith("MF-λOpt")]
    return sorted(
        found, key=lambda m: (LAMBDA_OPT_ORDER.index(m) if m in LAMBDA_OPT_ORDER else len(LAMBDA_OPT_ORDER), m)
    )


# ------------------------------------------------------------------------------ Figure 2
def default_fig2_metrics(runs: Sequence[Run]) -> list[str]:
    """The paper's panels if the runs have them all, else AUC (if present) and two other metrics."""
    have = available_metrics(runs)
    if all(m in have for m in FIG2_METRICS):
        return list(FIG2_METRICS)
    rest = [m for m in have if m != "auc"]
    return ([m for m in ("auc",) if m in have] + rest)[:3]


def fig2_configurations(runs: Sequence[Run]) -> dict[Path, str]:
    """Run folder → label of its configuration apart from λ: λFix runs that differ in anything but
    λ, the seed and the split (e.g. 1 and 3 epochs) are distinct curves, each labelled by the keys
    in which the configurations differ ("" when they do not)."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        identity = config_identity(run.config)
        (identity.get("model") or {}).pop("lambda_value", None)
        groups.setdefault(json.dumps(identity, sort_keys=True, default=str), []).append(run)
    ordered = [groups[k] for k in sorted(groups)]
    labels = config_labels(ordered, ignore=("model.lambda_value",))
    return {run.path: label for label, group in zip(labels, ordered, strict=True) for run in group}


def fig2_frame(runs: Sequence[Run], dataset: str, metrics: Sequence[str] | None = None) -> pl.DataFrame:
    """Test metrics of the dataset's λFix runs by configuration (apart from λ) and λ: mean, std
    (sample; NaN for one run) and n over seeds and splits."""
    metrics = available_metrics(runs) if metrics is None else metrics
    fix = [r for r in runs if r.dataset == dataset and r.method == FIX_METHOD and r.lambda_value is not None]
    config_of = fig2_configurations(fix)
    rows = [
        {
            "dataset": dataset,
            "config": config_of[r.path],
            "lambda": r.lambda_value,
            "seed": r.seed,
            "metric": m,
            "value": r.value("test", m),
        }
        for r in fix
        for m in metrics
    ]
    if not rows:
        return pl.DataFrame()
    return (
        pl.DataFrame(rows)
        .filter(pl.col("value").is_finite())
        .group_by("dataset", "config", "lambda", "metric")
        .agg(pl.col("value").mean().alias("mean"), pl.col("value").std().alias("std"), pl.len().alias("n"))
        .sort("metric", "config", "lambda")
    )


def lambda_positions(lambdas: np.ndarray) -> tuple[np.ndarray, float | None]:
    """x positions on a log axis: λ > 0 as is; λ = 0 one decade below the smallest positive λ
    (returned as the second value, None when no λ is 0)."""
    positive = lambdas[lambdas > 0]
    zero_at = float(10 ** (math.floor(math.log10(positive.min())) - 1)) if len(positive) else 1.0
    x = np.where(lambdas > 0, lambdas, zero_at)
    return x, (zero_at if np.any(lambdas <= 0) else None)


def figure2(
    runs: Sequence[Run],
    selections: dict[tuple[str, str], Selection],
    dataset: str,
    out: Path,
    metrics: Sequence[str] = FIG2_METRICS,
    stem: str | None = None,
    title: str = "",
    fmt: str = "png",
) -> Path | None:
    frame = fig2_frame(runs, dataset, metrics)
    if frame.height == 0 or frame.group_by("config").agg(pl.col("lambda").n_unique())["lambda"].max() < 2:
        return None  # no configuration has two λ: no curve to draw
    learned = _learned_methods(selections, dataset)
    configs = frame["config"].unique(maintain_order=True).sort().to_list()
    fig, axes = _pyplot().subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        x_all = []
        for config in configs:
            part = frame.filter((pl.col("metric") == metric) & (pl.col("config") == config)).sort("lambda")
            if part.height == 0:
                continue
            x_all.append(part["lambda"].to_numpy().astype(np.float64))
        lambdas_all = np.concatenate(x_all) if x_all else np.array([1.0])
        _, zero_at = lambda_positions(lambdas_all)
        for c, config in enumerate(configs):
            part = frame.filter((pl.col("metric") == metric) & (pl.col("config") == config)).sort("lambda")
            if part.height == 0:
                continue
            lambdas = part["lambda"].to_numpy().astype(np.float64)
            x = np.where(lambdas > 0, lambdas, zero_at if zero_at is not None else 1.0)
            std = np.nan_to_num(part["std"].to_numpy().astype(np.float64), nan=0.0)
            label = f"{FIX_METHOD} (test)" + (f" {config}" if config else "")
            style = {"color": "black"} if len(configs) == 1 else {"color": f"C{c + len(learned)}"}
            ax.errorbar(x, part["mean"].to_numpy(), yerr=std, marker="o", capsize=3, label=label, **style)
        x = np.where(lambdas_all > 0, lambdas_all, zero_at if zero_at is not None else 1.0)
        for k, method in enumerate(learned):
            mean, _, n = selections[(dataset, method)].mean_std("test", metric)
            if n:
                ax.axhline(mean, linestyle="--", color=f"C{k}", label=method)
        ax.set_xscale("log")
        ticks = sorted(set(x.tolist()))
        ax.set_xticks(ticks)
        ax.set_xticklabels(["0" if zero_at is not None and t == zero_at else f"{t:g}" for t in ticks], rotation=45)
        ax.set_xlabel("λ (MF-λFix, log scale; 0 at the left)")
        ax.set_ylabel(f"test {metric_title(metric)}")
        ax.set_title(f"{dataset}: {metric_title(metric)} vs λ")
        ax.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"Figure 2{title} — sensitivity of MF-λFix to λ")
    fig.tight_layout()
    return _save(fig, frame, out, stem or f"fig2_{dataset}", fmt)


# ------------------------------------------------------------------------------ Figure 7
def frequency_buckets(frequency: np.ndarray, n_buckets: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """(bucket index per user, edges): quantile buckets of training frequency (merged on ties)."""
    edges = np.unique(np.quantile(frequency, np.linspace(0, 1, n_buckets + 1)))
    if len(edges) < 2:
        edges = np.array([frequency.min(), frequency.max() + 1])
    bucket = np.clip(np.searchsorted(edges, frequency, side="right") - 1, 0, len(edges) - 2)
    return bucket, edges


def _bucket_means(runs: Sequence[Run], metric: str, bucket_of: pl.DataFrame) -> pl.DataFrame:
    """Per bucket: mean per-user ``metric`` of ``runs`` (seed-averaged per user first)."""
    return (
        per_user_metrics(runs, metric)
        .join(bucket_of, on="raw_user_id")
        .group_by("bucket")
        .agg(pl.col("value").mean().alias("value"))
    )


def fig7_frame(
    selections: dict[tuple[str, str], Selection],
    dataset: str,
    metric: str,
    n_buckets: int = 5,
    problems: list[Malformed] | None = None,
) -> pl.DataFrame:
    """Per λOpt method and frequency bucket: users, mean λFix / method metric, gain and relative gain
    (%) of the seed-averaged users, and the spread of the relative gain over seeds: each of the
    method's seeds against λFix's run of the same seed (λFix's seed average when it lacks that
    seed), ``rel_gain_pct_std`` (sample std, NaN for one seed), ``rel_gain_pct_min``/``_max``, ``seeds``.
    A λOpt method with an unusable per-user file is left out (its run added to ``problems`` when
    given, else the PerUserError propagates); λFix's own failure always propagates."""
    fix = selections.get((dataset, FIX_METHOD))
    learned = _learned_methods(selections, dataset)
    if fix is None or not learned:
        return pl.DataFrame()
    base = per_user_metrics(fix.runs, metric)
    fix_by_seed = {(r.split_params, r.seed): r for r in fix.runs}
    rows = []
    for method in learned:
        runs = selections[(dataset, method)].runs
        try:
            own = per_user_metrics(runs, metric)
        except PerUserError as error:
            if problems is None:
                raise
            problems.append(Malformed(error.run, error.reason))
            continue
        joined = own.join(base, on="raw_user_id", suffix="_fix")
        if joined.height == 0:
            continue
        bucket, edges = frequency_buckets(joined["train_frequency"].to_numpy(), n_buckets)
        bucket_of = pl.DataFrame({"raw_user_id": joined["raw_user_id"], "bucket": bucket})
        grouped = (
            joined.with_columns(pl.Series("bucket", bucket))
            .group_by("bucket")
            .agg(
                pl.len().alias("users"), pl.col("value_fix").mean().alias("fix"), pl.col("value").mean().alias("method")
            )
            .sort("bucket")
        )
        per_seed = []  # one frame per seed: bucket → relative gain (%) of that seed over λFix
        for run in runs:
            unit = (run.split_params, run.seed)
            paired = [fix_by_seed[unit]] if unit in fix_by_seed else list(fix.runs)
            seed_gain = _bucket_means([run], metric, bucket_of).join(
                _bucket_means(paired, metric, bucket_of), on="bucket", suffix="_fix"
            )
            per_seed.append(
                seed_gain.select(
                    "bucket", (100.0 * (pl.col("value") - pl.col("value_fix")) / pl.col("value_fix")).alias("g")
                )
            )
        spread = (
            pl.concat(per_seed)
            .group_by("bucket")
            .agg(
                pl.col("g").std().alias("rel_gain_pct_std"),
                pl.col("g").min().alias("rel_gain_pct_min"),
                pl.col("g").max().alias("rel_gain_pct_max"),
                pl.len().alias("seeds"),
            )
        )
        spread_of = {row[0]: row[1:] for row in spread.iter_rows()}
        for b, users, fix_mean, method_mean in grouped.iter_rows():
            lo = int(math.ceil(edges[b]))
            last = b == len(edges) - 2  # buckets are [lo, hi) except the last, [lo, hi]
            hi = int(math.floor(edges[b + 1])) if last else int(math.ceil(edges[b + 1])) - 1
            std, low, high, seeds = spread_of.get(b, (math.nan, math.nan, math.nan, 0))
            rows.append(
                {
                    "dataset": dataset,
                    "method": method,
                    "metric": metric,
                    "bucket": int(b),
                    "freq_lo": lo,
                    "freq_hi": hi,
                    "label": f"{lo}–{hi}" if hi > lo else f"{lo}",
                    "users": users,
                    "fix": fix_mean,
                    "value": method_mean,
                    "gain": method_mean - fix_mean,
                    "rel_gain_pct": 100.0 * (method_mean - fix_mean) / fix_mean if fix_mean else math.nan,
                    "rel_gain_pct_std": math.nan if std is None else std,
                    "rel_gain_pct_min": low,
                    "rel_gain_pct_max": high,
                    "seeds": seeds,
                }
            )
    return pl.DataFrame(rows) if rows else pl.DataFrame()


def figure7(
    selections: dict[tuple[str, str], Selection],
    dataset: str,
    metric: str,
    out: Path,
    stem: str,
    title: str = "",
    fmt: str = "png",
    problems: list[Malformed] | None = None,
) -> Path | None:
    frame = fig7_frame(selections, dataset, metric, problems=problems)
    if frame.height == 0:
        return None
    methods = frame["method"].unique(maintain_order=True).to_list()
    buckets = frame.select("bucket", "label", "users").unique("bucket").sort("bucket")
    fig, ax = _pyplot().subplots(figsize=(7.5, 4))
    width = 0.8 / len(methods)
    for k, method in enumerate(methods):
        part = frame.filter(pl.col("method") == method).sort("bucket")
        x = part["bucket"].to_numpy() + (k - (len(methods) - 1) / 2) * width
        mean = part["rel_gain_pct"].to_numpy()
        low = mean - part["rel_gain_pct_min"].to_numpy()
        high = part["rel_gain_pct_max"].to_numpy() - mean
        ax.bar(x, mean, width=width, label=method, color=f"C{k}")
        # the range of the per-seed gains (each seed against λFix's run of that seed)
        ax.errorbar(x, mean, yerr=np.vstack([low, high]), fmt="none", ecolor="black", elinewidth=0.8, capsize=2)
    seeds = int(frame["seeds"].max())
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(buckets["bucket"].to_numpy())
    ax.set_xticklabels(
        [f"{lab}\n({n} users)" for lab, n in zip(buckets["label"], buckets["users"], strict=True)], fontsize=8
    )
    ax.set_xlabel("user training frequency (quintile buckets: sparse → active)")
    ax.set_ylabel(f"relative gain in test {metric_title(metric)} over {FIX_METHOD} (%)")
    ax.set_title(
        f"Figure 7 — {dataset}{title}: gain of λOpt over the validation-selected λFix by user frequency\n"
        f"bars: seed-averaged users; whiskers: min–max over {seeds} seed{'s' if seeds != 1 else ''}",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, frame, out, stem, fmt)


# ------------------------------------------------------------------------------ Figure 8
def trajectory_run(runs: Sequence[Run], dataset: str) -> Run | None:
    """The λOpt run whose trajectories are drawn: DUI first, then DU, DI, D, others; lowest seed."""
    candidates = [r for r in runs if r.dataset == dataset and (r.path / TRAJECTORY_FILE).is_file()]
    if not candidates:
        return None

    def rank(run: Run) -> tuple[int, int, str]:
        order = LAMBDA_OPT_ORDER.index(run.method) if run.method in LAMBDA_OPT_ORDER else len(LAMBDA_OPT_ORDER)
        return order, run.seed if run.seed is not None else 1 << 30, str(run.path)

    return min(candidates, key=rank)


def figure8(runs: Sequence[Run], dataset: str, out: Path, stem: str, title: str = "", fmt: str = "png") -> Path | None:
    run = trajectory_run(runs, dataset)
    if run is None:
        return None
    frame = pl.read_parquet(run.path / TRAJECTORY_FILE).filter(pl.col("dim") == MEAN_DIM)
    if frame.height == 0:
        return None
    fig, axes = _pyplot().subplots(1, 2, figsize=(11, 4), squeeze=False)
    for ax, side in zip(axes[0], ("user", "item"), strict=True):
        part = frame.filter(pl.col("side") == side)
        order = part.select("entity_id", "frequency").unique().sort("frequency", "entity_id")["entity_id"]
        for k, entity in enumerate(order.to_list()):
            series = part.filter(pl.col("entity_id") == entity).sort("step")
            stratum = series["stratum"][0]
            ax.plot(
                series["step"].to_numpy(),
                series["value"].to_numpy(),
                color=STRATUM_COLOURS.get(stratum, "gray"),
                linestyle=LINE_STYLES[k % len(LINE_STYLES)],
                label=f"{side} {series['raw_id'][0]} ({series['frequency'][0]} train, {stratum})",
                linewidth=1.2,
                alpha=0.85,
            )
        ax.set_xlabel("training step")
        ax.set_ylabel(f"λ of the {side} (mean over dimensions)")
        ax.set_title(f"{side}s tracked by training-frequency stratum")
        ax.grid(True, alpha=0.3)
        ax.legend(title="raw id (training interactions, stratum)", fontsize=6, title_fontsize=7, ncol=2)
    fig.suptitle(f"Figure 8 — {dataset}{title}: λ-trajectories, {run.method} seed {run.seed}")
    fig.tight_layout()
    csv = frame.with_columns(pl.lit(str(run.path)).alias("run"), pl.lit(run.method).alias("method"))
    return _save(fig, csv, out, stem, fmt)


def _list_skipped(skipped: Sequence[Malformed]) -> None:
    print(f"skipped {len(skipped)} malformed run(s):", file=sys.stderr)
    for item in skipped:
        print(f"  {item.path}: {item.reason}", file=sys.stderr)


def _attempt(draw: Callable[..., Path | None], arguments: tuple | None, problems: list[Malformed]) -> Path | None:
    """``draw(*arguments)``; None when ``arguments`` is None (the block lacks what it needs) or a
    run's per-user file is unusable (that run is added to ``problems``)."""
    if arguments is None:
        return None
    try:
        return draw(*arguments)
    except PerUserError as error:
        problems.append(Malformed(error.run, error.reason))
        return None


def make_figures(
    results_dir: Path,
    out: Path,
    metric: str = "auc",
    select_metric: str = "auc",
    fig2_metrics: Sequence[str] | None = None,
    fmt: str = "png",
    strict: bool = False,
) -> list[Path]:
    """Every figure that the runs under ``results_dir`` allow, one set per block (dataset ×
    protocol × control, as the table's); returns the figure paths. Metrics are keys of the runs'
    metrics.json (SystemExit naming the option when no run has one); a block whose runs lack a
    metric skips the figures that need it. Malformed runs are skipped and listed on stderr
    (``strict``: SystemExit instead)."""
    if fmt not in FORMATS:
        raise SystemExit(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    runs, malformed = scan_runs(results_dir)
    if malformed:
        _list_skipped(malformed)
        if strict:
            raise SystemExit("error: --strict: malformed runs (listed above); fix or remove them")
    if not runs:
        raise SystemExit(f"no finished runs (metrics.json + .hydra/config.yaml) under {results_dir}")
    try:
        check_metrics([metric], runs, "test", "--metric")
        check_metrics([select_metric], runs, "valid", "--select-metric")
        if fig2_metrics:
            check_metrics(fig2_metrics, runs, "test", "--fig2-metrics")
    except ValueError as error:
        raise SystemExit(str(error)) from None
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    problems: list[Malformed] = []
    all_blocks = blocks(runs)
    protocol_shown = len({b.protocol for b in all_blocks}) > 1  # named like the table's blocks
    control_shown = {b.control for b in all_blocks} != {"none"}
    for block in all_blocks:
        block_set = block_runs(runs, block)
        title = block.title(protocol_shown, control_shown)[len(block.dataset) :]
        stem = f"{block.dataset}{block.suffix(protocol_shown)}"
        have = available_metrics(block_set)
        if select_metric not in available_metrics(block_set, "valid"):
            print(f"{block.dataset}{title}: skipped, no run has valid metric {select_metric!r}", file=sys.stderr)
            continue
        selections = select_configurations(block_set, select_metric, block)
        panels = [m for m in (fig2_metrics or default_fig2_metrics(block_set)) if m in have]
        attempts = (
            (
                "Figure 2 (needs MF-λFix runs at two or more λ)",
                figure2,
                (block_set, selections, block.dataset, out, panels, f"fig2_{stem}", title, fmt) if panels else None,
            ),
            (
                f"Figure 7 (needs MF-λFix and MF-λOpt runs with test {metric})",
                figure7,
                (selections, block.dataset, metric, out, f"fig7_{stem}", title, fmt, problems)
                if metric in have
                else None,
            ),
            (
                f"Figure 8 (needs a run with {TRAJECTORY_FILE})",
                figure8,
                (block_set, block.dataset, out, f"fig8_{stem}", title, fmt),
            ),
        )
        for name, draw, arguments in attempts:
            path = _attempt(draw, arguments, problems)
            if path is None:
                print(f"{block.dataset}{title}: skipped {name}", file=sys.stderr)
            else:
                written.append(path)
                print(path)
    if problems:
        _list_skipped(problems)
        if strict:
            raise SystemExit("error: --strict: malformed runs (listed above); fix or remove them")
    if not written:
        raise SystemExit(f"no figure could be drawn from the runs under {results_dir}")
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="lopt figures", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("results_dir", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: RESULTS_DIR/figures)")
    parser.add_argument("--metric", default="auc", help="test metric key of Figure 7 (default auc)")
    parser.add_argument("--select-metric", default="auc", help="validation metric key selecting λFix's λ (default auc)")
    parser.add_argument(
        "--fig2-metrics",
        default=None,
        help="comma-separated metric keys of Figure 2's panels (default: auc,hr@50,ndcg@50 when present)",
    )
    parser.add_argument("--format", default="png", choices=FORMATS, help="figure file format (default png)")
    parser.add_argument(
        "--strict", action="store_true", help="fail (exit 2) on any malformed run instead of skipping it"
    )
    args = parser.parse_args(argv)
    panels = [m.strip() for m in args.fig2_metrics.split(",") if m.strip()] if args.fig2_metrics else None
    try:
        make_figures(
            args.results_dir,
            args.out or args.results_dir / "figures",
            args.metric,
            args.select_metric,
            panels,
            args.format,
            args.strict,
        )
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except SystemExit as error:
        if isinstance(error.code, str):
            print(error.code if error.code.startswith("error:") else f"error: {error.code}", file=sys.stderr)
            return 2
        raise
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
