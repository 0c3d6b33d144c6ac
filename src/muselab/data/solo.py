"""`builtin:soundfont`: one real sampled instrument playing alone, for audio-ddsp.

Notes and phrases of one General MIDI instrument (violin by default) rendered offline with FluidSynth
and a General MIDI SoundFont (`data/soundfont.py`): held notes and melodies of 2-8 notes, detached or
legato, across the instrument's range and from pianissimo to fortissimo. Every clip is monophonic, so
its pitch is known from the notes: the f0 labels follow the sounding note and stay on it through its
release and the rest after it (the harmonic synthesizer needs a pitch wherever sound is left; the
loudness curve says how much). Clips are rendered in one FluidSynth run with a gap between them for the
release to die away, then cut apart; the rendering is deterministic, so the same settings give the same
clips (and audio-ddsp's feature cache finds them again).

    clips = make_solo_clips("flute", clips=150, seconds=4.0, sr=16000, hop=64)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from muselab.core.errors import ConfigError
from muselab.data.soundfont import find_soundfont, notes_to_midi, render_midi, soundfont_id

SOLO_VERSION = 1  # part of every clip's random seed: bump when the phrases change
GAP_S = 1.5  # silence after each clip in the rendering, for the release to die away before the next
# General MIDI program and the MIDI range it is played in (the comfortable range, not the extremes)
INSTRUMENTS: dict[str, tuple[int, int, int]] = {
    "violin": (40, 55, 93), "viola": (41, 48, 84), "cello": (42, 36, 76), "contrabass": (43, 28, 60),
    "trumpet": (56, 54, 82), "trombone": (57, 40, 72), "tuba": (58, 28, 58), "french horn": (60, 41, 77),
    "soprano sax": (64, 56, 87), "alto sax": (65, 49, 80), "tenor sax": (66, 44, 75), "oboe": (68, 58, 91),
    "english horn": (69, 52, 81), "bassoon": (70, 34, 72), "clarinet": (71, 50, 89), "piccolo": (72, 74, 103),
    "flute": (73, 60, 96), "recorder": (74, 72, 98), "pan flute": (75, 60, 96), "whistle": (78, 72, 96),
    "ocarina": (79, 60, 84),
}
DEFAULT_INSTRUMENT = "violin"
SOLO_DESCRIPTION = ("one real sampled instrument playing alone (data.instrument, violin by default): held notes "
                    "and melodies across its range and dynamics, rendered offline with FluidSynth and a General "
                    "MIDI SoundFont, pitch known from the notes (`apt-get install fluidsynth fluid-soundfont-gm`)")


def instrument_program(name: str) -> tuple[int, int, int]:
    """(General MIDI program, lowest and highest MIDI pitch) of an instrument `INSTRUMENTS` names."""
    key = " ".join(name.lower().replace("_", " ").replace("-", " ").split())
    if key not in INSTRUMENTS:
        raise ConfigError(f"unknown instrument '{name}' for builtin:soundfont; choose one of "
                          f"{', '.join(sorted(INSTRUMENTS))} (data.instrument)")
    return INSTRUMENTS[key]


@dataclass
class SoloClip:
    name: str
    audio: np.ndarray  # float32 [T] at the rate asked for
    f0_hz: np.ndarray  # float32 [1 + T // hop]: the pitch of the note sounding (or last sounded) at frame i


# steps (a second or a third) far more often than leaps, as melodies move
_STEP_WEIGHTS = np.array([1, 2, 3, 4, 6, 10, 10, 10, 10, 6, 4, 3, 2, 1], dtype=float) / 72.0


def clip_notes(low: int, high: int, index: int, seconds: float) -> list[tuple[int, int, float, float]]:
    """(pitch, velocity, start, duration) of clip `index`, one note at a time: every fourth clip a held
    note, the others a melody of 2-8 notes moving by steps and leaps, detached or legato."""
    rng = np.random.default_rng([SOLO_VERSION, low, high, index])
    start, end = rng.uniform(0.05, 0.2), seconds - min(0.5, 0.25 * seconds)  # leave room for the release
    if index % 4 == 0:
        return [(int(rng.integers(low, high + 1)), int(rng.integers(30, 128)), start, rng.uniform(0.5, 1.0) * (end - start))]
    lengths = rng.uniform(0.15, 0.9, size=int(rng.integers(2, 9)))
    lengths *= min(1.0, (end - start) / lengths.sum())
    legato = rng.random() < 0.5
    base = int(rng.integers(30, 128))  # each phrase has its own dynamic, each note a little around it
    notes, pitch, t = [], int(rng.integers(low, high + 1)), start
    for length in lengths:
        velocity = int(np.clip(base + rng.integers(-15, 16), 1, 127))
        # legato notes end as the next begins (not after: the labels assume one note at a time)
        notes.append((pitch, velocity, t, length * (1.0 if legato else rng.uniform(0.5, 0.9))))
        step = int(rng.choice([-12, -7, -5, -4, -3, -2, -1, 1, 2, 3, 4, 5, 7, 12], p=_STEP_WEIGHTS))
        pitch = pitch + step if low <= pitch + step <= high else pitch - step
        pitch = min(high, max(low, pitch))
        t += length
    return notes


def f0_labels(notes: list[tuple[int, int, float, float]], n_frames: int, sr: int, hop: int) -> np.ndarray:
    """Hz per frame (frame i at sample i * hop): the latest note begun by then; 0 before the first note."""
    times = np.arange(n_frames) * hop / sr
    f0 = np.zeros(n_frames, dtype=np.float32)
    for pitch, _, start, _ in sorted(notes, key=lambda n: n[2]):
        f0[times >= start] = 440.0 * 2.0 ** ((pitch - 69) / 12.0)
    return f0


def make_solo_clips(instrument: str = DEFAULT_INSTRUMENT, clips: int = 150, seconds: float = 4.0, sr: int = 16000,
                    hop: int = 64, soundfont: str | Path | None = None) -> tuple[list[SoloClip], str]:
    """`clips` clips of `seconds` each of one instrument, and the SoundFont's id (name and size) that made them."""
    program, low, high = instrument_program(instrument)
    font = find_soundfont(soundfont)
    slot = seconds + GAP_S
    plans = [clip_notes(low, high, i, seconds) for i in range(clips)]
    events = [(program, pitch, velocity, i * slot + start, duration)
              for i, notes in enumerate(plans) for pitch, velocity, start, duration in notes]
    total = clips * slot
    audio = render_midi(notes_to_midi(events, end=total), sr, soundfont=font, gain=0.5, seconds=total)
    length = round(seconds * sr)
    key = instrument.lower().replace(" ", "-")
    out = []
    for i, notes in enumerate(plans):
        piece = audio[round(i * slot * sr):][:length].copy()
        out.append(SoloClip(f"soundfont-{key}-{i}", piece, f0_labels(notes, 1 + length // hop, sr, hop)))
    return out, soundfont_id(font)
