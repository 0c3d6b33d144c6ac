"""Reading and writing audio files (WAV, FLAC, Ogg Vorbis via soundfile), with one-line errors.

`load_audio` refuses what no model can learn from (missing, unreadable, empty, silent, too short or
non-finite audio) and returns notes on what it changed (resampling, down-mixing) for the caller to
print. `save_audio` writes atomically and never clips: it scales loud audio down and says so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from muselab.core.errors import DataError
from muselab.core.io import atomic_write

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")
_FORMATS = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG"}
_DEFAULT_SUBTYPES = {"WAV": "PCM_16", "FLAC": "PCM_16", "OGG": "VORBIS"}
SILENCE_PEAK = 1e-4  # below this peak amplitude a file counts as silent
SAFE_PEAK = 0.99  # loud audio is scaled to this peak before writing


def _formats() -> str:
    return ", ".join(AUDIO_EXTENSIONS)


def _read(path: Path) -> tuple[np.ndarray, int]:
    """Samples `[frames, channels]` as float32 in [-1, 1] and the sample rate."""
    if not path.exists():
        raise DataError(f"audio file '{path}' does not exist; check the path")
    if path.is_dir():
        raise DataError(f"'{path}' is a folder, not an audio file; pass a {_formats()} file")
    try:
        return sf.read(path, dtype="float32", always_2d=True)
    except sf.SoundFileError as e:
        reason = str(getattr(e, "error_string", e)).replace("\n", " ").strip()
        raise DataError(f"cannot read '{path}' as audio ({reason}); supported formats: {_formats()}") from None
    except OSError as e:
        raise DataError(f"cannot read '{path}': {e.strerror}; check its permissions") from e


def load_audio(path: str | Path, sr: int | None = None, mono: bool = True,
               min_seconds: float = 0.1, allow_silent: bool = False) -> tuple[np.ndarray, int, list[str]]:
    """Read an audio file: `(samples, sample_rate, notes)`.

    Samples are float32 `[T]` when `mono` (channels averaged), else `[channels, T]`. With `sr` the audio
    is resampled to it. `notes` lists what was changed, e.g. "resampled 44100 Hz -> 16000 Hz". Silent
    files are refused (nothing to learn from) unless `allow_silent` (a file to transform, not learn from).
    """
    path = Path(path)
    samples, file_sr = _read(path)
    notes: list[str] = []
    if samples.shape[0] == 0:
        raise DataError(f"'{path}' holds no audio samples; replace or remove it")
    if not np.isfinite(samples).all():
        raise DataError(f"'{path}' contains NaN or infinite samples; re-export it from your audio editor")
    seconds = samples.shape[0] / file_sr
    if seconds < min_seconds:
        raise DataError(f"'{path}' is only {seconds:.3f} s long; audio files must last at least "
                        f"{min_seconds:g} s: remove it or use a longer recording")
    peak = float(np.abs(samples).max())
    if peak < SILENCE_PEAK and not allow_silent:
        raise DataError(f"'{path}' is silent (peak amplitude {peak:.1e} < {SILENCE_PEAK:g}); check the "
                        "recording or remove the file")
    wav = samples.T  # [channels, T]
    if mono:
        if wav.shape[0] > 1:
            notes.append(f"mixed {wav.shape[0]} channels down to mono")
        wav = wav.mean(axis=0)
    if sr is not None and sr != file_sr:
        from muselab.audio.dsp import resample

        wav = resample(wav, file_sr, sr).numpy()
        notes.append(f"resampled {file_sr} Hz -> {sr} Hz")
        file_sr = sr
    return np.ascontiguousarray(wav, dtype=np.float32), file_sr, notes


def save_audio(path: str | Path, wav: np.ndarray, sr: int, subtype: str | None = None) -> list[str]:
    """Write `wav` (`[T]` or `[channels, T]`, floats in [-1, 1]) atomically; returns notes on changes made.

    The format follows the extension (.wav, .flac, .ogg); `subtype` defaults to PCM_16 (WAV, FLAC) or
    VORBIS (Ogg). Audio peaking above 1 is scaled down to a peak of 0.99 rather than clipped.
    """
    path = Path(path)
    file_format = _FORMATS.get(path.suffix.lower())
    if file_format is None:
        raise DataError(f"cannot write '{path}': unsupported extension '{path.suffix}'; use {_formats()}")
    subtype = subtype or _DEFAULT_SUBTYPES[file_format]
    if not sf.check_format(file_format, subtype):
        raise DataError(f"cannot write '{path}' as {file_format} with sample format {subtype}; choose one of "
                        f"{', '.join(sf.available_subtypes(file_format))}")
    wav = np.asarray(wav, dtype=np.float32)
    if wav.ndim not in (1, 2) or wav.shape[-1] == 0:
        raise ValueError(f"save_audio takes a non-empty waveform [T] or [channels, T], got shape {wav.shape}")
    if not np.isfinite(wav).all():
        raise DataError(f"refusing to write '{path}': the audio contains NaN or infinite samples")
    notes: list[str] = []
    peak = float(np.abs(wav).max())
    if peak > 1.0:
        wav = wav * (SAFE_PEAK / peak)
        notes.append(f"scaled down by {20 * np.log10(peak / SAFE_PEAK):.1f} dB to avoid clipping "
                     f"(peak was {peak:.2f})")
    frames = wav.T if wav.ndim == 2 else wav  # soundfile wants [T, channels]
    # The temporary name has no audio extension, so the format is given explicitly.
    atomic_write(path, lambda tmp: sf.write(tmp, frames, sr, subtype=subtype, format=file_format))
    return notes


def list_audio_files(folder: str | Path) -> list[Path]:
    """Audio files under `folder` (recursive, hidden files and folders skipped), sorted by relative path.

    A single audio file is accepted too and comes back as a one-element list.
    """
    root = Path(folder)
    if not root.exists():
        raise DataError(f"audio folder '{root}' does not exist; check the path")
    if root.is_file():
        if root.suffix.lower() in AUDIO_EXTENSIONS:
            return [root]
        raise DataError(f"'{root}' is not an audio file or folder; pass a folder of {_formats()} files")
    try:
        found = [p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file()]
    except OSError as e:
        raise DataError(f"cannot list folder '{root}': {e.strerror}; check its permissions") from e
    visible = [p for p in found if not any(part.startswith(".") for part in p.relative_to(root).parts)]
    if not visible:
        raise DataError(f"folder '{root}' has no audio files ({_formats()}, searched recursively); add some")
    return sorted(visible, key=lambda p: p.relative_to(root).parts)
