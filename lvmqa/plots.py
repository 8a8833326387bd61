"""Small report plots rendered to PNG and returned as base64 ``data:`` URIs.

Embedding the image bytes in the page keeps the report self-contained: it opens offline,
survives ``--self-contained-html`` and can be attached to a CI run as one file. Matplotlib
is imported inside each function (it costs ~0.3 s) and only its object-oriented API is
used, so no global pyplot state or interactive backend is involved.

Every function returns ``None`` when its data cannot make a meaningful plot (empty,
non-finite, mismatched lengths); the report then shows the table alone.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

FIGSIZE = (6.0, 3.0)
DPI = 100
CURRENT_COLOUR = "#c0392b"
BASELINE_COLOUR = "#2c7fb8"
FILTERED_COLOUR = "#27ae60"
# Trivial predictors are drawn as dashed reference lines, one colour each.
MIN_COSINE_SPAN = 0.5
REFERENCE_COLOURS = ("#7f8c8d", "#8e44ad", "#d35400", "#16a085", "#2c3e50")


def _finite(values: Sequence[Any]) -> list[float] | None:
    """Floats of ``values`` with None/NaN kept as NaN; None when nothing is finite."""
    out: list[float] = []
    for value in values:
        try:
            number = float(value) if value is not None else math.nan
        except (TypeError, ValueError):
            number = math.nan
        out.append(number)
    return out if any(math.isfinite(v) for v in out) else None


def _new_figure(figsize: tuple[float, float] = FIGSIZE) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=DPI)
    fig.set_layout_engine("constrained")
    return fig


def _style_axes(ax: Any) -> None:
    ax.grid(True, alpha=0.3, linewidth=0.6)
    ax.tick_params(labelsize=8)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def figure_data_uri(fig: Any) -> str:
    """PNG bytes of a matplotlib figure as a ``data:image/png;base64,…`` URI."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


SERIES_COLOURS = (BASELINE_COLOUR, CURRENT_COLOUR, FILTERED_COLOUR, "#8e44ad", "#d35400")


def histogram_bars(
    labels: Sequence[str],
    series: Sequence[tuple[str, Sequence[Any]]],
    *,
    low_threshold_index: int | None = None,
    title: str = "Adjacency cosine distribution",
    colours: Sequence[str] = SERIES_COLOURS,
) -> str | None:
    """Grouped bars of the share (%) of pairs per cosine bin, one bar per series and bin.

    ``series`` is ``[(name, percentages), …]``; a series whose length differs from
    ``labels`` or holds no finite value is left out.
    """
    usable = [
        (name, values)
        for name, raw in series
        if (values := _finite(raw)) is not None and len(values) == len(labels)
    ]
    if not usable or not labels:
        return None
    fig = _new_figure()
    ax = fig.add_subplot()
    positions = list(range(len(labels)))
    width = 0.8 / len(usable)
    for i, ((name, values), colour) in enumerate(zip(usable, colours, strict=False)):
        offset = (i - (len(usable) - 1) / 2) * width
        ax.bar([p + offset for p in positions], values, width, label=name, color=colour, alpha=0.85)
    if low_threshold_index is not None and 0 < low_threshold_index < len(labels):
        # The low-coherence cut sits on a bin edge: draw it between the two bins.
        ax.axvline(
            low_threshold_index - 0.5,
            color="#555555",
            linestyle=":",
            linewidth=1,
            label="low-coherence cut",
        )
    ax.set_xticks(positions)
    ax.set_xticklabels([str(label) for label in labels], rotation=40, ha="right", fontsize=7)
    ax.set_ylabel("% of pairs", fontsize=9)
    ax.set_xlabel("cosine of adjacent vectors", fontsize=9)
    ax.set_title(title, fontsize=10)
    _style_axes(ax)
    ax.legend(fontsize=8, frameon=False)
    return figure_data_uri(fig)


def position_profile(
    profile: Sequence[Any],
    baseline: Sequence[Any] | None = None,
    *,
    current_name: str = "current",
    baseline_name: str = "baseline",
) -> str | None:
    """Mean cosine of context position j with the target, j = 0 (oldest) … C-1 (last)."""
    current = _finite(profile)
    if current is None:
        return None
    base = _finite(baseline) if baseline is not None else None
    fig = _new_figure()
    ax = fig.add_subplot()
    xs = list(range(len(current)))
    if base is not None and len(base) == len(current):
        ax.plot(xs, base, marker="o", color=BASELINE_COLOUR, label=baseline_name)
    ax.plot(xs, current, marker="o", color=CURRENT_COLOUR, label=current_name)
    ax.set_xticks(xs)
    ax.set_xticklabels([f"{j}" + (" (last)" if j == len(xs) - 1 else "") for j in xs], fontsize=8)
    # A fixed minimum span keeps a flat profile looking flat: autoscaling would stretch a
    # rise of 0.005 over the whole axis and make noise look like a trend.
    finite = [v for v in current + (base or []) if math.isfinite(v)]
    lower = min(0.0, min(finite) - 0.02)
    ax.set_ylim(lower, max(max(finite) + 0.05, lower + MIN_COSINE_SPAN))
    ax.set_xlabel("context position j (0 = oldest)", fontsize=9)
    ax.set_ylabel("mean cos(context j, target)", fontsize=9)
    ax.set_title("Context-position profile (should rise toward the target)", fontsize=10)
    _style_axes(ax)
    ax.legend(fontsize=8, frameon=False)
    return figure_data_uri(fig)


def training_curve(
    epochs: Sequence[Any],
    val_cosine: Sequence[Any],
    references: Mapping[str, Any] | None = None,
    *,
    train_loss: Sequence[Any] | None = None,
) -> str | None:
    """val_cosine per epoch against the trivial predictors (dashed), train loss on the right."""
    values = _finite(val_cosine)
    xs = _finite(epochs) if epochs else None
    if values is None:
        return None
    if xs is None or len(xs) != len(values):
        xs = [float(i + 1) for i in range(len(values))]
    fig = _new_figure()
    ax = fig.add_subplot()
    ax.plot(xs, values, marker="o", color=CURRENT_COLOUR, label="smoke model val_cosine")
    for colour, (name, value) in zip(REFERENCE_COLOURS, (references or {}).items(), strict=False):
        number = _finite([value])
        if number is not None:
            ax.axhline(
                number[0],
                linestyle="--",
                linewidth=1,
                color=colour,
                label=f"{name.replace('_', ' ')} predictor",
            )
    loss = _finite(train_loss) if train_loss is not None else None
    if loss is not None and len(loss) == len(xs):
        twin = ax.twinx()
        twin.plot(xs, loss, color="#999999", linewidth=1, alpha=0.7, label="train loss")
        twin.set_ylabel("train loss", fontsize=8, color="#777777")
        twin.tick_params(labelsize=7, colors="#777777")
    ax.set_xlabel("epoch", fontsize=9)
    ax.set_ylabel("cosine", fontsize=9)
    ax.set_title("Smoke training: val_cosine vs trivial predictors", fontsize=10)
    _style_axes(ax)
    ax.legend(fontsize=7, frameon=False, loc="best")
    return figure_data_uri(fig)
