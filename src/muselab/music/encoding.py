"""music-lm's token encoding: four voices on a time grid (as Coconet), read step by step.

A piece is `BOS KEY` and then, for every grid step (a 16th note at the default 4 steps per quarter), the
four voices' tokens, soprano first. A bar line adds `BAR KEY` before its step, so every window of a long
piece carries its key. Each voice has its own tokens: `NOTE(p)` (a note of MIDI pitch p starts here),
`HOLD` (the voice's note goes on) and `REST`; a shared vocabulary of pitches would leave the model to
count which voice it is writing. `EOS` ends the piece.

Vocabulary (388 tokens): PAD, BOS, EOS, BAR, 24 keys (tonic x major/minor), then per voice HOLD, REST
and 88 notes (A0 = 21 to C8 = 108). Transposing a token sequence by n semitones shifts every note and
key token; `transpose_table` gives that mapping as a lookup table, so augmentation is one gather.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from muselab.data.scores import MODES, Note, Score

PAD, BOS, EOS, BAR = 0, 1, 2, 3
KEY_BASE = 4
LOW, HIGH = 21, 108  # piano range
N_PITCHES = HIGH - LOW + 1
VOICE_BASE = KEY_BASE + 24
VOICE_SIZE = 2 + N_PITCHES  # HOLD, REST, notes
N_VOICES = 4
VOCAB_SIZE = VOICE_BASE + N_VOICES * VOICE_SIZE


def key_token(tonic: int, mode: str) -> int:
    return KEY_BASE + 2 * (tonic % 12) + MODES.index(mode)


def token_key(token: int) -> tuple[int, str]:
    offset = token - KEY_BASE
    return offset // 2, MODES[offset % 2]


def hold_token(voice: int) -> int:
    return VOICE_BASE + voice * VOICE_SIZE


def rest_token(voice: int) -> int:
    return VOICE_BASE + voice * VOICE_SIZE + 1


def note_token(voice: int, pitch: int) -> int:
    while pitch < LOW:  # outside the piano: the nearest octave inside it
        pitch += 12
    while pitch > HIGH:
        pitch -= 12
    return VOICE_BASE + voice * VOICE_SIZE + 2 + pitch - LOW


def voice_of(token: int) -> int:
    """The voice a token belongs to, or -1 for PAD/BOS/EOS/BAR/keys."""
    return (token - VOICE_BASE) // VOICE_SIZE if token >= VOICE_BASE else -1


def pitch_of(token: int) -> int | None:
    """The MIDI pitch of a NOTE token, else None."""
    if token < VOICE_BASE:
        return None
    within = (token - VOICE_BASE) % VOICE_SIZE
    return LOW + within - 2 if within >= 2 else None


def voice_tokens(voice: int) -> range:
    start = VOICE_BASE + voice * VOICE_SIZE
    return range(start, start + VOICE_SIZE)


def is_note(tokens: torch.Tensor) -> torch.Tensor:
    """Which tokens are NOTE tokens (any voice)."""
    within = (tokens - VOICE_BASE) % VOICE_SIZE
    return (tokens >= VOICE_BASE) & (within >= 2)


def transpose_table(semitones: int) -> torch.Tensor:
    """A [VOCAB_SIZE] map of every token to its transposition (notes leaving the piano fold an octave)."""
    table = torch.arange(VOCAB_SIZE)
    for tonic in range(12):
        for mode in MODES:
            table[key_token(tonic, mode)] = key_token(tonic + semitones, mode)
    for voice in range(N_VOICES):
        for pitch in range(LOW, HIGH + 1):
            table[note_token(voice, pitch)] = note_token(voice, pitch + semitones)
    return table


# ---------------------------------------------------------------------------------------------------
# Grid


@dataclass
class Grid:
    """Voice tokens per step `[steps][4]` and the steps a bar starts on."""

    steps: list[list[int]]
    bar_starts: set[int]


def bar_steps(score: Score, steps_per_quarter: int, n_steps: int) -> set[int]:
    bar = max(1, round(score.bar_quarters * steps_per_quarter))
    first = round(score.first_bar * steps_per_quarter) % bar
    return set(range(first, n_steps, bar))


def to_grid(score: Score, steps_per_quarter: int) -> Grid:
    """A score on the grid: starts and ends rounded to the nearest step, every note at least one step."""
    n_steps = max(1, math.ceil(score.length * steps_per_quarter - 1e-6))
    steps = [[rest_token(v) for v in range(N_VOICES)] for _ in range(n_steps)]
    for voice, notes in enumerate(score.voices):
        for pitch, start, duration in sorted(notes, key=lambda n: n[1]):
            a = min(round(start * steps_per_quarter), n_steps - 1)
            b = min(max(a + 1, round((start + duration) * steps_per_quarter)), n_steps)
            steps[a][voice] = note_token(voice, pitch)
            for t in range(a + 1, b):
                steps[t][voice] = hold_token(voice)
    return Grid(steps, bar_steps(score, steps_per_quarter, n_steps))


def encode(score: Score, steps_per_quarter: int) -> list[int]:
    """The token sequence of a whole piece, BOS to EOS."""
    grid = to_grid(score, steps_per_quarter)
    key = key_token(score.tonic, score.mode)
    ids = [BOS, key]
    for t, voices in enumerate(grid.steps):
        if t in grid.bar_starts:
            ids += [BAR, key]
        ids += voices
    return [*ids, EOS]


def decode(ids: Sequence[int], steps_per_quarter: int, name: str = "generated", bar_quarters: float = 4.0,
           tempo: float = 90.0) -> Score:
    """Tokens back to a score. Voice tokens fill the grid in order (a step ends after a bass token, or when a
    voice comes round again); HOLD continues the voice's note, and a HOLD after a rest stays a rest."""
    open_notes: list[list[int] | None] = [None] * N_VOICES  # [pitch, start step, steps]
    voices: list[list[Note]] = [[] for _ in range(N_VOICES)]
    step, last_voice = 0, -1
    tonic, mode = 0, "major"
    quarter = 1.0 / steps_per_quarter

    def close(v: int) -> None:
        note = open_notes[v]
        if note is not None:
            voices[v].append((note[0], note[1] * quarter, note[2] * quarter))
            open_notes[v] = None

    for token in ids:
        if token == EOS:
            break
        if KEY_BASE <= token < VOICE_BASE:
            tonic, mode = token_key(token)
            continue
        v = voice_of(token)
        if v < 0:
            continue
        if v <= last_voice:
            step += 1
        last_voice = v
        pitch = pitch_of(token)
        if pitch is not None:
            close(v)
            open_notes[v] = [pitch, step, 1]
        elif token == hold_token(v) and open_notes[v] is not None:
            open_notes[v][2] += 1
        else:
            close(v)
        if v == N_VOICES - 1:
            step += 1
            last_voice = -1
    for v in range(N_VOICES):
        close(v)
    return Score(name, voices, bar_quarters, 0.0, tonic, mode, tempo)


# ---------------------------------------------------------------------------------------------------
# Generation templates


FREE = -1  # a template slot the model fills (any token of its voice)


@dataclass
class Template:
    """What every position of a generated piece may hold: a fixed token, or FREE for voice `voices[i]`."""

    tokens: list[int]
    voices: list[int]  # per position the voice of a voice slot, else -1

    def __len__(self) -> int:
        return len(self.tokens)


def make_template(n_steps: int, bar_steps_: int, tonic: int, mode: str,
                  fixed: Sequence[Sequence[int | None]] | None = None, first_bar: int = 0) -> Template:
    """BOS KEY, then per step (BAR KEY at each bar, the first at step `first_bar`) four voice slots, then EOS.
    `fixed[t][v]` pins voice v at step t to a token (a primer, a melody to harmonise); None leaves it to the
    model."""
    key = key_token(tonic, mode)
    tokens, voices = [BOS, key], [-1, -1]
    for t in range(n_steps):
        if (t - first_bar) % bar_steps_ == 0:
            tokens += [BAR, key]
            voices += [-1, -1]
        for v in range(N_VOICES):
            pinned = fixed[t][v] if fixed is not None and t < len(fixed) else None
            tokens.append(FREE if pinned is None else pinned)
            voices.append(v)
    return Template([*tokens, EOS], [*voices, -1])
