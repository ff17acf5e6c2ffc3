"""Results tables from a folder of finished runs (the paper's numbers beside ours on its protocol).

    python experiments/reproduce_table.py RESULTS_DIR [--out table.md] [--latex] [--select-metric auc]
        [--metrics recall@20,ndcg@20] [--layout auto|paper|generic]

(``lopt table`` runs the same :func:`main`.)

Layouts: ``paper`` puts the paper's value beside each of our cells (meaningful for runs on the
paper's "lambdaopt" protocol); ``generic`` shows our values only, for any metric keys. ``auto``
(default) is ``paper`` when every run is on the lambdaopt protocol, else ``generic``. Runs on
different protocols or fairness controls are never mixed: each (dataset, protocol, control) gets
its own table. ``--metrics``
picks the columns (default: every metric the runs have, the paper's first), ``--select-metric``
any validation metric key the runs have.

Finds every run under RESULTS_DIR (single runs and multirun jobs: any folder with metrics.json
and .hydra/config.yaml), groups runs by dataset and method, and per (dataset, method) keeps the
configuration with the best mean VALIDATION metric over its seeds — for MF-λFix that selects λ
from the grid; test metrics never influence the choice. Cells are the mean ± sample std of the
test metrics over the selected configuration's seeds, "—" where no run exists. A second table per
dataset holds a paired Wilcoxon signed-rank test over users of each method against the selected
MF-λFix: each user's metric is first averaged over the seeds of each method (seed-averaged, so
methods with different seed sets still pair up), users joined by raw id.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from lopt.analysis.results import (
    DEFAULT_PROTOCOL,
    FIX_METHOD,
    METRICS,
    MixedProvenanceError,
    Run,
    Selection,
    available_metrics,
    block_runs,
    check_metrics,
    check_provenance,
    find_runs,
    find_unfinished_runs,
    metric_title,
    ordered_methods,
    paired_wilcoxon,
    select_configurations,
    table_blocks,
)
from lopt.io import atomic_write

PAPER_RESULTS = "paper_results.yaml"  # package data of lopt.analysis
PAPER_DATASETS = ("amazon_food", "ml10m")
LAYOUTS = ("auto", "paper", "generic")
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


def _fmt(value: float, digits: int = 4) -> str:
    return MISSING if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


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


def _selection_note(selection: Selection, control: str = "none") -> str:
    seeds = ", ".join(str(s) for s in selection.seeds)
    borrowed = control != "none" and all(r.control == "none" for r in selection.runs)
    origin = f" (paper-protocol runs: control={control} does not change this method)" if borrowed else ""
    if selection.n_configs == 1:
        return f"{selection.method}: 1 configuration, seeds [{seeds}]{origin}"
    scores = "; ".join(
        f"{label}: {_fmt(score)} ({n} seed{'s' if n > 1 else ''})" for label, score, n in selection.candidates
    )
    chosen = f"λ={selection.lambda_value:g}" if selection.lambda_value is not None else "best"
    return (
        f"{selection.method}: {chosen} selected by mean valid {selection.select_metric} over seeds "
        f"[{seeds}] among {selection.n_configs} configurations ({scores}){origin}"
    )


def build_rows(
    selections: dict[tuple[str, str], Selection],
    dataset: str,
    paper: dict[str, dict[str, float]],
    methods: Sequence[str],
    metrics: Sequence[str] = METRICS,
) -> list[dict[str, Any]]:
    """One row per method: ours (mean ± std, n seeds) and the paper's value for every metric."""
    rows = []
    for method in methods:
        selection = selections.get((dataset, method))
        row: dict[str, Any] = {"method": method, "n": len(selection.runs) if selection else 0}
        for metric in metrics:
            row[metric] = _cell(selection, metric)
            row[f"{metric} (paper)"] = _fmt(paper.get(method, {}).get(metric, math.nan))
        rows.append(row)
    return rows


def significance_rows(
    selections: dict[tuple[str, str], Selection],
    dataset: str,
    methods: Sequence[str],
    metrics: Sequence[str] = METRICS,
) -> list[dict[str, Any]]:
    """Per method with runs (not λFix): Δ mean per-user metric vs λFix and the Wilcoxon p-value."""
    fix = selections.get((dataset, FIX_METHOD))
    if fix is None:
        return []
    rows = []
    for method in methods:
        selection = selections.get((dataset, method))
        if selection is None or method == FIX_METHOD:
            continue
        row: dict[str, Any] = {"method": method}
        for metric in metrics:
            delta, p, n = paired_wilcoxon(selection.runs, fix.runs, metric)
            row[metric] = (
                f"{'+' if delta >= 0 else ''}{_fmt(delta)} (p={_fmt_p(p)})" if math.isfinite(delta) else MISSING
            )
            row["users"] = n
        rows.append(row)
    return rows


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


def render(
    results_dir: Path,
    select_metric: str = "auc",
    latex: bool = False,
    metrics: Sequence[str] | None = None,
    layout: str = "auto",
) -> tuple[str, str | None]:
    """(Markdown report, LaTeX tables or None) for the runs under ``results_dir``.

    ``metrics``: the columns (default: every test metric the runs have, the paper's first);
    ``layout``: see the module docstring. Raises SystemExit naming the option on a metric key
    that no run has."""
    runs = find_runs(results_dir)
    if not runs:
        raise SystemExit(f"no finished runs (metrics.json + .hydra/config.yaml) under {results_dir}")
    try:
        check_metrics([select_metric], runs, "valid", "--select-metric")
        columns = check_metrics(metrics, runs, "test", "--metrics") if metrics else available_metrics(runs)
        layout = resolve_layout(layout, runs)
    except ValueError as error:
        raise SystemExit(str(error)) from None
    paper, aliases = load_paper()
    protocols = sorted({r.protocol for r in runs}, key=lambda p: (p != DEFAULT_PROTOCOL, p))
    header = ["Method", "seeds"]
    for metric in columns:
        header += (
            [metric_title(metric), f"{metric_title(metric)} (paper)"] if layout == "paper" else [metric_title(metric)]
        )
    sig_header = ["Method", *(f"Δ{metric_title(m)}" for m in columns), "users"]

    beside = "; paper values beside" if layout == "paper" else ""
    md = [
        f"# Results from {results_dir}",
        "",
        f"{len(runs)} runs. Test metrics of the configuration with the best mean validation "
        f"{select_metric} over seeds (mean ± sample std over seeds){beside}; {MISSING} = no run.",
    ]
    tex: list[str] = []
    controls = {r.control for r in runs}
    for protocol, control in table_blocks(runs):
        selections = select_configurations(block_runs(runs, protocol, control), select_metric)
        datasets = sorted({d for d, _ in selections}, key=lambda d: (aliases.get(d, d) not in PAPER_DATASETS, d))
        methods = ordered_methods(m for _, m in selections)
        qualifiers = [f"{protocol} protocol"] * (len(protocols) > 1) + [f"control={control}"] * (controls != {"none"})
        for dataset in datasets:
            title = f"{dataset} ({', '.join(qualifiers)})" if qualifiers else dataset
            paper_ds = paper.get(aliases.get(dataset, dataset), {}) if layout == "paper" else {}
            rows = build_rows(selections, dataset, paper_ds, methods, columns)
            if layout == "paper":
                table_rows = [
                    [r["method"], r["n"] or MISSING, *(x for m in columns for x in (r[m], r[f"{m} (paper)"]))]
                    for r in rows
                ]
            else:
                table_rows = [[r["method"], r["n"] or MISSING, *(r[m] for m in columns)] for r in rows if r["n"]]
            md += ["", f"## {title}", "", markdown_table(header, table_rows), ""]
            notes = [_selection_note(selections[(dataset, m)], control) for m in methods if (dataset, m) in selections]
            md += ["Selection (validation only):", "", *(f"- {n}" for n in notes)]
            sig = significance_rows(selections, dataset, methods, columns)
            if sig:
                md += [
                    "",
                    f"Paired Wilcoxon signed-rank test over users vs {FIX_METHOD} (two-sided; per-user test "
                    "metrics averaged over each method's seeds, users joined by raw id): mean per-user Δ (p).",
                    "",
                    markdown_table(sig_header, [[r["method"], *(r[m] for m in columns), r["users"]] for r in sig]),
                ]
            if latex:
                what = "ours vs paper" if layout == "paper" else "ours"
                tex.append(latex_table(header, table_rows, f"{title}: test metrics ({what})"))
                if sig:
                    tex.append(
                        latex_table(
                            sig_header,
                            [[r["method"], *(r[m] for m in columns), r["users"]] for r in sig],
                            f"{title}: paired Wilcoxon vs {FIX_METHOD}",
                        )
                    )
    return "\n".join(md) + "\n", ("\n\n".join(tex) + "\n") if latex else None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results_dir", type=Path, help="folder holding finished runs (searched recursively)")
    parser.add_argument(
        "--out", type=Path, default=None, help="also write the Markdown here (and FILE.tex with --latex)"
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
        help="comma-separated test metric keys to show, e.g. recall@20,ndcg@20 (default: all the runs have)",
    )
    parser.add_argument(
        "--layout",
        default="auto",
        choices=LAYOUTS,
        help="paper: the paper's values beside ours (its protocol); generic: ours only; auto (default): "
        "paper when every run is on the lambdaopt protocol",
    )
    parser.add_argument(
        "--allow-mixed",
        action="store_true",
        help="tabulate runs made by different git commits or on different prepared splits (listed on stderr)",
    )
    args = parser.parse_args(argv)
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
    try:
        mixed = check_provenance(find_runs(args.results_dir), allow_mixed=args.allow_mixed)
        markdown, latex = render(args.results_dir, args.select_metric, args.latex, metrics, args.layout)
    except (FileNotFoundError, MixedProvenanceError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if mixed:
        print(f"warning (--allow-mixed): {mixed}", file=sys.stderr)
    print(markdown)
    if latex is not None:
        print(latex)
    unfinished = find_unfinished_runs(args.results_dir)
    if unfinished:  # interrupted/failed/running runs: not in the table
        print(f"ignored {len(unfinished)} unfinished run(s) (no metrics.json):", file=sys.stderr)
        for run_dir in unfinished:
            print(f"  {run_dir}", file=sys.stderr)
    if args.out is not None:
        atomic_write(args.out, lambda tmp: tmp.write_text(markdown, encoding="utf-8"))
        if latex is not None:
            tex_path = args.out.with_suffix(".tex")
            atomic_write(tex_path, lambda tmp: tmp.write_text(latex, encoding="utf-8"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
