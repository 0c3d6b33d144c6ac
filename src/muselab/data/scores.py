"""Symbolic music data: scores of up to four voices read from MIDI or MusicXML files, and ``builtin:bach``.

A `Score` is four voices (soprano, alto, tenor, bass, top to bottom), each a list of notes
``(midi pitch, start, duration)`` in quarter notes, plus the bar length, where the first full bar starts
(after a pickup) and the key. It is plain data: it saves as JSON and knows nothing of tokens (music-lm's
encoding lives in `muselab.music.encoding`).

**Users' files**: a folder (searched recursively) or one file of ``.mid``/``.midi`` (read with
pretty_midi) or ``.xml``/``.musicxml``/``.mxl`` (read with music21). The parts with notes (at most four,
those with the most notes) become the voices, highest average pitch first; a part that plays chords
keeps its top note. One part is a melody (soprano only); two are soprano and bass; three soprano, alto
and bass. A file that cannot be read, or holds no notes, is one error naming it; with
``data.skip_bad_files`` it is left out and counted.

**builtin:bach**: the four-part chorales that ship inside music21 (``music21.corpus.chorales``, 371
settings, of which those with exactly four voices are kept). Each is parsed once and cached as JSON
under ``$MUSELAB_CACHE/music`` (default ``~/.cache/muselab``), one file per chorale, so asking for a few
parses only those.

**Keys** are estimated from the duration-weighted pitch-class histogram with the Krumhansl-Kessler
profiles (the same estimate the evaluation uses), so files without a key signature get one too.

**Held-out pieces**: by tune, with the shared stable-hash rule (`data.split.split_of`) on the soprano's
first eight melodic intervals. Bach set many hymn tunes more than once (351 chorales, 230 tunes), and a
rule on names would put one setting of a tune in training and another among the held-out pieces, which
flatters every comparison with them (a held-out chorale would "copy" 50 notes from training). When the
rule holds out no piece or every piece (a few files), `hold_out` on the names takes a share instead.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from muselab.core.errors import DataError
from muselab.core.io import atomic_write_json, sha256_json
from muselab.data.split import hold_out, split_of

logger = logging.getLogger(__name__)

BUILTIN_BACH = "builtin:bach"
BACH_DESCRIPTION = "J. S. Bach's four-part chorales shipped with music21 (the 351 with four voices), parsed once and cached"
SCORES_VERSION = 1  # bump when parsing changes, so cached chorales are parsed again
MIDI_SUFFIXES = (".mid", ".midi")
XML_SUFFIXES = (".xml", ".musicxml", ".mxl")
VOICE_NAMES = ("soprano", "alto", "tenor", "bass")
PITCH_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
MODES = ("major", "minor")
# Which voices a piece with 1, 2 or 3 parts fills (top to bottom)
_VOICES_FOR_PARTS = {1: (0,), 2: (0, 3), 3: (0, 1, 3), 4: (0, 1, 2, 3)}

Note = tuple[int, float, float]  # (midi pitch, start, duration), times in quarter notes


@dataclass
class Score:
    """Up to four voices of notes; times in quarter notes from the start of the piece."""

    name: str
    voices: list[list[Note]]  # always four lists (an empty one is a silent voice)
    bar_quarters: float = 4.0  # the length of a bar (3/4 -> 3, 6/8 -> 3)
    first_bar: float = 0.0  # where the first full bar starts (after a pickup)
    tonic: int = 0  # pitch class of the key's tonic, 0 = C
    mode: str = "major"
    tempo: float = 90.0  # quarter notes per minute, as written (or the default)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def length(self) -> float:
        return max((s + d for v in self.voices for _, s, d in v), default=0.0)

    @property
    def key_name(self) -> str:
        return f"{PITCH_NAMES[self.tonic]} {self.mode}"

    def notes(self) -> list[Note]:
        return [n for v in self.voices for n in v]

    def transposed(self, semitones: int) -> Score:
        return Score(self.name, [[(p + semitones, s, d) for p, s, d in v] for v in self.voices], self.bar_quarters,
                     self.first_bar, (self.tonic + semitones) % 12, self.mode, self.tempo, dict(self.extra))

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["voices"] = [[[p, round(s, 4), round(d, 4)] for p, s, d in v] for v in self.voices]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Score:
        voices = [[(int(p), float(s), float(d)) for p, s, d in v] for v in data["voices"]]
        return cls(data["name"], voices, float(data["bar_quarters"]), float(data["first_bar"]), int(data["tonic"]),
                   str(data["mode"]), float(data.get("tempo", 90.0)), dict(data.get("extra", {})))


# ---------------------------------------------------------------------------------------------------
# Keys


# Krumhansl & Kessler (1982) probe-tone profiles, tonic first
_MAJOR_PROFILE = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
_MINOR_PROFILE = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
# Scale degrees counted as "in the key": the major scale; natural minor plus the leading tone
_SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10, 11)}


def pitch_class_histogram(notes: Sequence[Note], weighted: bool = True) -> np.ndarray:
    """Share of each pitch class (by duration when `weighted`), summing to 1 (zeros for no notes)."""
    hist = np.zeros(12)
    for p, _, d in notes:
        hist[p % 12] += d if weighted else 1.0
    total = hist.sum()
    return hist / total if total > 0 else hist


def estimate_key(notes: Sequence[Note]) -> tuple[int, str]:
    """(tonic pitch class, "major" | "minor") whose profile correlates best with the notes' histogram."""
    hist = pitch_class_histogram(notes)
    if not hist.any():
        return 0, "major"
    best, best_r = (0, "major"), -2.0
    for mode, profile in (("major", _MAJOR_PROFILE), ("minor", _MINOR_PROFILE)):
        for tonic in range(12):
            r = float(np.corrcoef(hist, np.roll(profile, tonic))[0, 1])
            if r > best_r:
                best, best_r = (tonic, mode), r
    return best


def scale_pitch_classes(tonic: int, mode: str) -> set[int]:
    return {(tonic + d) % 12 for d in _SCALES[mode]}


def parse_key(text: str) -> tuple[int, str]:
    """"C major", "F# minor", "Bb", "a" (lower case: minor) -> (tonic pitch class, mode); ValueError if not."""
    found = re.fullmatch(r"\s*([A-Ga-g])([#b]?)\s*(major|minor|maj|min|m)?\s*", text)
    if not found:
        raise ValueError(f"'{text}' is not a key; write e.g. 'C major', 'F# minor' or 'Bb'")
    letter, accidental, mode = found.groups()
    tonic = (PITCH_NAMES.index(letter.upper()) + {"#": 1, "b": -1, "": 0}[accidental]) % 12
    if mode is None:
        mode = "minor" if letter.islower() else "major"
    return tonic, "minor" if mode.startswith("m") and mode not in ("major", "maj") else "major"


# ---------------------------------------------------------------------------------------------------
# Reading files


def _arrange(name: str, parts: list[list[Note]], bar_quarters: float, first_bar: float, tempo: float) -> Score:
    """Parts (any number) -> a four-voice score: the busiest four, highest first, chords to their top note."""
    parts = [_top_line(p) for p in parts if p]
    if not parts:
        raise DataError(f"'{name}' holds no notes; give a MIDI or MusicXML file with at least one melody")
    parts = sorted(parts, key=len, reverse=True)[:4]
    parts.sort(key=lambda p: -float(np.mean([n[0] for n in p])))
    voices: list[list[Note]] = [[], [], [], []]
    for slot, part in zip(_VOICES_FOR_PARTS[len(parts)], parts, strict=True):
        voices[slot] = part
    tonic, mode = estimate_key([n for v in voices for n in v])
    return Score(name, voices, bar_quarters, first_bar, tonic, mode, tempo)


def _top_line(notes: list[Note]) -> list[Note]:
    """One note at a time: of notes starting together the highest; a note is cut where the next begins."""
    by_start: dict[float, Note] = {}
    for p, s, d in notes:
        if d > 0 and (s not in by_start or p > by_start[s][0]):
            by_start[s] = (p, s, d)
    line = [by_start[s] for s in sorted(by_start)]
    return [(p, s, min(d, line[i + 1][1] - s) if i + 1 < len(line) else d) for i, (p, s, d) in enumerate(line)]


def read_midi(path: Path, name: str | None = None) -> Score:
    """A MIDI file as a score (pretty_midi); DataError naming the file when it cannot be read."""
    import pretty_midi

    name = name or path.name
    try:
        midi = pretty_midi.PrettyMIDI(str(path))
    except Exception as e:  # pretty_midi/mido raise many kinds (OSError, EOFError, KeyError, ValueError...)
        raise DataError(f"'{path}' is not a readable MIDI file ({_one_line(e)}); re-export it or leave it out "
                        "(--skip-bad-files)") from None
    per_quarter = float(midi.resolution)

    def quarters(t: float) -> float:
        return round(midi.time_to_tick(t) / per_quarter * 48) / 48  # 1/48 quarter: triplets and 32nds exact

    parts = [[(n.pitch, quarters(n.start), quarters(n.end) - quarters(n.start)) for n in inst.notes]
             for inst in midi.instruments if not inst.is_drum]
    sig = midi.time_signature_changes[0] if midi.time_signature_changes else None
    bar = sig.numerator * 4.0 / sig.denominator if sig else 4.0
    tempo = float(midi.get_tempo_changes()[1][0]) if len(midi.get_tempo_changes()[1]) else 120.0
    return _arrange(name, parts, bar, 0.0, tempo)


def read_musicxml(path: Path, name: str | None = None, parsed: Any = None) -> Score:
    """A MusicXML file (or an already parsed music21 stream) as a score."""
    import music21

    name = name or path.name
    try:
        stream = parsed if parsed is not None else music21.converter.parse(str(path))
    except Exception as e:  # music21 raises its own exceptions and plain ones for damaged files
        raise DataError(f"'{path}' is not a readable MusicXML file ({_one_line(e)}); re-export it or leave it "
                        "out (--skip-bad-files)") from None
    parts = list(getattr(stream, "parts", [])) or [stream]
    voices = []
    for part in parts:
        notes: list[Note] = []
        for element in part.stripTies().flatten().notes:
            pitches = [p.midi for p in getattr(element, "pitches", ())]
            if pitches:
                notes.append((max(pitches), float(element.offset), float(element.quarterLength)))
        voices.append(notes)
    bar, first_bar = _bars(parts[0], music21)
    marks = list(stream.flatten().getElementsByClass(music21.tempo.MetronomeMark))
    tempo = float(marks[0].getQuarterBPM() or 90.0) if marks else 90.0
    return _arrange(name, voices, bar, first_bar, tempo)


def _bars(part: Any, music21: Any) -> tuple[float, float]:
    """(bar length, start of the first full bar) of a music21 part, in quarters."""
    signatures = list(part.recurse().getElementsByClass(music21.meter.TimeSignature))
    bar = float(signatures[0].barDuration.quarterLength) if signatures else 4.0
    measures = list(part.getElementsByClass(music21.stream.Measure))
    first = float(measures[0].duration.quarterLength) if measures else bar
    return bar, first if 0 < first < bar else 0.0


def read_score(path: Path, name: str | None = None) -> Score:
    suffix = path.suffix.lower()
    if suffix in MIDI_SUFFIXES:
        return read_midi(path, name)
    if suffix in XML_SUFFIXES:
        return read_musicxml(path, name)
    raise DataError(f"'{path}' is not a MIDI (.mid, .midi) or MusicXML (.xml, .musicxml, .mxl) file")


def list_score_files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise DataError(f"'{root}' does not exist; give a folder of MIDI/MusicXML files, one such file, or "
                        f"{BUILTIN_BACH}")
    found = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in MIDI_SUFFIXES + XML_SUFFIXES)
    if not found:
        raise DataError(f"no MIDI (.mid, .midi) or MusicXML (.xml, .musicxml, .mxl) file under '{root}'")
    return found


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:200] or type(error).__name__


# ---------------------------------------------------------------------------------------------------
# builtin:bach


def cache_folder() -> Path:
    base = os.environ.get("MUSELAB_CACHE") or Path.home() / ".cache" / "muselab"
    return Path(base).expanduser() / "music" / f"bach-v{SCORES_VERSION}"


def bach_names() -> list[str]:
    """The chorales music21 ships, as corpus names ("bach/bwv269"), in music21's order."""
    from music21.corpus.chorales import Iterator

    return [str(n) for n in Iterator(returnType="filename")]


def _bach_chorale(name: str, folder: Path) -> Score | None:
    """One chorale from the cache, parsed (and cached) when missing; None when it has not four voices."""
    path = folder / (name.replace("/", "_") + ".json")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Score.from_json(data["score"]) if data.get("score") else None
    except (OSError, ValueError, KeyError, TypeError):
        pass
    from music21 import corpus

    stream = corpus.parse(name)
    score = None
    if len(stream.parts) == 4:
        score = read_musicxml(Path(name), name=name.removeprefix("bach/"), parsed=stream)
        if any(not v for v in score.voices):
            score = None
    atomic_write_json(path, {"name": name, "score": score.to_json() if score else None})
    return score


def load_bach(limit: int = 0, progress: Callable[[int, int], None] | None = None) -> list[Score]:
    """The four-voice chorales (the first `limit` of music21's list when `limit`), parsed once and cached."""
    folder = cache_folder()
    folder.mkdir(parents=True, exist_ok=True)
    names = bach_names()[: limit or None]
    missing = sum(not (folder / (n.replace("/", "_") + ".json")).is_file() for n in names)
    if missing:
        logger.info(f"parsing {missing} Bach chorales with music21 (once; cached under {folder})")
    scores = []
    for i, name in enumerate(names):
        score = _bach_chorale(name, folder)
        if score is not None:
            scores.append(score)
        if progress:
            progress(i + 1, len(names))
    return scores


# ---------------------------------------------------------------------------------------------------
# Data sets


@dataclass
class ScoreData:
    train: list[Score]
    test: list[Score]
    source: str
    fingerprint: str
    skipped: list[str] = field(default_factory=list)


def tune_key(score: Score, intervals: int = 8) -> str:
    """What every setting of one tune shares: the soprano's first melodic intervals (repeated notes merged),
    so transposed settings match; a piece without a soprano line falls back to its name."""
    pitches = [p for p, _, _ in sorted(score.voices[0], key=lambda n: n[1])]
    pitches = [p for i, p in enumerate(pitches) if i == 0 or p != pitches[i - 1]]
    if len(pitches) < 4:
        return "name:" + score.name
    steps = [b - a for a, b in zip(pitches, pitches[1:], strict=False)][:intervals]
    return "tune:" + " ".join(map(str, steps))


def load_scores(spec: str, test_share: float = 0.1, skip_bad_files: bool = False, limit: int = 0) -> ScoreData:
    """Pieces of `spec` (builtin:bach, a folder or a file), split into training and held-out pieces."""
    skipped: list[str] = []
    if spec == BUILTIN_BACH:
        scores, source = load_bach(limit), BACH_DESCRIPTION
    elif spec.startswith("builtin:"):
        raise DataError(f"unknown built-in music data '{spec}'; music-lm knows {BUILTIN_BACH}, or pass a folder of "
                        "MIDI/MusicXML files")
    else:
        root = Path(spec).expanduser()
        scores = []
        for path in list_score_files(root)[: limit or None]:
            try:
                scores.append(read_score(path, str(path.relative_to(root)) if root.is_dir() else path.name))
            except DataError as err:
                if not skip_bad_files:
                    raise
                skipped.append(str(err))
        if skipped:
            logger.warning(f"skipped {len(skipped)} bad music file(s) (data.skip_bad_files), e.g. {skipped[0]}")
        source = f"MIDI/MusicXML files under {root}"
    if not scores:
        raise DataError(f"no usable piece in '{spec}'" + (f" ({len(skipped)} skipped)" if skipped else ""))
    held = [split_of(tune_key(s), test_share=test_share) == "test" for s in scores]
    if all(held) or not any(held):
        held = hold_out([s.name for s in scores], test_share)
    train = [s for s, h in zip(scores, held, strict=True) if not h]
    test = [s for s, h in zip(scores, held, strict=True) if h]
    fingerprint = sha256_json([s.to_json() for s in scores])
    return ScoreData(train, test or train[-1:], source, fingerprint, skipped)
