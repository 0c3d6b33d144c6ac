"""Monophonic clips -> DDSP training examples: f0, loudness and MFCCs per frame, cached; random windows.

Frames follow `muselab.audio.dsp`: frame i is centred on sample i * hop. A clip of T samples keeps its
first F = T // hop frames and the F * hop samples they describe, so a window of W frames is exactly
W * hop samples of audio. Pitch comes from pYIN (or from labels, for synthetic data that has them);
frames pYIN calls unvoiced get the pitch of their voiced neighbours (interpolated in semitones), so the
synthesiser always has a pitch and the loudness alone decides whether a frame sounds.

pYIN is slow (seconds per second of audio at 250 frames/s), so it runs every `pyin_stride` frames and is
interpolated in between, and every clip's features are cached under `$MUSELAB_CACHE/audio_features/`
(default `~/.cache/muselab`), keyed by the clip's content hash and the settings, as safetensors.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from muselab.audio.dsp import a_weighted_loudness, f0_pyin, log_mel, pyin_frame_length
from muselab.core.checkpoint import load_tensors, read_metadata, save_tensors
from muselab.core.errors import CheckpointError, DataError

FEATURES_VERSION = 1  # bump when the extraction changes, so old cache files are not used
PITCHED_SHARE = 0.4  # a clip is pitched when at least this share of its audible frames is voiced


@dataclass(frozen=True)
class FeatureSettings:
    sample_rate: int = 16000
    hop: int = 64
    loudness_n_fft: int = 1024
    fmin: float = 50.0  # pYIN's search range in Hz
    fmax: float = 1600.0
    pyin_stride: int = 4  # pYIN every 4 frames (62.5 per second at hop 64), interpolated in between
    n_mfcc: int = 30
    n_mels: int = 64


@dataclass
class ClipFeatures:
    """One clip and its frame features."""

    name: str
    audio: np.ndarray  # float32 [F * hop]
    f0_hz: np.ndarray  # float32 [F], > 0 everywhere (unvoiced frames filled from their neighbours)
    voiced: np.ndarray  # bool [F]: pitched according to pYIN or the labels
    loudness_db: np.ndarray  # float32 [F], A-weighted, floor -80 dB
    mfcc: np.ndarray  # float32 [F, n_mfcc]

    @property
    def n_frames(self) -> int:
        return len(self.f0_hz)

    @property
    def pitched(self) -> bool:
        """Whether the clip is pitched sound: most of its audible frames (within 40 dB of its loudest)
        voiced. pYIN calls 10-25% of white-noise frames voiced, a played note nearly all of them."""
        audible = self.loudness_db > self.loudness_db.max() - 40.0
        return bool(self.voiced.any()) and float(self.voiced[audible].mean()) >= PITCHED_SHARE


# --------------------------------------------------------------------------------------------------
# Per-frame features


def frame_count(n_samples: int, hop: int) -> int:
    return n_samples // hop


def loudness(audio: np.ndarray, settings: FeatureSettings) -> np.ndarray:
    """A-weighted loudness in dB for the clip's F frames."""
    n_frames = frame_count(len(audio), settings.hop)
    x = _padded_for(audio, settings.loudness_n_fft // 2 + 1)
    db = a_weighted_loudness(torch.from_numpy(x), settings.sample_rate, settings.loudness_n_fft, settings.hop)
    return db.numpy()[:n_frames].astype(np.float32)


def mfcc(audio: np.ndarray, settings: FeatureSettings) -> np.ndarray:
    """MFCCs [F, n_mfcc]: the orthonormal DCT-II of the log mel spectrum (1024-point FFT) per frame."""
    from scipy.fft import dct

    n_frames = frame_count(len(audio), settings.hop)
    x = _padded_for(audio, 513)
    mel = log_mel(torch.from_numpy(x), settings.sample_rate, 1024, settings.hop, settings.n_mels, fmax=None)
    coeffs = dct(mel.numpy(), type=2, axis=0, norm="ortho")[:settings.n_mfcc].T
    return np.ascontiguousarray(coeffs[:n_frames], dtype=np.float32)


def track_f0(audio: np.ndarray, settings: FeatureSettings) -> tuple[np.ndarray, np.ndarray]:
    """pYIN pitch for the clip's F frames: (f0 Hz, 0 where unvoiced; voiced mask), run every
    `pyin_stride` frames and interpolated (in semitones) to every frame."""
    n_frames = frame_count(len(audio), settings.hop)
    stride_hop = settings.hop * settings.pyin_stride
    x = _padded_for(audio, pyin_frame_length(settings.sample_rate, settings.fmin))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # librosa's notes on short or silent input
        coarse, _ = f0_pyin(x, settings.sample_rate, stride_hop, fmin=settings.fmin, fmax=settings.fmax)
    coarse_voiced = coarse > 0
    positions = np.arange(n_frames) / settings.pyin_stride
    # A frame is voiced when the nearest pYIN frame is
    nearest = np.minimum(np.rint(positions).astype(int), len(coarse) - 1)
    voiced = coarse_voiced[nearest]
    f0 = np.zeros(n_frames, dtype=np.float32)
    if coarse_voiced.any():
        filled = fill_unvoiced(coarse, coarse_voiced)
        midi = np.interp(positions, np.arange(len(coarse)), 69.0 + 12.0 * np.log2(filled / 440.0))
        f0 = np.where(voiced, 440.0 * 2.0 ** ((midi - 69.0) / 12.0), 0.0).astype(np.float32)
    return f0, voiced


def fill_unvoiced(f0_hz: np.ndarray, voiced: np.ndarray) -> np.ndarray:
    """f0 with unvoiced frames given their voiced neighbours' pitch (interpolated in semitones, held
    at the ends). Needs at least one voiced frame."""
    index = np.flatnonzero(voiced)
    midi = 69.0 + 12.0 * np.log2(f0_hz[index].astype(np.float64) / 440.0)
    filled = np.interp(np.arange(len(f0_hz)), index, midi)
    return (440.0 * 2.0 ** ((filled - 69.0) / 12.0)).astype(np.float32)


def _padded_for(audio: np.ndarray, length: int) -> np.ndarray:
    """Zero-pad very short clips: centred framing needs a signal longer than half a frame."""
    audio = np.ascontiguousarray(audio, dtype=np.float32)
    return np.pad(audio, (0, length - len(audio))) if len(audio) < length else audio


# --------------------------------------------------------------------------------------------------
# Cache


def cache_folder() -> Path:
    base = os.environ.get("MUSELAB_CACHE") or Path.home() / ".cache" / "muselab"
    return Path(base).expanduser() / "audio_features"


def clip_key(audio: np.ndarray, settings: FeatureSettings, f0_labels: np.ndarray | None) -> str:
    """What a clip's features depend on: its samples, the settings and the pitch source."""
    digest = hashlib.sha256(np.ascontiguousarray(audio, dtype=np.float32).tobytes())
    digest.update(json.dumps({**asdict(settings), "version": FEATURES_VERSION}, sort_keys=True).encode())
    if f0_labels is not None:
        digest.update(b"labels" + np.ascontiguousarray(f0_labels, dtype=np.float32).tobytes())
    return digest.hexdigest()


def _read_cache(path: Path, key: str, n_frames: int, n_mfcc: int) -> dict[str, np.ndarray] | None:
    if not path.is_file():
        return None
    try:
        if read_metadata(path).get("key") != key:
            return None
        tensors = {name: t.numpy() for name, t in load_tensors(path).items()}
    except (CheckpointError, OSError, ValueError, TypeError):  # TypeError: a dtype numpy lacks (bf16, fp8)
        return None  # corrupt or foreign: extract again over it
    shapes = {"f0_hz": (n_frames,), "voiced": (n_frames,), "loudness_db": (n_frames,), "mfcc": (n_frames, n_mfcc)}
    ok = all(tensors.get(n) is not None and tensors[n].shape == shape and tensors[n].dtype.kind in "fiub"
             and np.isfinite(tensors[n]).all() for n, shape in shapes.items())
    return tensors if ok else None


def _write_cache(path: Path, key: str, tensors: dict[str, np.ndarray]) -> None:
    try:
        save_tensors(path, {n: torch.from_numpy(np.ascontiguousarray(v)) for n, v in tensors.items()}, {"key": key})
    except OSError as err:
        # The cache only saves time: a read-only or full disk must not stop a run.
        warnings.warn(f"could not write the audio feature cache '{path}' ({err.strerror}); features will be "
                      "extracted again next time", stacklevel=3)


def extract_features(audio: np.ndarray, settings: FeatureSettings, name: str = "clip",
                     f0_labels: np.ndarray | None = None, use_cache: bool = True) -> ClipFeatures:
    """Features of one mono clip at `settings.sample_rate`. With `f0_labels` (Hz per frame, 0 where
    silent) the pitch is taken from them instead of pYIN. Unvoiced clips get f0 = 0 everywhere (check
    `voiced.any()` before training on them)."""
    n_frames = frame_count(len(audio), settings.hop)
    if n_frames < 1:
        raise DataError(f"'{name}' is shorter than one frame ({settings.hop} samples); remove it")
    audio = np.ascontiguousarray(audio[:n_frames * settings.hop], dtype=np.float32)
    key = clip_key(audio, settings, f0_labels)
    path = cache_folder() / f"{key[:32]}.safetensors"
    tensors = _read_cache(path, key, n_frames, settings.n_mfcc) if use_cache else None
    if tensors is None:
        if f0_labels is not None:
            f0 = np.asarray(f0_labels, dtype=np.float32)[:n_frames]
            f0 = np.pad(f0, (0, n_frames - len(f0)))
            voiced = f0 > 0
        else:
            f0, voiced = track_f0(audio, settings)
        tensors = {"f0_hz": f0, "voiced": voiced.astype(np.uint8), "loudness_db": loudness(audio, settings),
                   "mfcc": mfcc(audio, settings)}
        if use_cache:
            _write_cache(path, key, tensors)
    voiced = tensors["voiced"].astype(bool)
    f0 = fill_unvoiced(tensors["f0_hz"], voiced) if voiced.any() else np.zeros(n_frames, np.float32)
    return ClipFeatures(name, audio, f0, voiced, tensors["loudness_db"].astype(np.float32),
                        tensors["mfcc"].astype(np.float32))


def is_cached(audio: np.ndarray, settings: FeatureSettings, f0_labels: np.ndarray | None = None) -> bool:
    n_frames = frame_count(len(audio), settings.hop)
    key = clip_key(audio[:n_frames * settings.hop], settings, f0_labels)
    return (cache_folder() / f"{key[:32]}.safetensors").is_file()


# --------------------------------------------------------------------------------------------------
# Training windows


class FrameWindows:
    """Clips joined end to end into one stream, read as windows of `window_frames` frames.

    A batch is a dict of tensors: "audio" [B, W * hop], "f0_hz" [B, W], "loudness_db" [B, W] and, with
    `with_mfcc`, "mfcc" [B, W, n_mfcc]. Training windows start anywhere; evaluation windows are the
    stream's consecutive windows, in order, so validation always sees the same audio.
    """

    def __init__(self, clips: Sequence[ClipFeatures], window_frames: int, hop: int, sample_rate: int,
                 with_mfcc: bool = False) -> None:
        self.hop, self.window, self.with_mfcc = hop, window_frames, with_mfcc
        self.audio = torch.from_numpy(np.concatenate([c.audio for c in clips]))
        self.f0_hz = torch.from_numpy(np.concatenate([c.f0_hz for c in clips]))
        self.loudness_db = torch.from_numpy(np.concatenate([c.loudness_db for c in clips]))
        self.mfcc = torch.from_numpy(np.concatenate([c.mfcc for c in clips])) if with_mfcc else None
        self.n_frames = len(self.f0_hz)
        if self.n_frames < window_frames:
            raise DataError(f"only {self.n_frames * hop / sample_rate:.2f} s of usable audio, shorter than one "
                            f"training window ({window_frames * hop / sample_rate:.2f} s): add recordings or "
                            "lower data.window_seconds")

    def _windows(self, starts: torch.Tensor) -> dict[str, torch.Tensor]:
        frames = starts[:, None] + torch.arange(self.window)
        samples = starts[:, None] * self.hop + torch.arange(self.window * self.hop)
        batch = {"audio": self.audio[samples], "f0_hz": self.f0_hz[frames], "loudness_db": self.loudness_db[frames]}
        if self.mfcc is not None:
            batch["mfcc"] = self.mfcc[frames]
        return batch

    def sample(self, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        starts = torch.randint(0, self.n_frames - self.window + 1, (batch_size,), generator=generator)
        return self._windows(starts)

    def eval_batches(self, batch_size: int, limit: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        starts = torch.arange(0, self.n_frames - self.window + 1, self.window)
        for index, chunk in enumerate(starts.split(batch_size)):
            if limit and index >= limit:
                return
            yield self._windows(chunk)
