"""Scores out: Standard MIDI files (one track per voice, written with mido) and piano-roll pictures.

The pipeline's writer adds the provenance to the MIDI bytes made here (a text meta event), so this module
knows nothing of manifests.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import mido
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from muselab.data.scores import VOICE_NAMES, Score

TICKS_PER_QUARTER = 480
VOICE_COLOURS = ("#c0392b", "#2e86c1", "#28b463", "#7d3c98")


def score_to_midi(score: Score, program: int = 0, voices: Sequence[int] = (0, 1, 2, 3)) -> bytes:
    """A type-1 MIDI file: a tempo/meter track, then one track per voice on its own channel."""
    midi = mido.MidiFile(type=1, ticks_per_beat=TICKS_PER_QUARTER)
    head = mido.MidiTrack()
    head.append(mido.MetaMessage("track_name", name=score.name[:60], time=0))
    head.append(mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(score.tempo), time=0))
    numerator = round(score.bar_quarters) if float(score.bar_quarters).is_integer() else round(score.bar_quarters * 2)
    denominator = 4 if float(score.bar_quarters).is_integer() else 8
    head.append(mido.MetaMessage("time_signature", numerator=max(1, numerator), denominator=denominator, time=0))
    head.append(mido.MetaMessage("end_of_track", time=0))
    midi.tracks.append(head)
    for channel, v in enumerate(voices):
        track = mido.MidiTrack()
        track.append(mido.MetaMessage("track_name", name=VOICE_NAMES[v], time=0))
        track.append(mido.Message("program_change", program=program, channel=channel, time=0))
        events = []
        for pitch, start, duration in score.voices[v]:
            on, off = round(start * TICKS_PER_QUARTER), round((start + duration) * TICKS_PER_QUARTER)
            events += [(on, 1, pitch), (max(off, on + 1), 0, pitch)]
        now = 0
        for tick, is_on, pitch in sorted(events):  # offs (0) before ons (1) at the same tick
            kind = "note_on" if is_on else "note_off"
            track.append(mido.Message(kind, note=pitch, velocity=80 if is_on else 0, channel=channel, time=tick - now))
            now = tick
        track.append(mido.MetaMessage("end_of_track", time=0))
        midi.tracks.append(track)
    buffer = io.BytesIO()
    midi.save(file=buffer)
    return buffer.getvalue()


def piano_roll(score: Score, voices: Sequence[int] = (0, 1, 2, 3), title: str = "",
               pinned: Sequence[int] = ()) -> np.ndarray:
    """A piano-roll picture (uint8 RGB): time across in bars, pitch up, one colour per voice; voices in
    `pinned` (a given melody) are drawn with a black outline."""
    length = max(score.length, score.bar_quarters)
    fig = Figure(figsize=(min(16.0, max(6.0, 2.0 + length * 0.18)), 3.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    pitches = [p for v in voices for p, _, _ in score.voices[v]] or [60]
    for v in voices:
        for pitch, start, duration in score.voices[v]:
            ax.add_patch(_rect(start, pitch, duration, VOICE_COLOURS[v], v in pinned))
        ax.plot([], [], color=VOICE_COLOURS[v], linewidth=6, label=VOICE_NAMES[v])
    bar = score.bar_quarters
    first = score.first_bar % bar if bar else 0.0
    for x in np.arange(first, length + 1e-6, bar):
        ax.axvline(x, color="#dddddd", linewidth=0.8, zorder=0)
    ax.set_xlim(0, length)
    ax.set_ylim(min(pitches) - 2, max(pitches) + 2)
    ax.set_xlabel("quarter notes")
    ax.set_ylabel("MIDI pitch")
    ax.legend(loc="upper right", fontsize=7, ncols=len(voices))
    if title:
        ax.set_title(title, fontsize=9)
    canvas = fig.canvas
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _rect(start: float, pitch: int, duration: float, colour: str, outlined: bool):  # noqa: ANN202
    from matplotlib.patches import Rectangle

    return Rectangle((start, pitch - 0.4), duration, 0.8, facecolor=colour, alpha=0.85,
                     edgecolor="black" if outlined else "none", linewidth=0.8)
