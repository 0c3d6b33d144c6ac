"""Speech data: a folder in the LJSpeech layout, and ``builtin:speech`` made locally with flite.

**LJSpeech layout**: ``metadata.csv`` with one ``id|text|normalized`` line per utterance (the third
field may be left out) and ``wavs/ID.wav``. Every line and every file's header is checked when the
folder is opened, so a bad line, an empty text, a missing or unreadable file is one error naming it;
the audio itself is read when asked for, resampled to the data set's rate with a note when a file has
another one.

**builtin:speech**: the sentences muselab ships (``data/sentences/plain.txt``) spoken by flite's four
voices (``slt``, ``rms``, ``awb``, ``kal16``: four speakers at 16 kHz). Utterance i is sentence
i mod S spoken by voice (i mod S + i div S) mod 4, so a larger count extends a smaller one and every
voice speaks about as much; S x 4 utterances are possible. Each utterance keeps flite's phones with
their end times (``flite -psdur``), which add up to the audio's length. Utterances are made once, in
parallel, and cached under ``$MUSELAB_CACHE/speech`` (default ``~/.cache/muselab``), one WAV and one
JSON file per utterance, keyed by voice and text, so a larger build reuses a smaller one.

**Held-out sentences**: a sentence is held out when md5 of its lowercased words, read as a number in
[0, 1), is below 0.05 (the rule `data/pairs.py` uses for users' pairs). The rule depends on the text
alone, so every speaker's reading of a held-out sentence is held out, in any data set, and never used
for training.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from muselab.core.errors import ConfigError, DataError
from muselab.core.io import atomic_write_json, sha256_json
from muselab.data.text import read_text_file

BUILTIN_PREFIX = "builtin:"
SPEECH_VERSION = 1  # bump when the build changes, so cached utterances are made again
SPEECH_VOICES = ("slt", "rms", "awb", "kal16")
SPEECH_SAMPLE_RATE = 16000
HELD_OUT_SHARE = 0.05
HELD_OUT_RULE = "md5 of the lowercased words of the text, as a number in [0, 1), below 0.05: held out"
FLITE_INSTALL = "install it with `apt-get install flite` (Debian, Ubuntu) or your system's package manager"
SPEECH_DESCRIPTION = ("plain English sentences spoken by flite's four voices (slt, rms, awb, kal16) at 16 kHz, "
                      "with phone durations; made locally and cached")

Phone = tuple[str, float]  # (flite phone, end time in seconds)


@dataclass(frozen=True)
class Utterance:
    """One recording and what is said in it. The audio is read on demand with `SpeechDataset.audio`."""

    id: str
    text: str
    normalized: str
    speaker: str
    path: Path
    file_sample_rate: int
    seconds: float
    phones: tuple[Phone, ...] | None = None  # flite's phones and end times (builtin:speech only)

    @property
    def held_out(self) -> bool:
        return is_held_out(self.text)


@dataclass
class SpeechDataset:
    """Utterances at one sample rate, with where they came from (for the model card)."""

    utterances: list[Utterance]
    sample_rate: int
    source: str
    fingerprint: str
    notes: list[str] = field(default_factory=list)  # what was changed, e.g. resampling
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.utterances)

    @property
    def speakers(self) -> list[str]:
        return sorted({u.speaker for u in self.utterances})

    def audio(self, utterance: Utterance) -> np.ndarray:
        """The utterance's samples, float32 [T] at the data set's sample rate."""
        from muselab.audio.io import load_audio

        samples, _, _ = load_audio(utterance.path, sr=self.sample_rate, min_seconds=0.0)
        return samples

    def split(self) -> tuple[list[Utterance], list[Utterance]]:
        """(train, held out) by the held-out sentence rule."""
        train = [u for u in self.utterances if not u.held_out]
        test = [u for u in self.utterances if u.held_out]
        return train, test


# --------------------------------------------------------------------------------------------------
# The held-out rule


def _split_key(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9']+", text.lower()))


def is_held_out(text: str) -> bool:
    """Whether a sentence is held out from training (see HELD_OUT_RULE); punctuation and case do not count."""
    digest = int(hashlib.md5(_split_key(text).encode("utf-8", "surrogatepass")).hexdigest(), 16)
    return (digest >> 76) / 2**52 < HELD_OUT_SHARE


def _sentence_lines(text: str) -> list[str]:
    """One sentence per non-empty line; lines starting with # are comments."""
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


@cache
def builtin_sentences() -> tuple[str, ...]:
    """The sentences builtin:speech speaks, in their fixed order."""
    return tuple(_sentence_lines(files("muselab.data").joinpath("sentences/plain.txt").read_text(encoding="utf-8")))


def read_sentences(path: Path) -> list[str]:
    """The sentences of a user's text file, in the format of builtin:speech's list (one per line, # comments)."""
    if not path.is_file():
        raise DataError(f"no sentences file at '{path}'; give a text file with one sentence per line")
    sentences = _sentence_lines(read_text_file(path))
    if not sentences:
        raise DataError(f"'{path}' holds no sentence; write one sentence per line")
    return sentences


def held_out_sentences() -> list[str]:
    """The built-in sentences that are never used for training."""
    return [s for s in builtin_sentences() if is_held_out(s)]


# --------------------------------------------------------------------------------------------------
# LJSpeech folders


def _fingerprint(utterances: Sequence[Utterance], extra: dict[str, Any]) -> str:
    rows = [[u.id, u.text, u.normalized, u.speaker, u.path.stat().st_size, u.phones] for u in utterances]
    return sha256_json({"utterances": rows, **extra})


def _wav_info(path: Path, where: str) -> tuple[int, float]:
    if not path.is_file():
        raise DataError(f"{where}: the audio file '{path}' is missing; add it or remove the line")
    try:
        info = sf.info(path)
    except (sf.SoundFileError, RuntimeError) as e:
        reason = str(e).replace("\n", " ").strip()
        raise DataError(f"{where}: cannot read '{path}' as audio ({reason}); replace the file or remove the "
                        "line") from None
    if info.frames == 0:
        raise DataError(f"{where}: '{path}' holds no audio samples; replace the file or remove the line")
    return int(info.samplerate), info.frames / info.samplerate


def _load_ljspeech(root: Path, sample_rate: int | None) -> SpeechDataset:
    metadata = root / "metadata.csv"
    layout = "an LJSpeech-style folder: metadata.csv with id|text|normalized lines and wavs/ID.wav"
    if not metadata.is_file():
        raise DataError(f"'{root}' has no metadata.csv; speech data must be {layout}")
    utterances: list[Utterance] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(read_text_file(metadata).split("\n"), start=1):
        if not line.strip():
            continue
        where = f"'{metadata}' line {lineno}"
        fields = [f.strip() for f in line.split("|")]
        if len(fields) not in (2, 3):
            raise DataError(f"{where}: expected id|text|normalized (3 fields separated by |), found "
                            f"{len(fields)} field{'s' if len(fields) != 1 else ''}; fix the line")
        uid, text = fields[0], fields[1]
        normalized = fields[2] if len(fields) == 3 and fields[2] else text
        if not uid or not re.fullmatch(r"[A-Za-z0-9._-]+", uid) or uid.startswith("."):
            raise DataError(f"{where}: the id {uid!r} is not a plain file name (letters, digits, . _ -); fix it")
        if uid in seen:
            raise DataError(f"{where}: the id {uid!r} is already used on line {seen[uid]}; give each line its own id")
        seen[uid] = lineno
        if not text:
            raise DataError(f"{where}: the text of {uid!r} is empty; write what is said or remove the line")
        path = root / "wavs" / f"{uid}.wav"
        file_rate, seconds = _wav_info(path, where)
        utterances.append(Utterance(uid, text, normalized, root.name, path, file_rate, seconds))
    if not utterances:
        raise DataError(f"'{metadata}' lists no utterances; write one id|text|normalized line per recording")
    rates = Counter(u.file_sample_rate for u in utterances)
    target = sample_rate or rates.most_common(1)[0][0]
    notes = [f"{n} file{'s' if n != 1 else ''} at {rate} Hz will be resampled to {target} Hz"
             for rate, n in sorted(rates.items()) if rate != target]
    data = SpeechDataset(utterances, target, str(root), _fingerprint(utterances, {"sample_rate": target}), notes)
    data.info = _summary(data)
    return data


# --------------------------------------------------------------------------------------------------
# builtin:speech


def _cache_folder(cache_dir: str | os.PathLike[str] | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    base = os.environ.get("MUSELAB_CACHE") or Path.home() / ".cache" / "muselab"
    return Path(base).expanduser() / "speech"


@cache
def flite_version() -> str | None:
    """flite's version line, or None when it is not installed."""
    exe = shutil.which("flite")
    if exe is None:
        return None
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False).stdout
    found = re.search(r"version:\s*(\S+)", out)
    return found.group(1) if found else out.strip() or "unknown"


def _parse_psdur(stdout: str) -> list[Phone]:
    phones: list[Phone] = []
    for token in stdout.split():
        name, _, end = token.rpartition(":")
        if name:
            phones.append((name, float(end)))
    return phones


def _synthesise(text: str, voice: str, wav: Path, meta: Path, version: str) -> None:
    """One utterance: flite writes the WAV, its phone end times are fitted to the audio, JSON last."""
    tmp = wav.parent / f".{wav.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp.wav"
    try:
        run = subprocess.run(["flite", "-voice", voice, "-psdur", "-t", text, "-o", str(tmp)],
                             capture_output=True, text=True, check=False, timeout=120)
        if run.returncode != 0 or not tmp.is_file():
            raise DataError(f"flite failed on {text!r} with voice {voice} ({run.stderr.strip()[:200]}); "
                            f"check the flite installation ({FLITE_INSTALL})")
        info = sf.info(tmp)
        phones = _parse_psdur(run.stdout)
        seconds = info.frames / info.samplerate
        # Diphone voices (kal16) end the audio halfway through the final pause, where the times say
        # it ends: the last pause is trimmed to the audio. Other voices agree within a millisecond.
        if len(phones) < 2 or phones[-1][0] != "pau" or not phones[-2][1] < seconds <= phones[-1][1] + 0.01:
            raise DataError(f"flite's phone times for {text!r} (voice {voice}) do not fit its audio "
                            f"({seconds:.3f} s); check the flite installation ({FLITE_INSTALL})")
        phones[-1] = ("pau", seconds)
        os.replace(tmp, wav)
    finally:
        tmp.unlink(missing_ok=True)
    atomic_write_json(meta, {"text": text, "voice": voice, "flite": version, "sample_rate": info.samplerate,
                             "seconds": seconds, "phones": [[p, round(t, 6)] for p, t in phones]})


def _read_meta(meta: Path, text: str, voice: str, version: str | None) -> dict[str, Any] | None:
    """The cached utterance's description, or None when it is missing, stale or damaged."""
    try:
        data = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ok = (isinstance(data, dict) and data.get("text") == text and data.get("voice") == voice
          and (version is None or data.get("flite") == version) and isinstance(data.get("phones"), list)
          and meta.with_suffix(".wav").is_file())
    return data if ok else None


def _builtin_plan(utterances: int | None, voices: Sequence[str]) -> list[tuple[str, str, str]]:
    """(id, text, voice) of the first `utterances` utterances in the fixed order."""
    sentences = builtin_sentences()
    n_sent, n_voice = len(sentences), len(voices)
    total = n_sent * n_voice
    count = total if utterances is None else utterances
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= total:
        raise ConfigError(f"builtin:speech has {n_sent} sentences x {n_voice} voices = {total} utterances; "
                          f"ask for 1 to {total} (got {utterances!r})")
    plan = []
    for i in range(count):
        s = i % n_sent
        voice = voices[(s + i // n_sent) % n_voice]
        plan.append((f"{voice}-{s:04d}", sentences[s], voice))
    return plan


def _load_builtin(utterances: int | None, voices: Sequence[str] | None, sample_rate: int | None,
                  workers: int | None, cache_dir: str | os.PathLike[str] | None,
                  progress: Callable[[int, int], None] | None) -> SpeechDataset:
    voices = tuple(voices) if voices is not None else SPEECH_VOICES
    unknown = [v for v in voices if v not in SPEECH_VOICES]
    if unknown or not voices or len(set(voices)) != len(voices):
        raise ConfigError(f"builtin:speech voices must be distinct names from {', '.join(SPEECH_VOICES)} "
                          f"(got {', '.join(voices) or 'none'})")
    plan = _builtin_plan(utterances, voices)
    version = flite_version()
    folder = _cache_folder(cache_dir) / f"v{SPEECH_VERSION}"
    paths = {}
    todo = []
    for uid, text, voice in plan:
        stem = folder / voice / hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]
        paths[uid] = stem
        if _read_meta(stem.with_suffix(".json"), text, voice, version) is None:
            todo.append((text, voice, stem))
    if todo:
        if version is None:
            raise DataError(f"builtin:speech needs the speech synthesizer flite to make {len(todo)} utterances, "
                            f"and it is not installed; {FLITE_INSTALL}")
        for voice in {v for _, v, _ in todo}:
            (folder / voice).mkdir(parents=True, exist_ok=True)
        done = 0
        with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
            jobs = [pool.submit(_synthesise, text, voice, stem.with_suffix(".wav"), stem.with_suffix(".json"),
                                version) for text, voice, stem in todo]
            for job in jobs:
                job.result()
                done += 1
                if progress is not None:
                    progress(done, len(todo))
    items = []
    for uid, text, voice in plan:
        meta = _read_meta(paths[uid].with_suffix(".json"), text, voice, None)
        if meta is None:
            raise DataError(f"the cached utterance '{paths[uid]}.json' vanished or is damaged; delete "
                            f"'{folder}' and load builtin:speech again")
        phones = tuple((str(p), float(t)) for p, t in meta["phones"])
        items.append(Utterance(uid, text, text, voice, paths[uid].with_suffix(".wav"), int(meta["sample_rate"]),
                               float(meta["seconds"]), phones))
    target = sample_rate or SPEECH_SAMPLE_RATE
    notes = [f"built {len(todo)} utterances with flite {version}"] if todo else []
    if target != SPEECH_SAMPLE_RATE:
        notes.append(f"builtin:speech is made at {SPEECH_SAMPLE_RATE} Hz and will be resampled to {target} Hz")
    data = SpeechDataset(items, target, f"{BUILTIN_PREFIX}speech",
                         _fingerprint(items, {"version": SPEECH_VERSION, "sample_rate": target}), notes)
    data.info = {**_summary(data), "voices": list(voices), "flite": version,
                 "sentences": len(builtin_sentences()), "held_out_sentences": len(held_out_sentences())}
    return data


def _summary(data: SpeechDataset) -> dict[str, Any]:
    train, test = data.split()
    minutes: dict[str, float] = {}
    for u in data.utterances:
        minutes[u.speaker] = minutes.get(u.speaker, 0.0) + u.seconds / 60.0
    return {"source": data.source, "fingerprint": data.fingerprint, "utterances": len(data), "train": len(train),
            "held_out": len(test), "speakers": data.speakers, "sample_rate": data.sample_rate,
            "minutes_per_speaker": {s: round(m, 2) for s, m in sorted(minutes.items())},
            "split": HELD_OUT_RULE}


def load_speech(spec: str | os.PathLike[str], *, sample_rate: int | None = None, utterances: int | None = None,
                voices: Sequence[str] | None = None, workers: int | None = None,
                cache_dir: str | os.PathLike[str] | None = None,
                progress: Callable[[int, int], None] | None = None) -> SpeechDataset:
    """Speech from an LJSpeech-style folder or ``builtin:speech``.

    `sample_rate` is the rate the audio is read at (default: builtin:speech's 16 kHz, or the rate most
    of a folder's files have). For builtin:speech, `utterances` (default all) and `voices` choose what
    is made; `workers` flite processes run at once (default one per CPU); `progress(done, total)` is
    called as utterances are made. Cached utterances need no flite.
    """
    if sample_rate is not None and (isinstance(sample_rate, bool) or not isinstance(sample_rate, int)
                                    or sample_rate < 8000):
        raise ConfigError(f"sample_rate must be a whole number of at least 8000 Hz (got {sample_rate!r})")
    spec = os.fspath(spec)
    if spec.startswith(BUILTIN_PREFIX):
        if spec != f"{BUILTIN_PREFIX}speech":
            raise DataError(f"unknown built-in speech source {spec!r}; use {BUILTIN_PREFIX}speech")
        return _load_builtin(utterances, voices, sample_rate, workers, cache_dir, progress)
    if utterances is not None or voices is not None:
        raise ConfigError("utterances and voices choose what builtin:speech makes; a folder is used whole")
    root = Path(spec).expanduser()
    if not spec.strip() or not root.is_dir():
        raise DataError(f"speech data '{spec}' is not a folder; pass an LJSpeech-style folder (metadata.csv "
                        f"with id|text|normalized lines and wavs/ID.wav) or {BUILTIN_PREFIX}speech")
    return _load_ljspeech(root, sample_rate)


def flite_utterance(text: str, voice: str, cache_dir: str | os.PathLike[str] | None = None) -> Utterance:
    """One sentence spoken by one of flite's voices, made (or found) in builtin:speech's cache: the
    reference recordings evaluation compares a model's speech with."""
    if voice not in SPEECH_VOICES:
        raise ConfigError(f"unknown flite voice {voice!r}; use one of {', '.join(SPEECH_VOICES)}")
    version = flite_version()
    stem = _cache_folder(cache_dir) / f"v{SPEECH_VERSION}" / voice / hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]
    meta = _read_meta(stem.with_suffix(".json"), text, voice, version)
    if meta is None:
        if version is None:
            raise DataError(f"the reference recordings are made with the speech synthesizer flite, which is not "
                            f"installed; {FLITE_INSTALL}")
        stem.parent.mkdir(parents=True, exist_ok=True)
        _synthesise(text, voice, stem.with_suffix(".wav"), stem.with_suffix(".json"), version)
        meta = _read_meta(stem.with_suffix(".json"), text, voice, None)
        assert meta is not None
    phones = tuple((str(p), float(t)) for p, t in meta["phones"])
    return Utterance(f"{voice}-ref", text, text, voice, stem.with_suffix(".wav"), int(meta["sample_rate"]),
                     float(meta["seconds"]), phones)
