"""Notes written as text, shared by the recipes that play them (audio-ddsp) or write them (music-lm):
scientific pitch names ("C4" = MIDI 60, "F#3", "Bb2") with an optional length in beats ("C4:0.5"), R for
a rest."""

from __future__ import annotations

import math
import re

from muselab.core.errors import ControlError

__all__ = ["NoteNameError", "note_to_midi", "read_notes"]

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
