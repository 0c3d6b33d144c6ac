"""Notes written as text, shared by the recipes that play them (audio-ddsp) or write them (music-lm):
scientific pitch names ("C4" = MIDI 60, "F#3", "Bb2") with an optional length in beats ("C4:0.5"), R for
a rest; and notes as the pitch and loudness curves that an instrument model plays."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from muselab.core.errors import ControlError

__all__ = ["SILENCE_DB", "NoteEvent", "NoteNameError", "midi_to_hz", "note_to_midi", "notes_to_curves", "read_notes"]

SILENCE_DB = -80.0  # the loudness floor of the audio features (a_weighted_loudness's floor_db)

_NOTE_NAME = re.compile(r"([A-Ga-g])(#{1,2}|b{1,2}|)(-?\d+)")
_PITCH_CLASS = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}


class NoteNameError(ControlError, ValueError):
    """A note name that cannot be read. A ControlError (the CLI prints it as one line) and a ValueError."""


def note_to_midi(name: str) -> int:
    """Scientific pitch name to MIDI number: "C4" = 60, "F#3" = 54, "Bb2" = 46 (sharps #, flats b)."""
    match = _NOTE_NAME.fullmatch(name.strip()) if isinstance(name, str) else None
    if match is None:
        raise NoteNameError(f"cannot read the note name {name!r}: write a letter A-G, an optional # or b, "
                            "then an octave number, e.g. C4, F#3 or Bb2")
    letter, accidental, octave = match.groups()
    midi = 12 * (int(octave) + 1) + _PITCH_CLASS[letter.upper()]
    midi += len(accidental) if accidental.startswith("#") else -len(accidental)
    if not 0 <= midi <= 127:
        raise NoteNameError(f"the note {name!r} is MIDI {midi}, outside 0-127 (C-1 to G9): choose another octave")
    return midi


def read_notes(text: str, option: str = "--notes") -> list[tuple[int | None, float]]:
    """"C4:0.5 E4:0.5 R:0.5 G4:1" (name:beats, R = rest; a bare name lasts one beat) -> (MIDI or None, beats)."""
    tokens = text.replace(",", " ").split()
    if not tokens:
        raise ControlError(f"{option} is empty: give notes as NAME:BEATS, e.g. \"C4:0.5 E4:0.5 G4:1 R:0.5\"")
    notes: list[tuple[int | None, float]] = []
    for token in tokens:
        name, _, beats_text = token.partition(":")
        try:
            beats = float(beats_text) if beats_text else 1.0
        except ValueError:
            beats = float("nan")
        if not (math.isfinite(beats) and 0 < beats <= 64):
            raise ControlError(f"cannot read the note {token!r}: the beats after ':' must be a number above 0 "
                               "and at most 64, e.g. C4:0.5")
        notes.append((None if name.upper() == "R" else note_to_midi(name), beats))
    if all(midi is None for midi, _ in notes):
        raise ControlError(f"{option} holds only rests (R): add at least one note, e.g. C4:1")
    return notes


# ---------------------------------------------------------------------------------------------------
# Notes as the curves an instrument plays


def midi_to_hz(midi):
    """MIDI note number (float, array or tensor) to Hz; A4 = 69 = 440 Hz."""
    return 440.0 * 2.0 ** ((midi - 69.0) / 12.0)


@dataclass
class NoteEvent:
    midi: int | None  # None = a rest
    start_s: float
    seconds: float


ATTACK_S, RELEASE_S = 0.03, 0.06  # note envelope
LEGATO_DIP = 0.6  # amplitude between two notes that follow each other without a rest
GLIDE_S = 0.02  # pitch glide between notes


def notes_to_curves(events: Sequence[NoteEvent], loudness_db: float, sample_rate: int,
                    hop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(f0 Hz per frame for the synth, loudness dB per frame, the requested f0 per frame (0 in rests),
    the number of samples). Rests hold the pitch (they are silent by their loudness); consecutive notes
    glide into each other over 20 ms and dip slightly in level instead of stopping (a light legato)."""
    total_s = events[-1].start_s + events[-1].seconds
    n_samples = max(1, round(total_s * sample_rate))
    n_frames = -(-n_samples // hop)
    times = np.arange(n_frames) * hop / sample_rate
    requested = np.zeros(n_frames)
    envelope = np.zeros(n_frames)
    for i, event in enumerate(events):
        if event.midi is None:
            continue
        inside = (times >= event.start_s) & (times < event.start_s + event.seconds)
        requested[inside] = midi_to_hz(float(event.midi))
        after = events[i + 1] if i + 1 < len(events) else None
        before = events[i - 1] if i else None
        start_level = LEGATO_DIP if before is not None and before.midi is not None else 0.0
        end_level = LEGATO_DIP if after is not None and after.midi is not None else 0.0
        local = times[inside] - event.start_s
        attack = min(ATTACK_S, event.seconds / 3)
        release = min(RELEASE_S, event.seconds / 3)
        rise = np.interp(local, [0.0, attack], [start_level, 1.0])
        fall = np.interp(local, [event.seconds - release, event.seconds], [1.0, end_level])
        envelope[inside] = np.minimum(rise, fall)
    # The synth's pitch: each rest holds the note before it (the first note for leading rests)
    sounding = requested > 0
    index = np.maximum.accumulate(np.where(sounding, np.arange(n_frames), -1))
    index = np.where(index < 0, int(np.argmax(sounding)), index)
    midi = 69.0 + 12.0 * np.log2(requested[index] / 440.0)
    width = max(1, round(GLIDE_S * sample_rate / hop))
    midi = np.convolve(np.pad(midi, (width // 2, width - 1 - width // 2), mode="edge"), np.ones(width) / width,
                       mode="valid")
    loud = np.maximum(loudness_db + 20.0 * np.log10(np.maximum(envelope, 1e-6)), SILENCE_DB)
    return (midi_to_hz(midi).astype(np.float32), loud.astype(np.float32), requested.astype(np.float32), n_samples)
