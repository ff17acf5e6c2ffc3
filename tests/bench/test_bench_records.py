"""experiments/bench/RESULTS.md quotes its rounds' figures from the records committed beside it
(``experiments/bench/round7/*.json``, ``round8/*.json``, written by bench.py): every figure a
round states from them must be the record's, in the format it is quoted in."""

from __future__ import annotations

import copy
import json
from typing import Any

from tests.helpers.cli import REPO_ROOT

BENCH = REPO_ROOT / "experiments" / "bench"
ROUND = "## Round 7"
RECORDS = ("study_users_subset4.json", "study_threads1_subset4.json", "study_users_full.json", "ml100k.json")
ROUND8 = "## Round 8"
RECORDS8 = (
    "ml100k.json",
    "ml100k_before.json",
    "ml10m.json",
    "gather.json",
    "ml100k_checkpoint_run1.json",
    "ml100k_checkpoint_run2.json",
)


def _section(heading: str = ROUND) -> str:
    text = (BENCH / "RESULTS.md").read_text(encoding="utf-8")
    start = text.index(heading)
    end = text.find("\n## Round", start + len(heading))
    return text[start : end if end != -1 else len(text)]


def _records(folder: str = "round7", names: tuple[str, ...] = RECORDS) -> dict[str, dict[str, Any]]:
    return {name: json.loads((BENCH / folder / name).read_text(encoding="utf-8")) for name in names}


def _study_cell(seconds: float, by_method: dict[str, float]) -> str:
    return f"{seconds:,.1f} s ({by_method['fix']:,.1f}, {by_method['dui']:,.1f})"


def _quoted(records: dict[str, dict[str, Any]]) -> list[str]:
    """The figures the section quotes, formatted from the records."""
    users, threads1 = records["study_users_subset4.json"], records["study_threads1_subset4.json"]
    full, ml100k = records["study_users_full.json"], records["ml100k.json"]
    quoted = []
    for pair in (users, threads1):
        quoted += [
            _study_cell(pair["ml100k_study_seconds_before"], pair["ml100k_study_seconds_before_by_method"]),
            _study_cell(pair["ml100k_study_seconds"], pair["ml100k_study_seconds_by_method"]),
            f"**{pair['ml100k_study_ratio']:.2f}**",
        ]
    quoted.append(
        _study_cell(threads1["ml100k_study_seconds_shared"], threads1["ml100k_study_seconds_shared_by_method"])
    )
    quoted.append(_study_cell(full["ml100k_study_seconds"], full["ml100k_study_seconds_by_method"]))
    for key in ("bare_step", "fix_step", "dui_step", "dui_eager_step", "bare_eval", "eval"):
        quoted.append(f"{ml100k[f'ml100k_{key}_seconds'] * 1e3:.1f} ms")
    for key in ("seconds_fix", "eval_seconds_fix", "seconds_dui", "eval_seconds_dui", "eval_seconds_dui_eager"):
        quoted.append(f"{ml100k[f'ml100k_epoch_{key}']:.2f} s")
    for key in ("fix_over_bare", "dui_over_fix_epoch", "epoch_eval_over_epoch"):
        quoted.append(f"**{ml100k[f'ml100k_ratio_{key}']:.2f}**")
    quoted.append(f"{ml100k['startup_seconds']:.1f} s")
    return quoted


def _ml100k_figures(record: dict[str, Any]) -> list[str]:
    quoted = [f"{record[f'ml100k_{key}_seconds'] * 1e3:.1f} ms" for key in ML100K_STEPS]
    quoted += [f"{record[f'ml100k_epoch_{key}']:.2f} s" for key in ("eval_seconds_dui_eager",)]
    quoted.append(f"{record['ml100k_epoch_seconds_fix']:.2f} s / {record['ml100k_epoch_eval_seconds_fix']:.2f} s")
    quoted.append(f"{record['ml100k_epoch_seconds_dui']:.2f} s / {record['ml100k_epoch_eval_seconds_dui']:.2f} s")
    quoted.append(f"{record['ml100k_ratio_fix_step_over_bare']:.2f}")
    for key in ("fix_over_bare", "dui_over_fix_epoch", "epoch_eval_over_epoch"):
        quoted.append(f"**{record[f'ml100k_ratio_{key}']:.2f}**")
    quoted.append(f"{record['startup_seconds']:.1f} s")
    return quoted


ML100K_STEPS = ("bare_step", "fix_step", "dui_step", "dui_eager_step", "bare_eval", "eval")


def _quoted8(records: dict[str, dict[str, Any]]) -> list[str]:
    """Round 8's figures, formatted from its records (each ml-100k row pairs before | after)."""
    after, before = records["ml100k.json"], records["ml100k_before.json"]
    ml10m, gather = records["ml10m.json"], records["gather.json"]
    quoted = [f"| {b} | {a} |" for b, a in zip(_ml100k_figures(before), _ml100k_figures(after), strict=True)]
    quoted.append(f"| before ({before['ml100k_code_commit'][:7]}) | after ({after['ml100k_code_commit'][:7]}) |")
    for key in ("fix_step", "opt_d_step", "opt_dui_step", "opt_dui_adam_step", "floor_adam"):
        quoted.append(f"| {ml10m[f'{key}_seconds'] * 1e3:.1f} ms |")
    for key in ("ratio_d_over_fix", "ratio_dui_over_fix", "ratio_dui_adam_over_fix", "ratio_fix_over_floor"):
        quoted.append(f"| **{ml10m[key]:.2f}** |")
    quoted.append(f"| **{ml10m['loop_overhead_fraction'] * 100:.1f} %** |")
    quoted.append(f"| {ml10m['eval_seconds']:.1f} s |")
    quoted.append(f"| {ml10m['epoch_seconds_fix']:.1f} s / {ml10m['epoch_seconds_dui']:.1f} s |")
    quoted.append(f"this run ({ml10m['code_commit'][:7]})")
    ratios = gather["gather_ratio_dense_over_sparse"]
    quoted.append("dense / row-sparse " + ", ".join(f"{r:.2f}" for r in ratios) + ".")
    rows = gather["gather_rows_per_gather"]
    quoted.append(", ".join(str(r) for r in rows[:-1]) + f", {rows[-1]} table rows per user")
    quoted.append(f"The threshold sits at {gather['gather_dense_rows_per_gather']},")
    # the prose repeats the ml-100k and ML-10M headline figures
    quoted.append(f"{before['ml100k_eval_seconds'] * 1e3:.1f} →\n  {after['ml100k_eval_seconds'] * 1e3:.1f} ms")
    quoted.append(f"`ml100k_ratio_dui_over_fix_epoch` {after['ml100k_ratio_dui_over_fix_epoch']:.2f}")
    quoted.append(f"`ml100k_ratio_fix_over_bare` {after['ml100k_ratio_fix_over_bare']:.2f}")
    quoted.append(f"`ml100k_ratio_epoch_eval_over_epoch` {after['ml100k_ratio_epoch_eval_over_epoch']:.2f}")
    quoted.append(f"The step is {after['ml100k_ratio_fix_step_over_bare']:.2f}× the bare step")
    gap = (after["ml100k_epoch_eval_seconds_fix"] - after["ml100k_epoch_seconds_fix"]) * 1e3
    quoted.append(f"{gap:.0f} ms between an")
    quoted.append(f"{after['ml100k_bare_eval_seconds'] * 1e3:.1f} ms: exact ranks")
    quoted.append(f"{ml10m['ratio_fix_over_floor']:.1f}× one fused Adam pass")
    quoted.append(f"Trainer's {ml10m['loop_overhead_fraction'] * 100:.0f} % loop overhead")
    # the two runs at the checkpoint change, side by side
    run1, run2 = records["ml100k_checkpoint_run1.json"], records["ml100k_checkpoint_run2.json"]
    quoted.append(f"(`{run1['ml100k_code_commit'][:7]}`; `ml100k_checkpoint_run1.json`")
    assert run1["ml100k_code_commit"] == run2["ml100k_code_commit"]

    def pair(run: dict[str, Any]) -> str:
        return f"{run['ml100k_bare_step_seconds'] * 1e3:.1f} ms / {run['ml100k_fix_step_seconds'] * 1e3:.1f} ms"

    def epochs(run: dict[str, Any], key: str) -> str:
        return f"{run[f'ml100k_epoch_seconds_{key}']:.2f} s / {run[f'ml100k_epoch_eval_seconds_{key}']:.2f} s"

    quoted.append(f"| {pair(run1)} | {pair(run2)} |")
    quoted.append(f"| {run1['ml100k_eval_seconds'] * 1e3:.1f} ms | {run2['ml100k_eval_seconds'] * 1e3:.1f} ms |")
    for key in ("fix", "dui"):
        quoted.append(f"| {epochs(run1, key)} | {epochs(run2, key)} |")
    for key in ("fix_over_bare", "epoch_eval_over_epoch", "dui_over_fix_epoch"):
        quoted.append(f"| **{run1[f'ml100k_ratio_{key}']:.2f}** | **{run2[f'ml100k_ratio_{key}']:.2f}** |")
    for run in (run1, run2):
        load = run["ml100k_load_avg"]
        quoted.append(f"{load['before'][0]:.1f} → {load['after'][0]:.1f}")
    return quoted


def _missing(records: dict[str, dict[str, Any]], heading: str = ROUND) -> list[str]:
    section = _section(heading)
    quoted = _quoted8(records) if heading == ROUND8 else _quoted(records)
    return [figure for figure in quoted if figure not in section]


def test_latest_round_quotes_its_records() -> None:
    missing = _missing(_records("round8", RECORDS8), ROUND8)
    assert not missing, f"RESULTS.md {ROUND8} does not quote these figures of its records: {missing}"


def test_round_7_quotes_its_records() -> None:
    assert not _missing(_records()), f"RESULTS.md {ROUND} does not quote these figures of its records"


def test_a_figure_that_differs_from_its_record_is_caught() -> None:
    records = copy.deepcopy(_records())
    records["study_users_subset4.json"]["ml100k_study_seconds_before"] += 0.1
    records["ml100k.json"]["ml100k_ratio_dui_over_fix_epoch"] += 0.01
    assert len(_missing(records)) == 2


def test_a_round_8_figure_that_differs_from_its_record_is_caught() -> None:
    records = copy.deepcopy(_records("round8", RECORDS8))
    records["ml100k_before.json"]["ml100k_eval_seconds"] += 0.001
    records["ml10m.json"]["ratio_dui_over_fix"] += 0.01
    records["gather.json"]["gather_ratio_dense_over_sparse"][2] += 0.01
    assert len(_missing(records, ROUND8)) >= 3


def test_round_8_verdicts_on_the_two_checkpoint_runs_follow_from_their_ratios() -> None:
    """The section's words about the two runs at the checkpoint change: the λFix/bare ratio met
    in both, the epoch eval/no-eval ratio met in exactly one."""
    section = _section(ROUND8)
    records = _records("round8", RECORDS8)
    runs = [records["ml100k_checkpoint_run1.json"], records["ml100k_checkpoint_run2.json"]]
    assert "`ml100k_ratio_fix_over_bare` is met in both runs" in section
    assert all(run["ml100k_ratio_fix_over_bare"] <= 1.3 for run in runs)
    assert "met in one run, missed in the other" in section
    assert sum(run["ml100k_ratio_epoch_eval_over_epoch"] <= 1.2 for run in runs) == 1


def test_no_section_of_results_is_repeated() -> None:
    """Each ``###`` section is written once: a round's text pasted into other rounds would quote
    its figures under the wrong round's heading and code."""
    text = (BENCH / "RESULTS.md").read_text(encoding="utf-8")
    sections = [part.strip() for part in text.split("\n### ")[1:]]
    bodies = ["\n".join(section.split("\n")[1:]).split("\n## ")[0].strip() for section in sections]
    repeated = {section.split("\n")[0] for section, body in zip(sections, bodies) if body and bodies.count(body) > 1}
    assert not repeated, f"RESULTS.md repeats these sections: {sorted(repeated)}"


ROUND9 = "## Round 9"
RECORDS9 = (
    "ml100k.json",
    "ml100k_before.json",
    "ml10m.json",
    "ml10m_before.json",
    "gather.json",
    "metrics_change.json",
)


def _quoted9(records: dict[str, dict[str, Any]]) -> list[str]:
    """Round 9's figures: the two tables ``bench.py --compare`` prints, the gather ratios, the
    metric changes, and the figures its prose repeats, all formatted from the records."""
    import sys

    sys.path.insert(0, str(BENCH.parent))
    import bench

    quoted = [
        bench.format_comparison(records["ml100k_before.json"], records["ml100k.json"]),
        bench.format_comparison(records["ml10m_before.json"], records["ml10m.json"]),
    ]
    gather = records["gather.json"]
    quoted.append(", ".join(str(r) for r in gather["gather_rows_per_gather"]))
    quoted.append("row-sparse " + ", ".join(f"{r:.2f}" for r in gather["gather_ratio_fused_over_sparse"]) + ".")
    for method, run in records["metrics_change.json"]["runs"].items():
        quoted.append(
            f"`ml100k_{method}` differs by at most {run['max_abs_difference']:.1e} in any of its "
            f"{len(run['before'])} valid and test metrics ({len(run['keys_identical'])} of them identical)"
        )
    before, after = records["ml100k_before.json"], records["ml100k.json"]
    quoted.append(f"{before['ml100k_bare_step_seconds'] * 1e3:.2f} to {after['ml100k_bare_step_seconds'] * 1e3:.2f} ms")
    drift = 1 - after["ml100k_bare_step_seconds"] / before["ml100k_bare_step_seconds"]
    quoted.append(f"moved by {drift * 100:.0f} %")
    sparse = [records[name]["fix_sparse_step_seconds"] * 1e3 for name in ("ml10m_before.json", "ml10m.json")]
    quoted.append(f"took {sparse[0]:.1f} ms in one run and {sparse[1]:.1f} ms in the other")
    ratios = [
        records[b][key] / records[a][key]
        for a, b in (("ml10m_before.json", "ml10m.json"), ("ml10m.json", "ml10m_before.json"))
        for key in ("fix_sparse_step_seconds", "opt_d_sparse_step_seconds", "opt_dui_sparse_step_seconds")
    ]
    quoted.append(f"differ by up to {(max(ratios) - 1) * 100:.0f} %")
    round8 = json.loads((BENCH / "round8" / "ml10m.json").read_text(encoding="utf-8"))
    quoted.append(f"above round 8's {round8['loop_overhead_fraction'] * 100:.1f} %")
    return quoted


def test_round9_quotes_the_compare_tables_and_its_records() -> None:
    records = _records("round9", RECORDS9)
    section = _section(ROUND9)
    missing = [figure for figure in _quoted9(records) if figure not in section]
    assert not missing, f"Round 9 of RESULTS.md does not quote these as its records give them: {missing}"
    for name in ("ml100k.json", "ml10m.json", "gather.json"):
        commit = next(v for k, v in records[name].items() if k.endswith("code_commit"))
        assert commit.startswith("ad55163"), (name, commit)


ROUND10 = "## Round 10"
RECORDS10 = (
    "ml100k.json",
    "ml100k_before.json",
    "lookahead.json",
    "lookahead_eager.json",
    "metrics_change.json",
    "study.json",
)


def _quoted10(records: dict[str, dict[str, Any]]) -> list[str]:
    """Round 10's figures: the tables ``bench.py --compare`` prints, the metric changes, the study
    cells, and the figures its prose repeats, all formatted from the records."""
    import sys

    sys.path.insert(0, str(BENCH.parent))
    import bench

    before, after = records["ml100k_before.json"], records["ml100k.json"]
    compiled, eager = records["lookahead.json"], records["lookahead_eager.json"]
    quoted = [bench.format_comparison(before, after), bench.format_lookahead(compiled, eager)]
    for method, run in records["metrics_change.json"]["runs"].items():
        quoted.append(
            f"`ml100k_{method}` differs by at most {run['max_abs_difference']:.1e} in any of its "
            f"{len(run['before'])} valid and test metrics ({len(run['keys_identical'])} of them identical)"
        )
    quoted.append(f"{before['ml100k_bare_step_seconds'] * 1e3:.2f} to {after['ml100k_bare_step_seconds'] * 1e3:.2f} ms")
    quoted.append(
        f"moved by {(1 - after['ml100k_bare_step_seconds'] / before['ml100k_bare_step_seconds']) * 100:.0f} %"
    )
    quoted.append(f"takes {compiled['lookahead_ml100k_ratio_dense_over_rows']:.2f} of the")
    sizes, ratios = compiled["lookahead_rows_per_triple"], compiled["lookahead_ratio_dense_over_rows"]
    quoted.append(f"({ratios[sizes.index(2.0)]:.2f} at 2, {ratios[sizes.index(4.0)]:.2f} at 4)")
    eager_at_2 = eager["lookahead_ratio_dense_over_rows"][eager["lookahead_rows_per_triple"].index(2.0)]
    quoted.append(
        f"({eager_at_2:.2f} at 2; on ml-100k's {eager['lookahead_ml100k_rows_per_triple']:.2f}, "
        f"{eager['lookahead_ml100k_ratio_dense_over_rows']:.2f})"
    )
    n_users, n_items, _ = bench.SHAPES["ml10m"]
    quoted.append(f"({n_users:,} + {n_items:,} rows for 10,240 +")
    quoted.append(f"10,240 triples, {(n_users + n_items) / (2 * 10_240):.2f} per triple)")
    ratio = "ml100k_ratio_epoch_eval_over_epoch"
    quoted.append(f"is {before[ratio]:.2f} in the before run and {after[ratio]:.2f} in the after run")
    study = records["study.json"]
    for prefix in ("ml100k_study_seconds_before", "ml100k_study_seconds", "ml100k_study_seconds_shared"):
        quoted.append(_study_cell(study[prefix], study[f"{prefix}_by_method"]))
    quoted.append(f"**{study['ml100k_study_ratio']:.2f}**")
    for method in ("fix", "dui"):
        by_method = (
            study["ml100k_study_seconds_by_method"][method] / study["ml100k_study_seconds_before_by_method"][method]
        )
        quoted.append(f"{method}: {by_method:.2f}")
    shared = study["ml100k_study_seconds_shared"] / study["ml100k_study_seconds"]
    quoted.append(f"took {shared:.2f} of the launcher's time")
    round7 = _records("round7", ("study_users_subset4.json", "study_threads1_subset4.json"))
    users, pinned = (round7[name]["ml100k_study_ratio"] for name in round7)
    quoted.append(f"(after /\nbefore {users:.2f} as users run them, {pinned:.2f} with the threads pinned alike)")
    return quoted


def test_round10_quotes_the_compare_tables_and_its_records() -> None:
    records = _records("round10", RECORDS10)
    section = _section(ROUND10)
    missing = [figure for figure in _quoted10(records) if figure not in section]
    assert not missing, f"Round 10 of RESULTS.md does not quote these as its records give them: {missing}"
    for name in ("ml100k.json", "lookahead.json", "lookahead_eager.json"):
        commit = next(v for k, v in records[name].items() if k.endswith("code_commit"))
        assert commit.startswith("f2f3196"), (name, commit)
    assert records["ml100k_before.json"]["ml100k_code_commit"].startswith("06016d5")
    assert records["lookahead.json"]["lookahead_compiled"] and not records["lookahead_eager.json"]["lookahead_compiled"]


ROUND11 = "## Round 11"
RECORDS11 = (
    "ml100k.json",
    "ml100k_before.json",
    "lookahead.json",
    "lookahead_eager.json",
    "floor.json",
    "floor_ml10m.json",
    "metrics_change.json",
    "rss.json",
)


def _quoted11(records: dict[str, dict[str, Any]]) -> list[str]:
    """Round 11's figures: the tables ``bench.py`` prints from its records (``--compare`` of the
    ml-100k pair and of the two --lookahead records, ``format_floor``), and the figures its prose
    repeats, all formatted from the records."""
    import sys

    sys.path.insert(0, str(BENCH.parent))
    import bench

    before, after = records["ml100k_before.json"], records["ml100k.json"]
    compiled, eager = records["lookahead.json"], records["lookahead_eager.json"]
    floor = records["floor.json"]
    quoted = [
        bench.format_comparison(before, after),
        bench.format_lookahead(compiled, eager),
        bench.format_floor(floor),
        bench.format_floor_synthetic(records["floor_ml10m.json"]),
    ]
    runs = records["metrics_change.json"]["runs"]
    identical = all(len(run["keys_identical"]) == len(run["before"]) for run in runs.values())
    assert identical, "round 11 states its metrics are identical"
    quoted.append(f"all {sum(len(run['before']) for run in runs.values())} valid and test metrics of")
    quoted.append(", ".join(f"`ml100k_{method}`" for method in runs))
    ratio = "lookahead_ml100k_ratio_dense_over_dense_backward"
    quoted.append(f"takes {compiled[ratio]:.2f} of the round 10 route's time compiled and {eager[ratio]:.2f} eager")
    sizes = compiled["lookahead_rows_per_triple"]
    quoted.append(f"{compiled['lookahead_ratio_dense_over_rows'][sizes.index(2.0)]:.2f} here")
    quoted.append(f"gives DUI/λFix {floor['floor_ml100k_min_ratio_dui_over_fix_epoch']:.2f}")
    quoted.append(f"for an epoch of {floor['floor_ml100k_steps_per_epoch']} steps")
    measured, least = floor["floor_ml100k_ratio_dui_over_fix_epoch"], floor["floor_ml100k_min_ratio_dui_over_fix_epoch"]
    quoted.append(f"The measured bare ratio ({measured:.2f}) is {measured - least:.2f} above the bare floor")
    extra = floor["floor_ml100k_valid_bpr_seconds"] + floor["floor_ml100k_lambda_step_seconds"]
    steps = floor["floor_ml100k_steps_per_epoch"]
    quoted.append(f"the same {steps} × {extra * 1e3:.2f} ms added")
    trainer_floors = [
        (run["ml100k_epoch_eval_seconds_fix"] + steps * extra) / run["ml100k_epoch_eval_seconds_fix"]
        for run in (before, after)
    ]
    quoted.append(f"gives {trainer_floors[0]:.2f} (before) and {trainer_floors[1]:.2f} (after)")
    bare_before, bare_after = before["ml100k_bare_step_seconds"], after["ml100k_bare_step_seconds"]
    quoted.append(f"went from {bare_before * 1e3:.2f} to {bare_after * 1e3:.2f} ms")
    quoted.append(f"(it moved by {abs(bare_after / bare_before - 1) * 100:.0f} %)")
    rss = records["rss.json"]
    quoted.append(f"this round's library: {rss['peak_rss_mb_ml10m_dui_run']:,.0f} MB (target")
    quoted.append(f"(load {rss['rss_load_avg']['before'][0]:.2f} → {rss['rss_load_avg']['after'][0]:.2f})")
    assert rss["rss_run_shape"] == "ml10m" and rss["rss_run_epochs"] == 3
    ml10m = records["floor_ml10m.json"]
    share = ml10m["floor_ml10m_valid_bpr_seconds"] / ml10m["floor_ml10m_fix_step_seconds"]
    quoted.append(f"backward alone cost {share:.2f} of a λFix step")
    quoted.append(f"1-minute load {ml10m['floor_ml10m_load_avg']['before'][0]:.2f} at its start")
    for method in ("d", "dui", "dui_adam"):
        assert ml10m[f"floor_ml10m_min_ratio_{method}_over_fix"] > {"d": 1.2, "dui": 1.3, "dui_adam": 1.5}[method]
    overhead = json.loads((BENCH / "round9" / "ml10m.json").read_text(encoding="utf-8"))["loop_overhead_fraction"]
    fix = ml10m["floor_ml10m_fix_step_seconds"] * (1 + overhead)
    bpr, adam = ml10m["floor_ml10m_valid_bpr_seconds"], ml10m["floor_ml10m_lambda_adam_step_seconds"]
    quoted.append(f"`loop_overhead_fraction` {overhead * 100:.1f} %")
    with_trainer = ((fix + bpr) / fix, (fix + bpr + adam) / fix)
    quoted.append(f"the same parts give {with_trainer[0]:.2f} for D and DUI and {with_trainer[1]:.2f} for DUI-Adam")
    assert with_trainer[0] > 1.3 and with_trainer[1] > 1.5
    return quoted


def test_round11_quotes_the_tables_and_its_records() -> None:
    records = _records("round11", RECORDS11)
    section = _section(ROUND11)
    missing = [figure for figure in _quoted11(records) if figure not in section]
    assert not missing, f"Round 11 of RESULTS.md does not quote these as its records give them: {missing}"
    assert records["lookahead.json"]["lookahead_code_commit"].startswith("71220d0")
    assert records["floor.json"]["floor_code_commit"].startswith("9f2e0a6")
    assert records["floor_ml10m.json"]["floor_code_commit"] == "0f92d1cff2156e608a97af9980a85d8c1a2f32b7"
    assert records["ml100k_before.json"]["ml100k_code_commit"].startswith("f84ec62")
    assert records["metrics_change.json"]["before_commit"].startswith("f84ec62")


ROUND12 = "## Round 12"


def test_round12_quotes_its_startup_imports_record() -> None:
    """Round 12 prints ``--startup-imports``' text from its record, which compares c19d318 with
    38124fc, and says the baseline imports nothing this checkout does not."""
    import sys

    sys.path.insert(0, str(BENCH.parent))
    import bench

    record = _records("round12", ("startup_imports.json",))["startup_imports.json"]
    section = _section(ROUND12)
    assert bench.format_startup_imports(record) in section
    assert record["startup_imports_before_commit"].startswith("38124fc")
    assert record["startup_imports_code_commit"].startswith("c19d318")
    assert record["startup_modules_only_before"] == [] and "The baseline imports nothing" in section
    assert all(m.startswith("hydra.experimental") for m in record["startup_modules_only_after"])
    assert (
        f"adds {['no', 'one', 'two', 'three', 'four'][len(record['startup_modules_only_after'])]} small Hydra"
        in section
    )
