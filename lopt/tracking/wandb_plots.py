"""What the W&B dashboard shows of Λ beyond scalars: figures rendered once per evaluation (one
image each, shown under one panel with a step slider) and the final λ-trajectory chart (one table,
one line per tracked entity).

Figures are drawn with matplotlib's object-oriented API (no pyplot, no global backend change).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

#: Vega spec of W&B's built-in multi-line chart (the one ``wandb.plot.line_series`` uses).
LINE_SERIES_SPEC = "wandb/lineseries/v0"


def entity_label(side: str, stratum: str, raw_id: str, frequency: int) -> str:
    """The legend label of one tracked entity, e.g. ``"user sparse 412 (n=3)"``."""
    return f"{side} {stratum} {raw_id} (n={frequency})"


def _rgb(fig: Any) -> np.ndarray:
    """The figure rendered by Agg as an (H, W, 3) uint8 array (what ``wandb.Image`` takes)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    fig.set_dpi(90)
    fig.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def per_dim_image(user_means: np.ndarray, item_means: np.ndarray, step: int) -> np.ndarray:
    """Per-dimension mean λ of each side (d values each) as one line plot image."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3))
    ax = fig.add_subplot()
    dims = np.arange(len(user_means))
    ax.plot(dims, user_means, label="user λ", marker=".", linewidth=1)
    ax.plot(dims, item_means, label="item λ", marker=".", linewidth=1)
    ax.set_xlabel("dimension")
    ax.set_ylabel("mean λ over rows")
    ax.set_title(f"per-dimension mean λ (step {step})")
    ax.legend(loc="best", fontsize=8)
    return _rgb(fig)


def trajectory_image(means: pl.DataFrame, step: int) -> np.ndarray:
    """λ-trajectories (mean over dimensions) of the tracked entities: one subplot per side, one
    labelled line per entity. ``means``: trajectory rows with ``dim == -1``."""
    from matplotlib.figure import Figure

    sides = [s for s in ("user", "item") if s in set(means["side"].to_list())]
    fig = Figure(figsize=(6 * max(1, len(sides)), 3.5))
    for position, side in enumerate(sides, start=1):
        ax = fig.add_subplot(1, len(sides), position)
        part = means.filter(pl.col("side") == side).sort("stratum", "frequency", "entity_id", "step")
        for (_, stratum, raw_id, frequency), rows in part.group_by(
            ["entity_id", "stratum", "raw_id", "frequency"], maintain_order=True
        ):
            ax.plot(
                rows["step"].to_numpy(),
                rows["value"].to_numpy(),
                linewidth=1,
                label=entity_label(side, stratum, raw_id, frequency),
            )
        ax.set_xlabel("step")
        ax.set_ylabel("λ (mean over dimensions)")
        ax.set_title(f"tracked {side}s (step {step})")
        ax.legend(loc="best", fontsize=6)
    return _rgb(fig)


def trajectory_table_chart(means: pl.DataFrame) -> Any:
    """One W&B table of the trajectories (columns: step, side, stratum, raw_id, frequency,
    entity_id, label, value) and a line chart over it: logged once, one artifact."""
    import wandb

    rows = means.with_columns(
        pl.concat_str(
            [
                pl.col("side"),
                pl.col("stratum"),
                pl.col("raw_id"),
                pl.lit("(n=") + pl.col("frequency").cast(pl.String) + pl.lit(")"),
            ],
            separator=" ",
        ).alias("label")
    ).select("step", "side", "stratum", "raw_id", "frequency", "entity_id", "label", "value")
    table = wandb.Table(columns=rows.columns, data=[list(r) for r in rows.iter_rows()])
    return wandb.plot_table(
        LINE_SERIES_SPEC,
        table,
        fields={"step": "step", "lineKey": "label", "lineVal": "value"},
        string_fields={"title": "λ of tracked users and items (mean over dimensions)", "xname": "step"},
    )
