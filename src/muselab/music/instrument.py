"""Playing a piece with a trained `audio-ddsp` instrument instead of a SoundFont.

A DDSP instrument is monophonic: each voice becomes its own pitch and loudness curve (the same note
shaping as `audio-ddsp --notes`), all voices are rendered as one batch and mixed. An instrument only
knows the pitches it was trained on (a violin has no bass), so each voice is moved by whole octaves to
where most of its notes fall inside the instrument's trained range, and a note still outside it is folded
in by octaves on its own; both are logged.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from muselab.core.errors import ControlError, MuselabError
from muselab.data.notes import NoteEvent, notes_to_curves
from muselab.data.scores import VOICE_NAMES, Note, Score

# Inner voices a little softer than the soprano and bass, as a choir or quartet balances them
VOICE_LEVEL_DB = (0.0, -3.0, -3.0, -1.0)
PEAK = 0.9  # the mix is scaled down to this peak when louder


@dataclass(frozen=True)
class Instrument:
    """A loaded audio-ddsp run: its model and what it was trained on."""

    path: str
    model: torch.nn.Module
    sample_rate: int
    hop: int
    loudness_db: float  # the level notes are played at (the instrument's typical loudness)
    midi_low: float  # the trained pitch range (2nd to 98th percentile of voiced frames)
    midi_high: float


@functools.lru_cache(maxsize=2)
def _load(path: str, stamp: float, load_run: Callable[[str], Any]) -> Instrument:
    try:
        run = load_run(path)
    except MuselabError as err:
        raise ControlError(f"--ddsp '{path}' could not be loaded: {err}") from None
    if run.recipe.name != "audio-ddsp":
        raise ControlError(f"--ddsp '{path}' is a {run.recipe.name} run; pass an audio-ddsp run")
    if run.config.model.use_z:
        raise ControlError(f"--ddsp '{path}' needs a timbre recording (model.use_z); pass an audio-ddsp run trained "
                           "without one")
    stats = run.assets["stats"]
    # notes are played 6 dB above the mean frame loudness (which counts the quiet frames too), capped at -10 dB
    level = float(min(-10.0, stats["loudness_mean"] + 6.0))
    return Instrument(path, run.model, run.config.model.sample_rate, run.config.model.hop, level,
                      float(stats["midi_low"]), float(stats["midi_high"]))


def load_instrument(path: str, load_run: Callable[[str], Any] | None) -> Instrument:
    """An audio-ddsp run as an instrument (cached per folder and weights' time), or a one-line ControlError.
    `load_run` opens a run (GenerationContext.load_run): music knows no audio, the pipeline lends the loader."""
    if load_run is None:
        raise ControlError("--ddsp needs the generation pipeline (muselab generate or muselab.load(...).generate)")
    folder = Path(path).expanduser().resolve()
    if not (folder / "config.json").is_file():
        raise ControlError(f"--ddsp '{path}' is not a run directory; pass a trained audio-ddsp run")
    weights = folder / "model.safetensors"
    return _load(str(folder), weights.stat().st_mtime if weights.is_file() else 0.0, load_run)


def octave_shift(pitches: list[int], low: float, high: float) -> int:
    """Semitones (a multiple of 12) that put most of `pitches` inside [low, high]; ties go to the smallest
    move."""
    moves = range(-48, 49, 12)
    inside = [sum(low <= p + m <= high for p in pitches) for m in moves]
    best = max(inside)
    return min((m for m, n in zip(moves, inside, strict=True) if n == best), key=abs)


def fold_into(pitch: int, low: float, high: float) -> int:
    """`pitch` moved by the fewest octaves into [low, high] (the nearest edge's octave for a narrow range)."""
    while pitch < low and pitch + 12 <= high:
        pitch += 12
    while pitch > high and pitch - 12 >= low:
        pitch -= 12
    return pitch


def voice_events(notes: list[Note], seconds_per_quarter: float, shift: int, low: float, high: float
                 ) -> tuple[list[NoteEvent], int]:
    """The voice's notes moved by `shift` as timed events, with any note still outside [low, high] folded
    into it by octaves (the instrument has never played there); and how many were folded."""
    events, folded = [], 0
    for pitch, start, length in sorted(notes, key=lambda n: n[1]):
        played = fold_into(pitch + shift, low, high)
        folded += played != pitch + shift
        events.append(NoteEvent(played, start * seconds_per_quarter, length * seconds_per_quarter))
    return events, folded


def voice_curves(score: Score, voices: tuple[int, ...], instrument: Instrument
                 ) -> tuple[np.ndarray, np.ndarray, int, dict[str, Any]]:
    """(f0 Hz [V, F], loudness dB [V, F], samples, what moved: semitones by voice name and the count of
    single notes folded) for the piece's sounding voices, all as long as the piece."""
    seconds_per_quarter = 60.0 / score.tempo
    n_samples = max(1, round(score.length * seconds_per_quarter * instrument.sample_rate))
    n_frames = -(-n_samples // instrument.hop)
    f0s, louds, moves, folded = [], [], {}, 0
    for v in voices:
        notes = score.voices[v]
        if not notes:
            continue
        shift = octave_shift([p for p, _, _ in notes], instrument.midi_low, instrument.midi_high)
        if shift:
            moves[VOICE_NAMES[v]] = shift
        events, count = voice_events(notes, seconds_per_quarter, shift, instrument.midi_low, instrument.midi_high)
        folded += count
        f0, loud, _, _ = notes_to_curves(events, instrument.loudness_db + VOICE_LEVEL_DB[v], instrument.sample_rate,
                                         instrument.hop)
        # a voice that ends early is silent, holding its last pitch, to the end of the piece
        pad = n_frames - len(f0)
        f0s.append(np.pad(f0, (0, max(0, pad)), mode="edge")[:n_frames])
        louds.append(np.pad(loud, (0, max(0, pad)), constant_values=float(loud.min()))[:n_frames])
    if not f0s:
        raise ControlError("the piece has no notes to play")
    return np.stack(f0s), np.stack(louds), n_samples, {"octave_moves": moves, "notes_folded": folded}


def play(score: Score, voices: tuple[int, ...], instrument: Instrument, seed: int = 0
         ) -> tuple[np.ndarray, dict[str, Any]]:
    """The piece's sound at the instrument's sample rate, and what moved (as `voice_curves` says)."""
    f0, loud, n_samples, moved = voice_curves(score, voices, instrument)
    rendered = instrument.model.render(torch.from_numpy(f0), torch.from_numpy(loud), seed=seed)
    audio = rendered.sum(dim=0)[:n_samples].numpy().astype(np.float32)
    peak = float(np.abs(audio).max())
    if peak > PEAK:
        audio *= PEAK / peak
    return audio, moved
