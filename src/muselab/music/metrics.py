"""How music-lm's pieces compare with Bach's: key, pitch and rhythm statistics, voice leading, novelty.

- **In-key share**: notes whose pitch class is in the requested key's scale (major; natural minor plus the
  leading tone).
- **Pitch-class histogram distance**: total variation (half the L1 distance, 0 to 1) between a piece's
  duration-weighted pitch-class histogram, read relative to its key's tonic, and the held-out pieces' mean
  histogram in the same mode.
- **Duration distance**: total variation between note-length histograms (lengths in quarters, binned).
- **Voice leading** (four sounding voices): a chord is a grid step where some voice starts a note while all
  four sound; two voices a fifth (or an octave/unison) apart in consecutive chords that both move the same
  way make a parallel fifth (octave). Crossings: chords where a voice sounds below the voice under it.
  Range violations: notes outside the usual SATB ranges.
- **Novelty**: the longest run of consecutive notes of one voice (intervals and lengths, so a transposed
  copy counts) that also occurs in a training voice.
- **Random baseline**: each piece's own rhythm with pitches drawn uniformly in each voice's range, scored
  against the same key (key-matched), so each number has a floor beside it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from muselab.data.scores import Note, Score, pitch_class_histogram, scale_pitch_classes

# Usual choir ranges (MIDI): soprano C4-A5, alto G3-D5, tenor C3-A4, bass E2-D4
VOICE_RANGES = ((60, 81), (55, 74), (48, 69), (40, 62))
DURATION_BINS = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


def in_key_share(score: Score, tonic: int, mode: str) -> float:
    scale = scale_pitch_classes(tonic, mode)
    notes = score.notes()
    return sum(p % 12 in scale for p, _, _ in notes) / len(notes) if notes else 0.0


def relative_histogram(score: Score, tonic: int | None = None) -> np.ndarray:
    """The pitch-class histogram rotated so the tonic is 0."""
    return np.roll(pitch_class_histogram(score.notes()), -(score.tonic if tonic is None else tonic))


def reference_histograms(scores: Iterable[Score]) -> dict[str, np.ndarray]:
    """Mean tonic-relative histogram per mode (and "any" over all pieces)."""
    by_mode: dict[str, list[np.ndarray]] = {"any": []}
    for score in scores:
        hist = relative_histogram(score)
        by_mode.setdefault(score.mode, []).append(hist)
        by_mode["any"].append(hist)
    return {mode: np.mean(hists, axis=0) for mode, hists in by_mode.items() if hists}


def total_variation(a: np.ndarray, b: np.ndarray) -> float:
    return float(0.5 * np.abs(np.asarray(a) - np.asarray(b)).sum())


def pch_distance(score: Score, tonic: int, mode: str, references: dict[str, np.ndarray]) -> float:
    return total_variation(relative_histogram(score, tonic), references.get(mode, references["any"]))


def duration_histogram(notes: Iterable[Note]) -> np.ndarray:
    bins = np.asarray(DURATION_BINS)
    hist = np.zeros(len(bins))
    for _, _, d in notes:
        hist[int(np.abs(bins - d).argmin())] += 1
    return hist / hist.sum() if hist.sum() else hist


# ---------------------------------------------------------------------------------------------------
# Voice leading


def sounding(score: Score, steps_per_quarter: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """`pitch[step, voice]` (-1 = silent) and `onset[step, voice]` on the grid."""
    n = max(1, int(np.ceil(score.length * steps_per_quarter - 1e-6)))
    pitch = np.full((n, 4), -1, dtype=np.int64)
    onset = np.zeros((n, 4), dtype=bool)
    for v, notes in enumerate(score.voices):
        for p, s, d in notes:
            a = min(round(s * steps_per_quarter), n - 1)
            b = min(max(a + 1, round((s + d) * steps_per_quarter)), n)
            pitch[a:b, v] = p
            onset[a, v] = True
    return pitch, onset


def voice_leading(score: Score, steps_per_quarter: int = 4) -> dict[str, float]:
    """Counts of chords, parallel fifths and octaves, crossings and out-of-range notes of one piece."""
    pitch, onset = sounding(score, steps_per_quarter)
    chords = pitch[onset.any(1) & (pitch >= 0).all(1)]
    fifths = octaves = 0
    for a, b in zip(chords[:-1], chords[1:], strict=True):
        for i in range(4):
            for j in range(i + 1, 4):
                move_i, move_j = b[i] - a[i], b[j] - a[j]
                if move_i == 0 or move_j == 0 or (move_i > 0) != (move_j > 0):
                    continue
                before, after = abs(a[i] - a[j]) % 12, abs(b[i] - b[j]) % 12
                if before == after == 7:
                    fifths += 1
                elif before == after == 0:
                    octaves += 1
    crossings = int(sum((c[:-1] < c[1:]).any() for c in chords))
    out_of_range = sum(not lo <= p <= hi for v, (lo, hi) in enumerate(VOICE_RANGES) for p, _, _ in score.voices[v])
    return {"chords": len(chords), "parallel_fifths": fifths, "parallel_octaves": octaves, "crossings": crossings,
            "notes": len(score.notes()), "out_of_range": out_of_range}


def voice_leading_rates(scores: Sequence[Score], steps_per_quarter: int = 4) -> dict[str, float]:
    """Parallels and crossings per 100 chords, and the share of notes out of range, over `scores`."""
    totals: dict[str, float] = {}
    for score in scores:
        for key, value in voice_leading(score, steps_per_quarter).items():
            totals[key] = totals.get(key, 0) + value
    chords = max(1.0, totals.get("chords", 0))
    return {"chords": int(totals.get("chords", 0)),
            "parallels_per_100_chords": 100 * (totals.get("parallel_fifths", 0) + totals.get("parallel_octaves", 0))
            / chords,
            "parallel_fifths_per_100_chords": 100 * totals.get("parallel_fifths", 0) / chords,
            "parallel_octaves_per_100_chords": 100 * totals.get("parallel_octaves", 0) / chords,
            "crossings_per_100_chords": 100 * totals.get("crossings", 0) / chords,
            "out_of_range_share": totals.get("out_of_range", 0) / max(1.0, totals.get("notes", 0))}


# ---------------------------------------------------------------------------------------------------
# Novelty


def _moves(notes: Sequence[Note]) -> list[tuple[int, float]]:
    """A voice as (interval from the previous note, length): the same under transposition."""
    ordered = sorted(notes, key=lambda n: n[1])
    return [(p - ordered[i - 1][0] if i else 0, round(d, 3)) for i, (p, _, d) in enumerate(ordered)]


class CopyIndex:
    """Every run of consecutive notes in the training voices, to find the longest a new piece repeats."""

    def __init__(self, scores: Iterable[Score]) -> None:
        self.lines = [_moves(v)[1:] for s in scores for v in s.voices if len(v) > 1]
        self._grams: dict[int, set[tuple]] = {}

    @classmethod
    def from_lines(cls, lines: list[list[tuple[int, float]]]) -> CopyIndex:
        index = cls([])
        index.lines = lines
        return index

    def _has(self, n: int, runs: set[tuple]) -> bool:
        if n not in self._grams:
            self._grams[n] = {tuple(line[i:i + n]) for line in self.lines for i in range(len(line) - n + 1)}
        return not runs.isdisjoint(self._grams[n])

    def longest_copy(self, score: Score) -> int:
        """The most consecutive notes of one voice that a training voice also holds (0 for none)."""
        lines = [_moves(v)[1:] for v in score.voices if len(v) > 1]
        lo, hi = 0, max((len(line) for line in lines), default=0)
        while lo < hi:  # a copy of n moves contains copies of every shorter length: binary search
            mid = (lo + hi + 1) // 2
            runs = {tuple(line[i:i + mid]) for line in lines for i in range(len(line) - mid + 1)}
            lo, hi = (mid, hi) if self._has(mid, runs) else (lo, mid - 1)
        return lo + 1 if lo else 0  # n moves between n + 1 notes


# ---------------------------------------------------------------------------------------------------
# Baseline


def random_like(score: Score, rng: np.random.Generator) -> Score:
    """The piece's rhythm with every pitch drawn uniformly in its voice's range (the key-matched baseline is
    this piece scored against the key the original was asked for)."""
    voices = [[(int(rng.integers(lo, hi + 1)), s, d) for _, s, d in v]
              for v, (lo, hi) in zip(score.voices, VOICE_RANGES, strict=True)]
    return Score(score.name + "-random", voices, score.bar_quarters, score.first_bar, score.tonic, score.mode,
                 score.tempo)


def piece_report(scores: Sequence[Score], keys: Sequence[tuple[int, str]], references: dict[str, np.ndarray],
                 held_durations: np.ndarray, copies: CopyIndex | None, steps_per_quarter: int) -> dict[str, float]:
    """Every metric over `scores`, each asked for in `keys[i]`."""
    notes = [n for s in scores for n in s.notes()]
    report = {
        "in_key_share": float(np.mean([in_key_share(s, *k) for s, k in zip(scores, keys, strict=True)])),
        "pch_distance": float(np.mean([pch_distance(s, *k, references) for s, k in zip(scores, keys, strict=True)])),
        "duration_distance": total_variation(duration_histogram(notes), held_durations),
        **voice_leading_rates(scores, steps_per_quarter),
    }
    if copies is not None:
        report["longest_copy_notes"] = max(copies.longest_copy(s) for s in scores)
    return report
