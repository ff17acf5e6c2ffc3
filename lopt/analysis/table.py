"""Results tables and the verdict from a folder of finished runs (the paper's numbers beside ours on
its protocol).

    python experiments/reproduce_table.py RESULTS_DIR [--out table.md] [--verdict verdict.md]
        [--latex] [--select-metric auc] [--metrics recall@20,ndcg@20] [--layout auto|paper|generic]
        [--rule decision_rule.yaml] [--strict] [--allow-mixed]

(``lopt table`` runs the same :func:`main`.)

Finds every run under RESULTS_DIR (single runs and multirun jobs: any folder with metrics.json and
.hydra/config.yaml) and writes one table per block: a dataset × evaluation protocol × fairness
control. A folder may mix datasets, protocols and controls; each block shows the metrics its own
runs have. Per block and method it keeps, on each split, the configuration with the best mean
VALIDATION metric over its seeds (for MF-λFix that selects λ from the grid; test metrics never
influence the choice). Configurations are told apart by the config keys in which they differ.

Each block's table gives per method: the runs (seeds × splits), whether the rows are the block's
own or borrowed from the paper block, the fraction of runs that early stopping (not the epoch cap)
ended, the median best epoch (counted from 1) and the cap, and mean ± sample std of every test
metric. A second table gives Δ against MF-λFix (and each claim's contrast, e.g. DUI − D) with an
unadjusted 95 % interval from a hierarchical bootstrap (splits, then seeds, then users) and
Holm-adjusted p-values; ``*`` marks the differences that survive. The decision rule
(``lopt/analysis/decision_rule.yaml``, or ``--rule FILE``) then writes ``verdict.md``: one line per
dataset × block × claim metric. Layouts: ``paper`` puts the paper's value beside each of our cells;
``generic`` shows ours only; ``auto`` (default) is ``paper`` when every run is on the lambdaopt
protocol.

Malformed runs (a metrics.json value that is not a number, an unreadable config, a broken
per-user file) are skipped and listed; ``--strict`` makes them fatal (exit 2).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from lopt.analysis import stats
from lopt.analysis.results import (
    DEFAULT_PROTOCOL,
    Block,
    Malformed,
    MixedProvenanceError,
    PerUserError,
    Run,
    Selection,
    available_metrics,
    block_runs,
    blocks,
    check_metrics,
    check_provenance,
    find_unfinished_runs,
    metric_title,
    ordered_methods,
    paired_deltas,
    scan_runs,
    select_configurations,
)
from lopt.io import atomic_write

PAPER_RESULTS = "paper_results.yaml"  # package data of lopt.analysis
RULE_FILE = "decision_rule.yaml"  # package data of lopt.analysis
PAPER_DATASETS = ("amazon_food", "ml10m")
LAYOUTS = ("auto", "paper", "generic")
TESTS = ("bootstrap", "t")
MISSING = "—"


def load_paper(path: Path | None = None) -> tuple[dict[str, dict[str, dict[str, float]]], dict[str, str]]:
    """(dataset → method → metric → value, dataset aliases) from ``paper_results.yaml`` (the copy
    shipped in the package unless ``path`` names another file)."""
    text = (
        path.read_text(encoding="utf-8")
        if path is not None
        else resources.files("lopt.analysis").joinpath(PAPER_RESULTS).read_text(encoding="utf-8")
    )
    data = yaml.safe_load(text)
    return data.get("datasets", {}), data.get("aliases", {}) or {}


# ------------------------------------------------------------------------------ decision rule
@dataclass(frozen=True)
class Claim:
    """``method`` beats ``against`` on every one of ``metrics``."""

    method: str
    against: str
    metrics: tuple[str, ...]


@dataclass(frozen=True)
class Rule:
    """The decision rule of ``decision_rule.yaml`` (its comments state it in words)."""

    alpha: float
    level: float
    test: str
    replicates: int
    seed: int
    baseline: str
    claims: tuple[Claim, ...]
    source: str

    def describe(self) -> str:
        claims = "; ".join(
            f"{c.method} vs {c.against} on {', '.join(map(metric_title, c.metrics))}" for c in self.claims
        )
        test = (
            "the hierarchical bootstrap's two-sided p"
            if self.test == "bootstrap"
            else "a two-sided paired t-test over the seed × split means"
        )
        return (
            f"Decision rule ({self.source}, fixed before the runs): a difference survives when its Holm-adjusted "
            f"p (across all comparisons × metrics of its table; p from {test}) is below {self.alpha:g}. A claim "
            f"holds in a block when every one of its metrics survives with Δ > 0, is reversed when every one "
            f"survives with Δ < 0, and is not shown otherwise; two rows whose Θ trained on different data (an "
            f"unmatched control) give no verdict. Claims: {claims}."
        )


def load_rule(path: Path | None = None) -> Rule:
    """The decision rule from ``path`` (default: the package's ``decision_rule.yaml``); ValueError
    naming the file and the key on a wrong value."""
    name = str(path) if path is not None else f"lopt/analysis/{RULE_FILE}"
    text = (
        path.read_text(encoding="utf-8")
        if path is not None
        else resources.files("lopt.analysis").joinpath(RULE_FILE).read_text(encoding="utf-8")
    )
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{name}: the decision rule must be a mapping")

    def need(key: str, kind: type, check: Any = lambda v: True, what: str = "") -> Any:
        value = data.get(key)
        if not isinstance(value, kind) or isinstance(value, bool) or not check(value):
            raise ValueError(f"{name}: `{key}` must be {what or kind.__name__}, got {value!r}")
        return value

    alpha = float(need("alpha", (int, float), lambda v: 0 < v < 1, "a number in (0, 1)"))
    level = float(need("level", (int, float), lambda v: 0 < v < 1, "a number in (0, 1)"))
    test = need("test", str, lambda v: v in TESTS, f"one of {', '.join(TESTS)}")
    replicates = need("replicates", int, lambda v: v >= 100, "an integer ≥ 100")
    seed = need("seed", int, lambda v: v >= 0, "an integer ≥ 0")
    baseline = need("baseline", str, bool, "a method label")
    claims = []
    for k, claim in enumerate(data.get("claims") or []):
        if not isinstance(claim, dict) or not all(isinstance(claim.get(x), str) for x in ("method", "against")):
            raise ValueError(f"{name}: `claims[{k}]` needs `method` and `against` method labels")
        metrics = claim.get("metrics")
        if not isinstance(metrics, list) or not metrics or not all(isinstance(m, str) for m in metrics):
            raise ValueError(f"{name}: `claims[{k}].metrics` must be a non-empty list of metric keys")
        claims.append(Claim(claim["method"], claim["against"], tuple(metrics)))
    unknown = set(data) - {"alpha", "level", "test", "replicates", "seed", "baseline", "claims"}
    if unknown:
        raise ValueError(f"{name}: unknown key(s) {sorted(unknown)}")
    return Rule(alpha, level, test, replicates, seed, baseline, tuple(claims), name)


# ------------------------------------------------------------------------------ comparisons
@dataclass
class Comparison:
    """``method`` − ``against`` in one block, on the block's metrics."""

    method: str
    against: str
    metrics: list[str]
    delta: np.ndarray
    low: np.ndarray
    high: np.ndarray
    p: np.ndarray
    p_holm: np.ndarray = field(default_factory=lambda: np.array([]))
    units: int = 0
    splits: int = 0
    users: int = 0
    replicates: int = 0
    matched: bool = True  # both sides' runs trained Θ on the same data (their records say so)
    borrowed: bool = False  # both sides are rows borrowed from the paper block: its comparison, not this block's

    def survives(self, k: int, alpha: float) -> bool:
        return bool(np.isfinite(self.p_holm[k]) and self.p_holm[k] < alpha)


def compare(
    selections: dict[tuple[str, str], Selection],
    dataset: str,
    pairs: Sequence[tuple[str, str]],
    metrics: Sequence[str],
    rule: Rule,
    problems: list[Malformed],
) -> list[Comparison]:
    """Δ, interval and p of each (method, against) pair, Holm-adjusted together. A pair whose
    per-user files cannot be read gets NaN and its run is added to ``problems``."""
    n_tests = len(pairs) * len(metrics)
    replicates = (
        stats.replicates_for(n_tests, rule.alpha, rule.replicates) if rule.test == "bootstrap" else rule.replicates
    )
    nan = np.full(len(metrics), np.nan)
    comparisons = []

    def streams(method: str) -> set[str]:
        return {r.theta_stream for r in selections[(dataset, method)].runs}

    for method, against in pairs:
        matched = streams(method) == streams(against)
        borrowed = selections[(dataset, method)].borrowed and selections[(dataset, against)].borrowed
        try:
            paired = paired_deltas(selections[(dataset, method)].runs, selections[(dataset, against)].runs, metrics)
        except PerUserError as error:
            if all(m.path != error.run for m in problems):
                problems.append(Malformed(error.run, error.reason))
            comparisons.append(Comparison(method, against, list(metrics), nan, nan, nan, nan, matched=matched))
            continue
        if not paired.deltas:  # no common split and seed
            comparisons.append(Comparison(method, against, list(metrics), nan, nan, nan, nan, matched=matched))
            continue
        draws = stats.hierarchical_bootstrap(paired.deltas, replicates, rule.seed)
        low, high = stats.bootstrap_interval(draws, rule.level)
        p = stats.bootstrap_pvalue(draws) if rule.test == "bootstrap" else stats.paired_t(paired.deltas)
        comparisons.append(
            Comparison(
                method,
                against,
                list(metrics),
                stats.point_delta(paired.deltas),
                low,
                high,
                p,
                units=paired.units,
                splits=len(paired.deltas),
                users=paired.users,
                replicates=replicates,
                matched=matched,
                borrowed=borrowed,
            )
        )
    adjusted = stats.holm(np.concatenate([c.p for c in comparisons]) if comparisons else np.array([]))
    for k, comparison in enumerate(comparisons):
        comparison.p_holm = adjusted[k * len(metrics) : (k + 1) * len(metrics)]
    return comparisons


# ------------------------------------------------------------------------------ one block
@dataclass
class BlockReport:
    """Everything tabulated for one block."""

    block: Block
    title: str
    selections: dict[tuple[str, str], Selection]
    methods: list[str]
    metrics: list[str]
    comparisons: list[Comparison]
    matched: bool
    data_note: str


def _theta_note(block: Block, selections: dict[tuple[str, str], Selection]) -> tuple[bool, str]:
    """(matched, sentence): which data each row's Θ trained on, as the records state it."""
    order = ordered_methods(m for _, m in selections)
    streams: dict[str, list[str]] = {}
    for method in order:
        selection = selections.get((block.dataset, method))
        if selection is None:
            continue
        kinds = " / ".join(sorted({r.theta_stream for r in selection.runs}))
        label = f"{method} (borrowed from the paper block)" if selection.borrowed else method
        streams.setdefault(kinds, []).append(label)
    described = "; ".join(f"{', '.join(methods)} train Θ on {kind}" for kind, methods in streams.items())
    if block.control == "none":
        return True, (
            f"Paper protocol (λOpt and SGDA learn Λ on the valid split, the other methods only select on it): "
            f"{described}."
        )
    if len(streams) == 1 and not any(s.borrowed for s in selections.values()):
        return True, f"Matched control: every row trains Θ on the same data ({next(iter(streams))})."
    return False, (
        f"NOT a matched control: {described}. Rows that differ in the data Θ trains on are compared but "
        "give no verdict; rows on the same data do."
    )


def _pairs(selections: dict[tuple[str, str], Selection], dataset: str, methods: Sequence[str], rule: Rule):
    """The block's comparisons: each method against the baseline, then each claim's contrast that
    is not one of those (e.g. DUI − D), where both sides have runs."""
    have = {m for d, m in selections if d == dataset}
    pairs = [(m, rule.baseline) for m in methods if m in have and m != rule.baseline and rule.baseline in have]
    for claim in rule.claims:
        pair = (claim.method, claim.against)
        if claim.method in have and claim.against in have and pair not in pairs:
            pairs.append(pair)
    return pairs


def block_report(
    block: Block,
    runs: Sequence[Run],
    title: str,
    select_metric: str,
    metrics: Sequence[str] | None,
    rule: Rule,
    problems: list[Malformed],
) -> BlockReport | None:
    """The tables of one block (None, with a note on stderr, when its runs lack the select metric)."""
    selected = block_runs(runs, block)
    if select_metric not in available_metrics(selected, "valid"):
        print(f"{title}: skipped, no run of this block has valid metric {select_metric!r}", file=sys.stderr)
        return None
    selections = select_configurations(selected, select_metric, block)
    methods = [m for m in ordered_methods(m for _, m in selections) if (block.dataset, m) in selections]
    columns = list(metrics) if metrics else available_metrics(selected)
    present = [m for m in columns if m in available_metrics(selected)]
    comparisons = compare(
        selections, block.dataset, _pairs(selections, block.dataset, methods, rule), present, rule, problems
    )
    matched, note = _theta_note(block, selections)
    return BlockReport(block, title, selections, methods, columns, comparisons, matched, note)


# ------------------------------------------------------------------------------ formatting
def _fmt(value: float | None, digits: int = 4) -> str:
    return MISSING if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _signed(value: float, digits: int = 4) -> str:
    return MISSING if not math.isfinite(value) else f"{value:+.{digits}f}"


def _fmt_p(p: float) -> str:
    if p is None or not math.isfinite(p):
        return MISSING
    return f"{p:.1e}" if p < 1e-3 else f"{p:.3f}"


def _cell(selection: Selection | None, metric: str) -> str:
    if selection is None:
        return MISSING
    mean, std, n = selection.mean_std("test", metric)
    if n == 0:
        return MISSING
    return _fmt(mean) if n == 1 else f"{_fmt(mean)} ± {_fmt(std)}"


def _runs_cell(selection: Selection | None) -> str:
    if selection is None:
        return MISSING
    seeds, splits = len(selection.seeds), selection.n_splits
    return str(len(selection.runs)) if splits == 1 else f"{seeds} × {splits} splits"


def _stopping_cells(selection: Selection | None) -> tuple[str, str]:
    if selection is None:
        return MISSING, MISSING
    early, told, median, cap = selection.early_stopping()
    stopped = f"{early}/{told}" if told else MISSING
    if median is None:
        return stopped, MISSING
    epoch = f"{median:g}" + (f" / {cap}" if cap is not None else "")
    return stopped, epoch


def _delta_cell(comparison: Comparison, k: int, alpha: float) -> str:
    if not math.isfinite(comparison.delta[k]):
        return MISSING
    mark = " *" if comparison.survives(k, alpha) else ""
    return (
        f"{_signed(comparison.delta[k])} [{_signed(comparison.low[k])}, {_signed(comparison.high[k])}] "
        f"p={_fmt_p(comparison.p_holm[k])}{mark}"
    )


def _selection_note(selection: Selection) -> str:
    seeds = ", ".join(str(s) for s in selection.seeds)
    origin = " (borrowed: paper-protocol runs, the control does not change this method)" if selection.borrowed else ""
    splits = f" on each of {selection.n_splits} splits" if selection.n_splits > 1 else ""
    if selection.n_configs == 1 and len(selection.candidates) == selection.n_splits:
        label = selection.candidates[0][0] if selection.n_splits == 1 else ""
        chosen = f" ({label})" if label.startswith("λ=") else ""
        return f"{selection.method}: 1 configuration{chosen}{splits}, seeds [{seeds}]{origin}"
    scores = "; ".join(
        f"{label}: {_fmt(score)} ({n} seed{'s' if n > 1 else ''})" for label, score, n in selection.candidates
    )
    chosen = (
        f"λ={selection.lambda_value:g}" if selection.lambda_value is not None and selection.n_splits == 1 else "best"
    )
    return (
        f"{selection.method}: {chosen} selected by mean valid {selection.select_metric} over seeds "
        f"[{seeds}]{splits} among {selection.n_configs} configurations ({scores}){origin}"
    )


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _latex_escape(text: str) -> str:
    return (
        str(text)
        .replace("λ", r"$\lambda$")
        .replace("Δ", r"$\Delta$")
        .replace("±", r"$\pm$")
        .replace("Θ", r"$\Theta$")
        .replace("—", "--")
        .replace("%", r"\%")
        .replace("_", r"\_")
        .replace("#", r"\#")
    )


def latex_table(header: Sequence[str], rows: Sequence[Sequence[Any]], caption: str) -> str:
    """A booktabs LaTeX table."""
    spec = "l" + "r" * (len(header) - 1)
    body = [" & ".join(_latex_escape(c) for c in row) + r" \\" for row in rows]
    return "\n".join(
        [
            r"\begin{table}[t]",
            r"\centering",
            rf"\caption{{{_latex_escape(caption)}}}",
            rf"\begin{{tabular}}{{{spec}}}",
            r"\toprule",
            " & ".join(_latex_escape(h) for h in header) + r" \\",
            r"\midrule",
            *body,
            r"\bottomrule",
            r"\end{tabular}",
            r"\end{table}",
        ]
    )


def resolve_layout(layout: str, runs: Sequence[Run]) -> str:
    """``paper`` or ``generic``; ``auto`` is ``paper`` when every run is on the lambdaopt protocol."""
    if layout not in LAYOUTS:
        raise ValueError(f"--layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if layout == "auto":
        return "paper" if all(r.protocol == DEFAULT_PROTOCOL for r in runs) else "generic"
    return layout


def _block_markdown(
    report: BlockReport, layout: str, paper: dict[str, dict[str, float]], rule: Rule
) -> tuple[list[str], list[str]]:
    """(Markdown lines, LaTeX tables) of one block."""
    columns = report.metrics
    header = ["Method", "runs", "rows", "stopped early", "best epoch (median / cap)"]
    for metric in columns:
        title = metric_title(metric)
        header += [title, f"{title} (paper)"] if layout == "paper" else [title]
    rows = []
    for method in ordered_methods(m for _, m in report.selections) if layout == "paper" else report.methods:
        selection = report.selections.get((report.block.dataset, method))
        if selection is None and layout != "paper":
            continue
        origin = MISSING if selection is None else "paper block" if selection.borrowed else "own"
        row = [method, _runs_cell(selection), origin, *_stopping_cells(selection)]
        for metric in columns:
            row.append(_cell(selection, metric))
            if layout == "paper":
                row.append(_fmt(paper.get(method, {}).get(metric, math.nan)))
        rows.append(row)
    md = ["", f"## {report.title}", "", report.data_note, "", markdown_table(header, rows), ""]
    notes = [_selection_note(report.selections[(report.block.dataset, m)]) for m in report.methods]
    md += ["Selection (validation only):", "", *(f"- {n}" for n in notes)]
    tex = [latex_table(header, rows, f"{report.title}: test metrics")]
    if report.comparisons:
        first = next((c for c in report.comparisons if c.replicates), report.comparisons[0])
        metrics = first.metrics
        n_tests = len(report.comparisons) * len(metrics)
        test = "bootstrap" if rule.test == "bootstrap" else "paired t-test over the seed × split means"
        sig_header = ["Method", "vs", "same Θ data", *(f"Δ{metric_title(m)}" for m in metrics), "runs paired", "users"]
        sig_rows = [
            [
                c.method,
                c.against,
                "yes" if c.matched else "no",
                *(_delta_cell(c, k, rule.alpha) for k in range(len(metrics))),
                (f"{c.units}" + (f" ({c.splits} splits)" if c.splits > 1 else "")) if c.units else MISSING,
                c.users or MISSING,
            ]
            for c in report.comparisons
        ]
        md += [
            "",
            f"Δ = method − vs (test; mean over splits, seeds and users, runs paired by split and seed) "
            f"[unadjusted {rule.level:.0%} interval of a hierarchical bootstrap: splits, then seeds, then users; "
            f"{first.replicates} replicates] p = two-sided {test} p, Holm-adjusted over the {n_tests} tests of "
            f"this table; * = survives (adjusted p < {rule.alpha:g}).",
            "",
            markdown_table(sig_header, sig_rows),
        ]
        tex.append(latex_table(sig_header, sig_rows, f"{report.title}: differences (Holm-adjusted p)"))
    return md, tex


def verdict_lines(report: BlockReport, rule: Rule) -> list[str]:
    """One line per claim × metric of the block, then one per claim: what the decision rule says."""
    block = report.block
    where = f"{block.dataset} | {block.protocol} | control={block.control}"
    by_pair = {(c.method, c.against): c for c in report.comparisons}
    lines = []
    for claim in rule.claims:
        comparison = by_pair.get((claim.method, claim.against))
        outcomes = []
        for metric in claim.metrics:
            head = f"- {where} | {metric_title(metric)} | {claim.method} − {claim.against}:"
            if comparison is None:
                lines.append(f"{head} no comparison (a side has no runs in this block)")
                outcomes.append(None)
                continue
            if metric not in comparison.metrics or not math.isfinite(
                comparison.delta[comparison.metrics.index(metric)]
            ):
                lines.append(f"{head} no comparison (no paired per-user {metric} in this block)")
                outcomes.append(None)
                continue
            k = comparison.metrics.index(metric)
            delta = comparison.delta[k]
            survives = comparison.survives(k, rule.alpha)
            word = ("better" if delta > 0 else "worse") if survives else "no difference shown"
            outcomes.append(word)
            decision = (
                "both rows borrowed from the paper block, see its verdict"
                if comparison.borrowed
                else word
                if comparison.matched
                else "Θ trained on different data, no verdict"
            )
            lines.append(
                f"{head} Δ = {_signed(delta)} [{_signed(comparison.low[k])}, {_signed(comparison.high[k])}], "
                f"p = {_fmt_p(comparison.p[k])}, Holm p = {_fmt_p(comparison.p_holm[k])} → {decision}"
            )
        names = " and ".join(metric_title(m) for m in claim.metrics)
        if comparison is not None and comparison.borrowed:
            summary = "no verdict of its own (both rows borrowed from the paper block)"
        elif comparison is not None and not comparison.matched:
            summary = "no verdict (the two rows' Θ trained on different data)"
        elif all(o == "better" for o in outcomes):
            summary = f"HOLDS: {claim.method} beats {claim.against} on {names}"
        elif all(o == "worse" for o in outcomes):
            summary = f"REVERSED: {claim.against} beats {claim.method} on {names}"
        elif any(o is None for o in outcomes):
            summary = "no verdict (missing comparison)"
        else:
            summary = f"NOT SHOWN: {claim.method} does not beat {claim.against} on {names}"
        lines.append(f"- {where} | claim {claim.method} > {claim.against}: {summary}")
    return lines


# ------------------------------------------------------------------------------ the report
@dataclass
class Report:
    """The rendered outputs of one results folder."""

    markdown: str
    latex: str | None
    verdict: str
    skipped: list[Malformed]


def render(
    results_dir: Path,
    select_metric: str = "auc",
    latex: bool = False,
    metrics: Sequence[str] | None = None,
    layout: str = "auto",
    rule: Rule | None = None,
    runs: Sequence[Run] | None = None,
    malformed: Sequence[Malformed] = (),
) -> Report:
    """Tables, LaTeX (with ``latex``) and verdict of the runs under ``results_dir`` (or ``runs``).

    ``metrics``: the columns (default: every test metric a block's runs have, the paper's first);
    ``layout``: see the module docstring. Raises SystemExit naming the option on a metric key that
    no run has."""
    rule = rule or load_rule()
    if runs is None:
        runs, found = scan_runs(results_dir)
        malformed = [*malformed, *found]
    if not runs:
        raise SystemExit(f"no finished runs (metrics.json + .hydra/config.yaml) under {results_dir}")
    try:
        check_metrics([select_metric], runs, "valid", "--select-metric")
        if metrics:
            check_metrics(metrics, runs, "test", "--metrics")
        layout = resolve_layout(layout, runs)
    except ValueError as error:
        raise SystemExit(str(error)) from None
    paper, aliases = load_paper()
    all_blocks = blocks(runs)
    protocol_shown = len({b.protocol for b in all_blocks}) > 1
    control_shown = {b.control for b in all_blocks} != {"none"}
    all_blocks.sort(key=lambda b: aliases.get(b.dataset, b.dataset) not in PAPER_DATASETS)  # stable: paper's first
    beside = "; paper values beside" if layout == "paper" else ""
    md = [
        f"# Results from {results_dir}",
        "",
        f"{len(runs)} runs. Test metrics of the configuration with the best mean validation {select_metric} "
        f"over seeds (mean ± sample std over runs){beside}; {MISSING} = no run. Stopped early: runs that early "
        f"stopping ended before the epoch cap; best epoch counted from 1.",
    ]
    tex: list[str] = []
    verdict = ["# Verdict", "", f"Records: {results_dir}", "", rule.describe(), ""]
    problems = list(malformed)
    for block in all_blocks:
        title = block.title(protocol_shown, control_shown)
        report = block_report(block, runs, title, select_metric, metrics, rule, problems)
        if report is None:
            continue
        paper_ds = paper.get(aliases.get(block.dataset, block.dataset), {}) if layout == "paper" else {}
        block_md, block_tex = _block_markdown(report, layout, paper_ds, rule)
        md += block_md
        tex += block_tex
        verdict += [f"## {title}", "", report.data_note, "", *verdict_lines(report, rule), ""]
    if problems:
        md += ["", f"## Skipped runs ({len(problems)})", ""]
        md += [f"- {m.path}: {m.reason}" for m in problems]
        verdict += [f"Skipped runs: {len(problems)} (listed in the table)."]
    return Report(
        "\n".join(md) + "\n",
        ("\n\n".join(tex) + "\n") if latex else None,
        "\n".join(verdict).rstrip() + "\n",
        problems,
    )


def _list_skipped(skipped: Sequence[Malformed]) -> None:
    print(f"skipped {len(skipped)} malformed run(s):", file=sys.stderr)
    for item in skipped:
        print(f"  {item.path}: {item.reason}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="lopt table", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("results_dir", type=Path, help="folder holding finished runs (searched recursively)")
    parser.add_argument(
        "--out", type=Path, default=None, help="also write the Markdown here (and FILE.tex with --latex)"
    )
    parser.add_argument(
        "--verdict",
        type=Path,
        default=None,
        help="write the verdict here (default: verdict.md beside --out; printed when neither is given)",
    )
    parser.add_argument("--latex", action="store_true", help="also emit LaTeX tables")
    parser.add_argument(
        "--select-metric",
        default="auc",
        help="validation metric key that selects a configuration, any the runs have (default auc)",
    )
    parser.add_argument(
        "--metrics",
        default=None,
        help="comma-separated test metric keys to show, e.g. recall@20,ndcg@20 (default: all each block has)",
    )
    parser.add_argument(
        "--layout",
        default="auto",
        choices=LAYOUTS,
        help="paper: the paper's values beside ours (its protocol); generic: ours only; auto (default): "
        "paper when every run is on the lambdaopt protocol",
    )
    parser.add_argument(
        "--rule", type=Path, default=None, help="decision rule file (default: lopt/analysis/decision_rule.yaml)"
    )
    parser.add_argument(
        "--strict", action="store_true", help="fail (exit 2) on any malformed run instead of skipping it"
    )
    parser.add_argument(
        "--allow-mixed",
        action="store_true",
        help="tabulate runs made by different git commits or on different prepared splits (listed on stderr)",
    )
    args = parser.parse_args(argv)
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
    try:
        rule = load_rule(args.rule)
        runs, malformed = scan_runs(args.results_dir)
        if malformed and args.strict:
            _list_skipped(malformed)
            print("error: --strict: malformed runs (listed above); fix or remove them", file=sys.stderr)
            return 2
        mixed = [check_provenance(block_runs(runs, b), allow_mixed=args.allow_mixed) for b in blocks(runs)]
        report = render(args.results_dir, args.select_metric, args.latex, metrics, args.layout, rule, runs, malformed)
    except (OSError, ValueError, MixedProvenanceError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for note in dict.fromkeys(m for m in mixed if m):
        print(f"warning (--allow-mixed): {note}", file=sys.stderr)
    if report.skipped:
        _list_skipped(report.skipped)
        if args.strict:
            print("error: --strict: malformed runs (listed above); fix or remove them", file=sys.stderr)
            return 2
    print(report.markdown)
    if report.latex is not None:
        print(report.latex)
    verdict_path = args.verdict or (args.out.parent / "verdict.md" if args.out is not None else None)
    if verdict_path is None:
        print(report.verdict)
    unfinished = find_unfinished_runs(args.results_dir)
    if unfinished:  # interrupted/failed/running runs: not in the table
        print(f"ignored {len(unfinished)} unfinished run(s) (no metrics.json):", file=sys.stderr)
        for run_dir in unfinished:
            print(f"  {run_dir}", file=sys.stderr)
    if args.out is not None:
        atomic_write(args.out, lambda tmp: tmp.write_text(report.markdown, encoding="utf-8"))
        if report.latex is not None:
            atomic_write(args.out.with_suffix(".tex"), lambda tmp: tmp.write_text(report.latex, encoding="utf-8"))
    if verdict_path is not None:
        atomic_write(verdict_path, lambda tmp: tmp.write_text(report.verdict, encoding="utf-8"))
        print(f"verdict: {verdict_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
