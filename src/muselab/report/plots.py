"""Plots for the report: training curves read from a run's ``metrics.jsonl``.

Figures are drawn with matplotlib's object API on an explicit Agg canvas rather than through
``pyplot``: no global backend switch, no global figure registry to leak into, and safe to call
from a server thread.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from muselab.core.io import atomic_write

__all__ = ["plot_training_curves", "plot_attention"]

_TRAIN_COLOR = "#1f77b4"
_VAL_COLOR = "#d62728"
_LR_COLOR = "#2ca02c"
_PHASE_COLORS = ("#9467bd", "#8c564b", "#e377c2")  # further train curves (a GAN's second phase)


def _series(records: Sequence[dict], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) for records that hold a finite ``key``; others are skipped, not plotted as gaps."""
    steps: list[float] = []
    values: list[float] = []
    for record in records:
        step, value = record.get("step"), record.get(key)
        if step is None or value is None:
            continue
        try:
            step_f, value_f = float(step), float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(step_f) and math.isfinite(value_f):
            steps.append(step_f)
            values.append(value_f)
    return steps, values


def _smooth(values: list[float]) -> list[float]:
    """Centred moving average over ~1/25 of the run, averaging only the points that exist at the ends.

    Centred rather than an exponential average, so the smoothed line does not lag behind the raw
    loss; the window scales with the run so short runs stay detailed and long ones show the trend.
    """
    window = max(1, len(values) // 25) | 1  # odd, so it is centred on each point
    if window == 1:
        return list(values)
    kernel = np.ones(window)
    sums = np.convolve(np.asarray(values, dtype=float), kernel, mode="same")
    counts = np.convolve(np.ones(len(values)), kernel, mode="same")
    return (sums / counts).tolist()


def plot_training_curves(records: Sequence[dict], out_png: Path, title: str = "Training") -> Path:
    """Plot train loss (raw and smoothed), validation loss with its best point marked, and learning rate
    against step.

    ``records`` are the parsed lines of a ``metrics.jsonl``: dicts with ``step`` and any of ``loss``,
    ``val_loss`` and ``lr``; records without a finite value for a key are skipped for that curve.
    The learning rate gets its own small axes below the losses when present. The PNG is written
    atomically and its path returned; with no plottable data the figure says so instead of failing.
    """
    out_png = Path(out_png)
    # One train curve per optimizer phase (a GAN's loss_discriminator and loss_generator), else "loss"
    loss_keys = sorted({k for r in records for k in r if k.startswith("loss_")}) or ["loss"]
    train_curves = [(key.removeprefix("loss_") + " loss" if key != "loss" else "train loss", *_series(records, key))
                    for key in loss_keys]
    train_loss = any(values for _, _, values in train_curves)
    val_steps, val_loss = _series(records, "val_loss")
    lr_steps, lr = _series(records, "lr")

    fig = Figure(figsize=(8, 5.5) if lr else (8, 4.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    if lr:
        loss_ax, lr_ax = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    else:
        loss_ax, lr_ax = fig.subplots(1, 1), None
    loss_ax.set_title(title)

    for index, (label, steps, values) in enumerate(train_curves):
        if not values:
            continue
        color = _TRAIN_COLOR if index == 0 else _PHASE_COLORS[(index - 1) % len(_PHASE_COLORS)]
        # Raw minibatch loss is noisy: draw it faint and let the smoothed line carry the trend.
        loss_ax.plot(steps, values, color=color, alpha=0.25, linewidth=0.8)
        loss_ax.plot(steps, _smooth(values), color=color, linewidth=1.8, label=label)
    if val_loss:
        loss_ax.plot(
            val_steps, val_loss, color=_VAL_COLOR, marker="o", markersize=4, linewidth=1.2, label="val loss"
        )
        # The weights a run keeps are those of its best validation: mark it
        best = min(range(len(val_loss)), key=val_loss.__getitem__)
        loss_ax.plot([val_steps[best]], [val_loss[best]], linestyle="none", marker="*", markersize=14,
                     color=_VAL_COLOR, markeredgecolor="black",
                     label=f"best val {val_loss[best]:.4f} (step {val_steps[best]:g})")
    if train_loss or val_loss:
        loss_ax.set_ylabel("loss")
        loss_ax.legend(loc="upper right", frameon=False)
    else:
        loss_ax.text(
            0.5, 0.5, "no loss values recorded", ha="center", va="center", transform=loss_ax.transAxes
        )
    loss_ax.grid(True, alpha=0.3)

    if lr_ax is not None:
        lr_ax.plot(lr_steps, lr, color=_LR_COLOR, linewidth=1.2)
        lr_ax.set_ylabel("lr")
        lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        lr_ax.grid(True, alpha=0.3)
        lr_ax.set_xlabel("step")
    else:
        loss_ax.set_xlabel("step")

    try:
        # Atomic: a reader (the report, a browser) never sees a half-written PNG.
        atomic_write(out_png, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        fig.clear()  # drop artists now; with no pyplot registry the figure is freed once unreferenced
    return out_png


def plot_attention(weights: np.ndarray, source: Sequence[str], target: Sequence[str], out_png: Path,
                   title: str = "Attention") -> Path:
    """The attention matrix: one row per output symbol, one column per input symbol, symbols on the axes."""
    weights = np.asarray(weights, dtype=float)
    rows, cols = weights.shape
    fig = Figure(figsize=(max(3.0, 0.45 * cols + 1.5), max(2.5, 0.4 * rows + 1.2)), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(weights, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(cols), labels=list(source)[:cols])
    ax.set_yticks(range(rows), labels=list(target)[:rows])
    ax.set_xlabel("input")
    ax.set_ylabel("output")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    try:
        atomic_write(Path(out_png), lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        fig.clear()
    return Path(out_png)
