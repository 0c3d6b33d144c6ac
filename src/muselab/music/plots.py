"""Pictures for music-lm's evaluation: written atomically with matplotlib's object API (no global backend)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from muselab.core.io import atomic_write
from muselab.data.scores import PITCH_NAMES, Score
from muselab.music.metrics import relative_histogram

__all__ = ["plot_pitch_classes", "write_picture"]


def write_picture(path: Path, pixels: np.ndarray) -> Path:
    picture = Image.fromarray(pixels)
    return atomic_write(path, lambda tmp: picture.save(tmp, format="PNG"))


def plot_pitch_classes(score: Score, key: tuple[int, str], references: dict[str, np.ndarray], out_png: Path) -> Path:
    """The piece's pitch-class histogram (relative to the asked key's tonic) beside the held-out pieces'."""
    tonic, mode = key
    fig = Figure(figsize=(6.4, 3.0), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x = np.arange(12)
    ax.bar(x - 0.2, references.get(mode, references["any"]), width=0.4, label=f"held-out pieces ({mode})",
           color="#999999")
    ax.bar(x + 0.2, relative_histogram(score, tonic), width=0.4, label="generated", color="#c0392b")
    ax.set_xticks(x, [PITCH_NAMES[(tonic + i) % 12] for i in x])
    ax.set_ylabel("share of note time")
    ax.set_title(f"pitch classes in {PITCH_NAMES[tonic]} {mode}", fontsize=9)
    ax.legend(fontsize=7)
    return atomic_write(out_png, lambda tmp: fig.savefig(tmp, format="png"))
