"""Training targets for the acoustic model: the front end's phonemes with a duration, pitch and energy each,
and the log-mel of the recording, made once per utterance and cached.

**Durations** come from flite's own phone times (builtin:speech records them): the model reads the front
end's phonemes (what it will read when it speaks), so flite's phones are matched to them by sequence
alignment (difflib's matcher on phone names, flite's `ax` read as `AH`, any pause as a pause, flite's
leading pause as the `<bos>` symbol every sequence starts with). Matched phones keep flite's duration;
where the two disagree (another pronunciation), the flite stretch is shared evenly by the front end's
phones there. Phone end times become mel-frame boundaries (frame i is centred on sample i * hop at
22,050 Hz), so the durations add up to the mel's frame count exactly.

**Recordings without phone times** (a user's folder, or builtin:speech with `data.alignment=mas`):
the phonemes, the log-mel and the f0 track are made per utterance first (`extract_unaligned`), the
durations of all of them are then learned together (`align.py`: monotonic alignment search), and
pitch and energy per phoneme follow from those durations as above (`with_durations`).

**Pitch**: the median f0 of the phoneme's frames (YIN, 10 ms frames on the 16 kHz recording), in
semitones above 55 Hz, for phonemes that carry voice (vowels and voiced consonants); others get 0.
YIN is some 70 times faster than pYIN, and the phone identity decides voicing, which pYIN's voicing
detector would otherwise do. **Energy**: the mean log-mel of the phoneme's frames.

The cache is `$MUSELAB_CACHE/tts_features/` (default `~/.cache/muselab`), one .npz per utterance, keyed by
the recording's bytes, its text, its phone times and FEATURES_VERSION.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from muselab.audio.dsp import resample
from muselab.audio.tts.frontend import Frontend, Phonemized
from muselab.audio.tts.inventory import BOS, PAUSES, PhonemeInventory, strip_stress
from muselab.audio.vocoder import MEL, mel_spectrogram
from muselab.core.errors import DataError
from muselab.core.io import atomic_write
from muselab.data.speech import Phone, SpeechDataset, Utterance

FEATURES_VERSION = 2  # 2: full-band mels (to 11,025 Hz), the vocoders' convention
UNALIGNED_VERSION = 2  # of the cached phonemes, mel and f0 track of recordings without phone times
VOICED = frozenset({"AA", "AE", "AH", "AO", "AW", "AY", "EH", "ER", "EY", "IH", "IY", "OW", "OY", "UH", "UW",
                    "B", "D", "DH", "G", "JH", "L", "M", "N", "NG", "R", "V", "W", "Y", "Z", "ZH"})
FLITE_NAMES = {"ax": "AH"}  # flite's schwa; its other phones are ARPAbet in lower case
PITCH_HOP_S = 0.01
PITCH_RANGE = (60.0, 500.0)  # Hz, wide enough for flite's four voices
FRAME_RATE = MEL.sr / MEL.hop  # mel frames per second


@dataclass
class UtteranceFeatures:
    """One utterance as the model trains on it (N symbols, T mel frames). Before its durations are
    learned (no phone times), durations, pitch and energy are None and f0_track holds YIN's f0."""

    ids: np.ndarray  # int64 [N], <bos> first
    durations: np.ndarray | None  # int64 [N], frames, sum T
    pitch: np.ndarray | None  # float32 [N], semitones above 55 Hz, 0 where unvoiced or unmeasured
    energy: np.ndarray | None  # float32 [N], mean log-mel of the phoneme's frames (0 for zero-length ones)
    mel: np.ndarray  # float32 [80, T]
    speaker: str
    f0_track: np.ndarray | None = None  # float32, Hz every PITCH_HOP_S seconds (until durations are known)


def symbols_of(phonemized: Phonemized) -> list[str]:
    """The model's input symbols for a sentence: <bos> (the leading silence), then its phonemes."""
    return [BOS, *phonemized.phonemes]


def voiced_symbol(symbol: str) -> bool:
    return strip_stress(symbol) in VOICED


def _key(symbol: str) -> str:
    return "PAU" if symbol in PAUSES else strip_stress(symbol)


def _edit_path(a: list[str], b: list[str]) -> list[tuple[int | None, int | None]]:
    """The pairs of a least-cost alignment of a and b (Levenshtein: match 0, substitution, insertion and
    deletion 1; ties go to the diagonal), in order; (i, None) and (None, j) are unpaired items."""
    n, m = len(a), len(b)
    cost = np.zeros((n + 1, m + 1), dtype=np.int64)
    cost[:, 0] = np.arange(n + 1)
    cost[0, :] = np.arange(m + 1)
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            cost[i, j] = min(cost[i - 1, j - 1] + (a[i - 1] != b[j - 1]), cost[i - 1, j] + 1, cost[i, j - 1] + 1)
    path: list[tuple[int | None, int | None]] = []
    i, j = n, m
    while i or j:
        if i and j and cost[i, j] == cost[i - 1, j - 1] + (a[i - 1] != b[j - 1]):
            path.append((i - 1, j - 1))
            i, j = i - 1, j - 1
        elif i and cost[i, j] == cost[i - 1, j] + 1:
            path.append((i - 1, None))
            i -= 1
        else:
            path.append((None, j - 1))
            j -= 1
    return path[::-1]


def align_durations(symbols: list[str], phones: tuple[Phone, ...] | list[Phone], n_frames: int) -> np.ndarray:
    """Frames per front-end symbol from flite's phones and end times (seconds); they sum to n_frames."""
    if not phones:
        raise DataError("an utterance has no phone times; builtin:speech keeps them (flite -psdur)")
    ends = np.minimum(np.round(np.array([t for _, t in phones]) * FRAME_RATE).astype(np.int64), n_frames)
    ends[-1] = n_frames
    ends = np.maximum.accumulate(ends)
    flite_frames = np.diff(ends, prepend=0)
    names = [p for p, _ in phones]
    flite_keys = [BOS if i == 0 and p == "pau" else "PAU" if p == "pau" else FLITE_NAMES.get(p, p.upper())
                  for i, p in enumerate(names)]
    ours = [BOS if s == BOS else _key(s) for s in symbols]
    out = np.zeros(len(symbols), dtype=np.int64)
    carry = 0  # flite frames before the first symbol that has a counterpart
    last: int | None = None
    for i, j in _edit_path(ours, flite_keys):
        if i is None:  # a phone flite added: the symbol before takes its frames
            if last is None:
                carry += int(flite_frames[j])
            else:
                out[last] += flite_frames[j]
        else:
            last = i
            if j is not None:  # matched or another phone in its place; unmatched ones get no frames
                out[i] += flite_frames[j]
    out[0] += carry
    return out


def _f0_track(audio: np.ndarray, sr: int) -> np.ndarray:
    """YIN's f0 in Hz every PITCH_HOP_S seconds."""
    import librosa

    frame_length = 1024 if sr <= 22050 else 2048
    audio = np.pad(audio, (0, max(0, frame_length - len(audio))))
    return librosa.yin(audio, fmin=PITCH_RANGE[0], fmax=PITCH_RANGE[1], sr=sr, hop_length=round(PITCH_HOP_S * sr),
                       frame_length=frame_length).astype(np.float32)


def _pitch_per_symbol(f0: np.ndarray, symbols: list[str], durations: np.ndarray) -> np.ndarray:
    bounds = np.concatenate([[0], np.cumsum(durations)]) / FRAME_RATE  # seconds
    out = np.zeros(len(symbols), dtype=np.float32)
    for i, symbol in enumerate(symbols):
        if durations[i] == 0 or not voiced_symbol(symbol):
            continue
        a, b = int(np.ceil(bounds[i] / PITCH_HOP_S)), int(np.ceil(bounds[i + 1] / PITCH_HOP_S))
        values = f0[a:max(b, a + 1)]
        values = values[np.isfinite(values) & (values > 0)]
        if len(values):
            out[i] = 12.0 * np.log2(float(np.median(values)) / 55.0)
    return out


def _energy_per_symbol(mel: np.ndarray, durations: np.ndarray) -> np.ndarray:
    frame_energy = mel.mean(axis=0)
    bounds = np.concatenate([[0], np.cumsum(durations)])
    return np.array([frame_energy[a:b].mean() if b > a else 0.0 for a, b in zip(bounds[:-1], bounds[1:],
                                                                                 strict=True)], dtype=np.float32)


def cache_folder(kind: str = f"v{FEATURES_VERSION}") -> Path:
    base = os.environ.get("MUSELAB_CACHE") or Path.home() / ".cache" / "muselab"
    return Path(base).expanduser() / "tts_features" / kind


def read_cached(path: Path, names: tuple[str, ...]) -> dict[str, np.ndarray] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as saved:
            return {name: saved[name] for name in names}
    except (OSError, ValueError, KeyError):
        return None  # damaged: made again


def write_cached(path: Path, arrays: dict[str, np.ndarray]) -> None:
    def write(tmp: Path) -> None:
        with tmp.open("wb") as handle:
            np.savez(handle, **arrays)

    atomic_write(path, write)


def extract_unaligned(utterance: Utterance, data: SpeechDataset, frontend: Frontend, inventory: PhonemeInventory,
                      use_cache: bool = True) -> UtteranceFeatures:
    """An utterance's phonemes, log-mel and f0 track, before its durations are learned (cached)."""
    digest = hashlib.sha256(utterance.path.read_bytes())
    digest.update(json.dumps([utterance.normalized, inventory.stress, data.sample_rate, UNALIGNED_VERSION]).encode())
    path = cache_folder(f"unaligned-v{UNALIGNED_VERSION}") / f"{digest.hexdigest()[:32]}.npz"
    saved = read_cached(path, ("ids", "mel", "f0")) if use_cache else None
    if saved is not None:
        return UtteranceFeatures(saved["ids"], None, None, None, saved["mel"], utterance.speaker, saved["f0"])
    symbols = symbols_of(frontend.phonemize(utterance.normalized))
    audio = data.audio(utterance)
    mel = mel_spectrogram(resample(audio, data.sample_rate, MEL.sr)).numpy().astype(np.float32)
    features = UtteranceFeatures(np.array(inventory.encode(symbols), dtype=np.int64), None, None, None, mel,
                                 utterance.speaker, _f0_track(audio, data.sample_rate))
    if use_cache:
        write_cached(path, {"ids": features.ids, "mel": features.mel, "f0": features.f0_track})
    return features


def with_durations(features: UtteranceFeatures, durations: np.ndarray, inventory: PhonemeInventory
                   ) -> UtteranceFeatures:
    """The utterance with its learned durations, and the pitch and energy per phoneme they give."""
    assert features.f0_track is not None and int(durations.sum()) == features.mel.shape[1]
    symbols = [inventory.symbols[i] for i in features.ids]
    return UtteranceFeatures(features.ids, durations.astype(np.int64),
                             _pitch_per_symbol(features.f0_track, symbols, durations),
                             _energy_per_symbol(features.mel, durations), features.mel, features.speaker)


def extract(utterance: Utterance, data: SpeechDataset, frontend: Frontend, inventory: PhonemeInventory,
            use_cache: bool = True) -> UtteranceFeatures:
    """One utterance's targets, from the cache when it has them."""
    if utterance.phones is None:
        raise DataError(f"'{utterance.path}' has no phone times; train with data.alignment=mas (learned "
                        "alignment) instead")
    digest = hashlib.sha256(utterance.path.read_bytes())
    digest.update(json.dumps([utterance.text, utterance.phones, inventory.stress, FEATURES_VERSION]).encode())
    path = cache_folder() / f"{digest.hexdigest()[:32]}.npz"
    saved = read_cached(path, ("ids", "durations", "pitch", "energy", "mel")) if use_cache else None
    if saved is not None:
        return UtteranceFeatures(saved["ids"], saved["durations"], saved["pitch"], saved["energy"], saved["mel"],
                                 utterance.speaker)
    symbols = symbols_of(frontend.phonemize(utterance.text))
    audio = data.audio(utterance)
    mel = mel_spectrogram(resample(audio, data.sample_rate, MEL.sr)).numpy()
    durations = align_durations(symbols, utterance.phones, mel.shape[1])
    features = UtteranceFeatures(np.array(inventory.encode(symbols), dtype=np.int64), durations,
                                 _pitch_per_symbol(_f0_track(audio, data.sample_rate), symbols, durations),
                                 _energy_per_symbol(mel, durations), mel.astype(np.float32), utterance.speaker)
    if use_cache:
        write_cached(path, {"ids": features.ids, "durations": durations, "pitch": features.pitch,
                             "energy": features.energy, "mel": features.mel})
    return features


def pad_stack(arrays: list[np.ndarray], dtype: torch.dtype) -> torch.Tensor:
    """Arrays of one rank, zero-padded on their last axis to the longest and stacked."""
    longest = max(a.shape[-1] for a in arrays)
    out = torch.zeros((len(arrays), *arrays[0].shape[:-1], longest), dtype=dtype)
    for i, a in enumerate(arrays):
        out[i, ..., : a.shape[-1]] = torch.from_numpy(np.ascontiguousarray(a))
    return out
