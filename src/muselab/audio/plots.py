"""Pictures of sound for run directories and reports: spectrograms side by side, pitch requested vs rendered.

Drawn with matplotlib's object API on an explicit Agg canvas (as `muselab.report.plots`): no global
backend switch, safe from a server thread, written atomically.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from muselab.core.io import atomic_write

__all__ = ["plot_spectrograms", "plot_f0", "plot_alignment"]


def plot_spectrograms(panels: Sequence[tuple[str, np.ndarray]], out_png: Path, sample_rate: int, hop: int,
                      title: str = "") -> Path:
    """Log-mel spectrograms `[n_mels, frames]` side by side, one titled panel each, on one colour scale
    (the first panel's range, floored 80 dB below its peak, so quiet artefacts stay visible but faint)."""
    if not panels:
        raise ValueError("plot_spectrograms needs at least one (title, log-mel) panel")
    mels = [np.asarray(mel, dtype=float) for _, mel in panels]
    top = float(mels[0].max())
    bottom = max(float(mels[0].min()), top - 80.0 / (20.0 / np.log(10.0)))  # 80 dB in natural-log units
    fig = Figure(figsize=(3.6 * len(panels) + 0.8, 3.4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    image = None
    for ax, (name, _), mel in zip(axes, panels, mels, strict=True):
        seconds = mel.shape[1] * hop / sample_rate
        image = ax.imshow(mel, origin="lower", aspect="auto", cmap="magma", vmin=bottom, vmax=top,
                          extent=(0.0, seconds, 0, mel.shape[0]))
        ax.set_title(name)
        ax.set_xlabel("seconds")
    axes[0].set_ylabel("mel band")
    fig.colorbar(image, ax=list(axes), label="log magnitude", fraction=0.03, pad=0.02)
    if title:
        fig.suptitle(title)
    try:
        atomic_write(Path(out_png), lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        fig.clear()
    return Path(out_png)


def plot_f0(times: np.ndarray, requested_hz: np.ndarray, rendered_hz: np.ndarray, out_png: Path,
            title: str = "Pitch: requested and rendered") -> Path:
    """The requested f0 (0 = nothing requested) under the f0 tracked in the rendered audio (0 = unvoiced),
    in MIDI note numbers, with gaps where either is missing."""
    def midi(hz: np.ndarray) -> np.ndarray:
        hz = np.asarray(hz, dtype=float)
        out = np.full(hz.shape, np.nan)
        out[hz > 0] = 69.0 + 12.0 * np.log2(hz[hz > 0] / 440.0)
        return out

    fig = Figure(figsize=(9, 3.8), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots(1, 1)
    ax.plot(times, midi(requested_hz), color="#1f77b4", linewidth=4.0, alpha=0.45, label="requested")
    ax.plot(times, midi(rendered_hz), color="#d62728", linewidth=0.8, marker=".", markersize=2.5,
            label="rendered (pYIN)")
    ax.set_xlabel("seconds")
    ax.set_ylabel("MIDI note")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right", frameon=False)
    try:
        atomic_write(Path(out_png), lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        fig.clear()
    return Path(out_png)


def plot_alignment(panels: Sequence[tuple[str, np.ndarray, Sequence[str], Sequence[tuple[str, np.ndarray]]]],
                   out_png: Path, sample_rate: int, hop: int, title: str = "") -> Path:
    """Phoneme alignments drawn over log-mels: per panel (title, log-mel [n_mels, frames], symbols, and one or
    more (label, durations in frames) whose phoneme boundaries are drawn as vertical lines, each in its own
    colour, the symbols written between the first set's boundaries)."""
    if not panels:
        raise ValueError("plot_alignment needs at least one panel")
    fig = Figure(figsize=(12, 2.9 * len(panels)), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    colours = ("white", "cyan", "lime")
    for ax, (name, mel, symbols, sets) in zip(axes, panels, strict=True):
        mel = np.asarray(mel, dtype=float)
        seconds_per_frame = hop / sample_rate
        top = float(mel.max())
        ax.imshow(mel, origin="lower", aspect="auto", cmap="magma", vmin=max(float(mel.min()), top - 9.2), vmax=top,
                  extent=(0.0, mel.shape[1] * seconds_per_frame, 0, mel.shape[0]))
        for k, (label, durations) in enumerate(sets):
            ends = np.cumsum(np.asarray(durations)) * seconds_per_frame
            ymin, ymax = (0.0, 0.5) if k % 2 else (0.5, 1.0)
            for end in ends[:-1]:
                ax.axvline(end, ymin=ymin, ymax=ymax, color=colours[k % len(colours)], linewidth=0.7)
            ax.plot([], [], color=colours[k % len(colours)], label=label)
            if k == 0:
                starts = np.concatenate([[0.0], ends[:-1]])
                for symbol, a, b in zip(symbols, starts, ends, strict=False):
                    if b > a:
                        ax.text((a + b) / 2, mel.shape[0] * 0.92, symbol, color="white", fontsize=6, ha="center",
                                rotation=90 if len(symbol) > 2 else 0)
        ax.set_title(name)
        ax.set_ylabel("mel band")
        ax.legend(loc="lower right", fontsize=7, facecolor="black", labelcolor="white")
    axes[-1].set_xlabel("seconds")
    if title:
        fig.suptitle(title)
    try:
        atomic_write(Path(out_png), lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        fig.clear()
    return Path(out_png)
