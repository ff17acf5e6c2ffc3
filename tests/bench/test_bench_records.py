"""experiments/bench/RESULTS.md quotes its latest round's figures from the records committed
beside it (``experiments/bench/round7/*.json``, written by bench.py): every figure it states from
them must be the record's, in the format it is quoted in."""

from __future__ import annotations

import copy
import json
from typing import Any

from tests.helpers.cli import REPO_ROOT

BENCH = REPO_ROOT / "experiments" / "bench"
ROUND = "## Round 7"
RECORDS = ("study_users_subset4.json", "study_threads1_subset4.json", "study_users_full.json", "ml100k.json")


def _section() -> str:
    text = (BENCH / "RESULTS.md").read_text(encoding="utf-8")
    start = text.index(ROUND)
    end = text.find("\n## Round", start + len(ROUND))
    return text[start : end if end != -1 else len(text)]


def _records() -> dict[str, dict[str, Any]]:
    return {name: json.loads((BENCH / "round7" / name).read_text(encoding="utf-8")) for name in RECORDS}


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


def _missing(records: dict[str, dict[str, Any]]) -> list[str]:
    section = _section()
    return [figure for figure in _quoted(records) if figure not in section]


def test_latest_round_quotes_its_records() -> None:
    assert not _missing(_records()), f"RESULTS.md {ROUND} does not quote these figures of its records"


def test_a_figure_that_differs_from_its_record_is_caught() -> None:
    records = copy.deepcopy(_records())
    records["study_users_subset4.json"]["ml100k_study_seconds_before"] += 0.1
    records["ml100k.json"]["ml100k_ratio_dui_over_fix_epoch"] += 0.01
    assert len(_missing(records)) == 2
