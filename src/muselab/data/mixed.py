"""``builtin:mixed``: diverse audio at 22,050 Hz for a vocoder that has to work on sounds it never heard.

Made locally, nothing downloaded, and cached:

- **instruments**: notes, phrases and chords played by General MIDI programs of a real sampled
  SoundFont (FluidSynth with FluidR3_GM.sf2 or TimGM6mb.sf2, `muselab.data.soundfont`), in all of
  General MIDI's sixteen families plus the drum kit (category = the family, e.g. "guitar");
- **speech**: flite's four voices reading the built-in sentences (`builtin:speech`, 16 kHz, resampled to
  22,050 Hz; category = "voice:NAME");
- **tones**: muselab's four synthetic instruments (`builtin:tones`, made at 22,050 Hz; category "tones").

**Held-out categories** (never trained on; every clip of them is test material): the three instrument
categories and the one voice whose md5 of "family:NAME" (over the 17 instrument categories) or
"voice:NAME" (over the 4 voices) is lowest: guitar, ensemble and drums, and the voice slt. They depend
on the names alone, so every size of the data set holds out the same ones. Of every other category a
share of whole clips is held out as well (`muselab.data.split.hold_out`, stratified by category), so
evaluation can compare seen and unseen kinds of sound.

Every clip is drawn from a generator seeded by its category, program and index, so a larger data set
extends a smaller one. Clips are made once and cached under ``$MUSELAB_CACHE/mixed`` (default
``~/.cache/muselab``) as 16-bit samples with a JSON index, keyed by the version, the size and the
SoundFont and flite used.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from math import gcd
from pathlib import Path
from typing import Any

import numpy as np

from muselab.core.errors import ConfigError
from muselab.core.io import atomic_write, atomic_write_json, sha256_json
from muselab.data.soundfont import (
    DRUMS,
    GM_FAMILIES,
    find_soundfont,
    notes_to_midi,
    render_midi,
    soundfont_id,
)
from muselab.data.split import hold_out, stable_fraction

logger = logging.getLogger(__name__)

MIXED_VERSION = 1  # bump when the build changes, so cached data is made again
MIXED_SAMPLE_RATE = 22050
VOICES = ("slt", "rms", "awb", "kal16")
INSTRUMENT_CATEGORIES = (*GM_FAMILIES, "drums")


def _lowest(names: tuple[str, ...], kind: str, count: int) -> tuple[str, ...]:
    return tuple(sorted(names, key=lambda n: stable_fraction(f"{kind}:{n}"))[:count])


HELD_OUT_FAMILIES = _lowest(INSTRUMENT_CATEGORIES, "family", 3)  # guitar, ensemble, drums
HELD_OUT_VOICES = _lowest(VOICES, "voice", 1)  # slt
HELD_OUT_CATEGORIES = (*HELD_OUT_FAMILIES, *(f"voice:{v}" for v in HELD_OUT_VOICES))
HELD_OUT_RULE = ("categories never trained on: the 3 instrument categories with the lowest md5 of 'family:NAME' "
                 "and the voice with the lowest md5 of 'voice:NAME'; of every other category a share of whole "
                 "clips by the stable-hash rule")
MIXED_DESCRIPTION = ("notes, phrases and chords of all General MIDI families (FluidSynth and a General MIDI "
                     "SoundFont), flite's four voices and builtin:tones, at 22,050 Hz; "
                     f"{', '.join(HELD_OUT_CATEGORIES)} held out; made locally and cached "
                     "(`apt-get install fluidsynth fluid-soundfont-gm flite`)")

# MIDI pitch ranges that each family plays well in (bass low, pipes and leads high)
_RANGES = {"bass": (28, 55), "pipe": (60, 96), "synth lead": (48, 84), "strings": (40, 84), "brass": (45, 79),
           "reed": (48, 84), "piano": (33, 96), "chromatic percussion": (55, 96)}
_DEFAULT_RANGE = (43, 84)
_DRUM_NOTES = (35, 36, 38, 40, 42, 44, 46, 49, 51, 45, 47, 48, 50, 39, 54, 56, 69, 70, 75, 76)
_GAP_S = 2.0  # silence between clips in one rendering: releases die away before the next clip


@dataclass(frozen=True)
class MixedSize:
    """How much of each kind to make (the defaults: about 25 minutes, two to three minutes to build)."""

    programs_per_family: int = 8  # of the eight General MIDI programs in each family (drums: one kit)
    clips_per_program: int = 2
    utterances: int = 240  # flite utterances, the voices taking turns
    tones: int = 40  # builtin:tones clips
    clip_seconds: float = 3.0  # instrument and tones clips (speech keeps its own length)

    def __post_init__(self) -> None:
        if not (1 <= self.programs_per_family <= 8 and self.clips_per_program >= 1 and self.utterances >= 0
                and self.tones >= 0 and self.clip_seconds >= 1.0):
            raise ConfigError(f"builtin:mixed size out of range: {self} (programs_per_family 1-8, clips_per_program "
                              ">= 1, utterances and tones >= 0, clip_seconds >= 1)")


@dataclass
class MixedClip:
    audio: np.ndarray  # float32 [T] at 22,050 Hz
    category: str  # "piano", ..., "drums", "voice:rms", "tones"
    source: str  # "instrument", "speech" or "tones"
    key: str  # stable name of the clip

    @property
    def seen(self) -> bool:
        return self.category not in HELD_OUT_CATEGORIES


@dataclass
class MixedData:
    train: list[MixedClip]
    test: list[MixedClip]
    info: dict[str, Any] = field(default_factory=dict)


# -- instruments ---------------------------------------------------------------------------------------
def _programs(family: str, count: int) -> list[int]:
    if family == "drums":
        return [DRUMS]
    first = GM_FAMILIES.index(family) * 8
    return sorted(range(first, first + 8), key=lambda p: stable_fraction(f"program:{p}"))[:count]


def _clip_notes(program: int, family: str, index: int, seconds: float) -> list[tuple[int, int, float, float]]:
    """(pitch, velocity, start, duration) of one clip: a held note, a phrase of 2-5 notes, or chords."""
    rng = np.random.default_rng([MIXED_VERSION, program, index])
    if program == DRUMS:  # a bar or two of a beat on a grid
        step = 60.0 / rng.uniform(80, 160) / 2
        voices = rng.choice(_DRUM_NOTES, size=int(rng.integers(3, 7)), replace=False)
        notes = []
        for slot in range(max(1, int((seconds - 0.6) / step))):
            for drum in voices:
                if rng.random() < 0.3:
                    notes.append((int(drum), int(rng.integers(40, 128)), 0.1 + slot * step, 0.1))
        return notes or [(38, 100, 0.1, 0.1)]
    low, high = _RANGES.get(family, _DEFAULT_RANGE)
    kind = index % 3
    start, end = rng.uniform(0.05, 0.25), seconds - min(0.6, 0.3 * seconds)  # the release stays inside the clip
    if kind == 0:  # one held note
        duration = rng.uniform(0.4, 1.0) * (end - start)
        return [(int(rng.integers(low, high + 1)), int(rng.integers(50, 128)), start, duration)]
    count = int(rng.integers(2, 6)) if kind == 1 else int(rng.integers(2, 4))
    lengths = rng.uniform(0.2, 1.0, size=count)
    lengths *= min(1.0, (end - start) / lengths.sum())
    notes, pitch, t = [], int(rng.integers(low, high + 1)), start
    for length in lengths:
        velocity = int(rng.integers(40, 128))
        if kind == 1:  # a melody, detached or legato
            notes.append((pitch, velocity, t, length * rng.uniform(0.6, 1.05)))
        else:  # a chord: root plus a third or fourth and a fifth, some notes left out
            for interval in (0, int(rng.choice([3, 4, 5])), 7, 12)[: int(rng.integers(2, 5))]:
                if low <= pitch + interval <= high + 12:
                    notes.append((pitch + interval, velocity, t, length * 0.95))
        step = int(rng.choice([-7, -5, -4, -3, -2, -1, 1, 2, 3, 4, 5, 7]))
        pitch = pitch + step if low <= pitch + step <= high else pitch - step
        t += length
    return notes


def _render_family(family: str, size: MixedSize, sr: int, font: Path) -> list[MixedClip]:
    """All clips of one family in one FluidSynth run (one channel per program), cut apart."""
    programs = _programs(family, size.programs_per_family)
    per_program = size.clips_per_program * (size.programs_per_family if family == "drums" else 1)
    slot = size.clip_seconds + _GAP_S
    notes, keys = [], []
    for p_i, program in enumerate(programs):
        for c in range(per_program):
            offset = (p_i * per_program + c) * slot
            notes += [(program, pitch, vel, offset + start, dur)
                      for pitch, vel, start, dur in _clip_notes(program, family, c, size.clip_seconds)]
            keys.append(f"{family}/{program}/{c}")
    total = len(keys) * slot
    audio = render_midi(notes_to_midi(notes, end=total), sr, soundfont=font, gain=0.4, seconds=total)
    length = round(size.clip_seconds * sr)
    clips = []
    for i, key in enumerate(keys):
        start = round(i * slot * sr)
        clips.append(MixedClip(audio[start:start + length].copy(), family, "instrument", key))
    return clips


# -- speech and tones ------------------------------------------------------------------------------------
def _resample(x: np.ndarray, sr_from: int, sr_to: int) -> np.ndarray:
    from scipy.signal import resample_poly

    g = gcd(sr_from, sr_to)
    return resample_poly(x, sr_to // g, sr_from // g).astype(np.float32)


def _speech(size: MixedSize, sr: int, workers: int | None) -> tuple[list[MixedClip], str | None]:
    import soundfile as sf

    from muselab.data.speech import load_speech

    data = load_speech("builtin:speech", utterances=size.utterances, workers=workers)
    clips = []
    for u in data.utterances:
        wav, rate = sf.read(u.path, dtype="float32", always_2d=True)
        clips.append(MixedClip(_resample(wav.mean(axis=1), rate, sr), f"voice:{u.speaker}", "speech", u.id))
    return clips, data.info.get("flite")


def _tones(size: MixedSize, sr: int) -> list[MixedClip]:
    from muselab.data.tones import make_tones

    return [MixedClip(c.audio.astype(np.float32), "tones", "tones", f"tones/{i}")
            for i, c in enumerate(make_tones(size.tones, size.clip_seconds, sample_rate=sr, hop=256))]


# -- the data set --------------------------------------------------------------------------------------
def _level(clip: MixedClip) -> np.ndarray:
    """The clip at a peak level drawn from -20 to -1 dBFS (seeded by its key): loud and quiet material."""
    peak = float(np.abs(clip.audio).max())
    if peak < 1e-6:
        return clip.audio
    target = 10 ** ((-1 - 19 * stable_fraction(f"level:{clip.key}")) / 20) if clip.source != "tones" else peak
    return (clip.audio * (target / peak)).astype(np.float32)


def _cache_folder(cache_dir: str | os.PathLike[str] | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    base = os.environ.get("MUSELAB_CACHE") or Path.home() / ".cache" / "muselab"
    return Path(base).expanduser() / "mixed"


def _build(size: MixedSize, sr: int, font: Path, workers: int | None) -> tuple[list[MixedClip], str | None]:
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        jobs = [pool.submit(_render_family, family, size, sr, font) for family in INSTRUMENT_CATEGORIES]
        speech, flite = _speech(size, sr, workers) if size.utterances else ([], None)
        clips = [c for job in jobs for c in job.result()]
    clips += speech + (_tones(size, sr) if size.tones else [])
    # A note outside the range a SoundFont sampled (a contrabass at C6) sounds as nothing: left out
    audible = [c for c in clips if np.abs(c.audio).max() > 1e-3]
    return [MixedClip(_level(c), c.category, c.source, c.key) for c in audible], flite


def _save(folder: Path, clips: list[MixedClip], meta: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    samples = np.concatenate([np.round(np.clip(c.audio, -1, 1) * 32767).astype(np.int16) for c in clips])

    def write(tmp: Path) -> None:
        with tmp.open("wb") as file:  # a file object: np.save would add .npy to the temporary name
            np.save(file, samples, allow_pickle=False)

    atomic_write(folder / "audio.npy", write)
    index = [{"key": c.key, "category": c.category, "source": c.source, "length": len(c.audio)} for c in clips]
    atomic_write_json(folder / "index.json", {**meta, "clips": index})  # written last: marks the build complete


def _read(folder: Path, meta: dict[str, Any]) -> list[MixedClip] | None:
    try:
        index = json.loads((folder / "index.json").read_text(encoding="utf-8"))
        samples = np.load(folder / "audio.npy", allow_pickle=False, mmap_mode="r")
    except (OSError, ValueError):
        return None
    if {k: index.get(k) for k in meta} != meta or samples.shape[0] != sum(c["length"] for c in index["clips"]):
        return None
    clips, start = [], 0
    for row in index["clips"]:
        audio = (samples[start:start + row["length"]].astype(np.float32) / 32767).astype(np.float32)
        clips.append(MixedClip(audio, row["category"], row["source"], row["key"]))
        start += row["length"]
    return clips


def load_mixed(size: MixedSize | None = None, *, test_share: float = 0.1, soundfont: str | None = None,
               workers: int | None = None, cache_dir: str | os.PathLike[str] | None = None,
               progress: Callable[[str], None] | None = None) -> MixedData:
    """builtin:mixed at 22,050 Hz, split into training clips and held-out clips (whole held-out categories
    and a `test_share` of every other category). Made on first use (FluidSynth and flite needed, one-line
    errors naming the packages when they are missing) and cached."""
    size = size or MixedSize()
    sr = MIXED_SAMPLE_RATE
    font = find_soundfont(soundfont)
    from muselab.data.speech import flite_version

    meta = {"version": MIXED_VERSION, "size": asdict(size), "sample_rate": sr, "soundfont": soundfont_id(font),
            "flite": flite_version() if size.utterances else None}
    folder = _cache_folder(cache_dir) / f"v{MIXED_VERSION}" / sha256_json(meta)[:24]
    clips = _read(folder, meta)
    if clips is None:
        if size.utterances and meta["flite"] is None:
            from muselab.core.errors import DataError
            from muselab.data.speech import FLITE_INSTALL

            raise DataError(f"builtin:mixed speaks with the speech synthesizer flite, which is not installed; "
                            f"{FLITE_INSTALL}")
        started = time.monotonic()
        if progress is not None:
            progress(f"making builtin:mixed with {font.name} and flite (once; cached in {folder.parent})")
        built, _ = _build(size, sr, font, workers)
        _save(folder, built, meta)
        clips = _read(folder, meta)  # as 16-bit samples, exactly what later loads read
        assert clips is not None
        logger.info(f"made builtin:mixed ({len(built)} clips, {sum(len(c.audio) for c in built) / sr / 60:.1f} "
                    f"minutes) in {time.monotonic() - started:.0f} s; cached in {folder}")
    seen = [c for c in clips if c.seen]
    held = hold_out([c.key for c in seen], test_share, groups=[c.category for c in seen])
    train = [c for c, h in zip(seen, held, strict=True) if not h]
    test = [c for c, h in zip(seen, held, strict=True) if h] + [c for c in clips if not c.seen]
    categories: dict[str, dict[str, Any]] = {}
    for part, items in (("train", train), ("test", test)):
        for c in items:
            row = categories.setdefault(c.category, {"seen": c.seen, "train_seconds": 0.0, "test_seconds": 0.0})
            row[f"{part}_seconds"] = round(row[f"{part}_seconds"] + len(c.audio) / sr, 2)
    info = {"source": MIXED_DESCRIPTION, "fingerprint": sha256_json({**meta, "test_share": test_share}),
            "held_out_categories": list(HELD_OUT_CATEGORIES), "held_out_rule": HELD_OUT_RULE,
            "soundfont": meta["soundfont"], "flite": meta["flite"], "size": asdict(size), "categories": categories}
    return MixedData(train, test, info)
