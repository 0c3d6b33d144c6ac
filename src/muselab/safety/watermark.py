"""Keyed, invisible, blind watermarks for generated images and audio.

Both media use spread spectrum: a pseudo-random +-1 pattern derived from a key is added at a level that
stays below what people notice, and detection correlates the received file with the same keyed pattern.
Detection needs only the key, never the original. Under the null (an unmarked file, or a wrong key) the
normalised correlation is close to a standard normal z-score, so `confidence` is 1 - p-value, and `found`
uses a threshold fixed by that null distribution at FALSE_POSITIVE_RATE (not fitted to any data set;
`benchmarks/bench_watermark.py` measures the rate on unmarked files from several sources).

Images: the pattern lives in the mid-frequency band of the 2-D DCT of the luminance seen at a canonical
size (256 x 256). Embedding upsamples the pattern to the image size, scales it by a local-contrast mask
(stronger in texture, weaker in flat areas) to a fixed PSNR and adds it to R, G and B alike (a change of
luminance only). Detection resizes any input to the canonical size first, so resizing and JPEG leave
the pattern in place.

Audio: the pattern is a band-limited (0.3-7 kHz) noise block repeated end to end at 16 kHz, its level
following the signal's own short-time loudness at a fixed SNR. Detection folds the received signal onto
one block and searches every circular shift with a phase-only (whitened) cross-correlation, so trimming
the start, gain changes, noise, resampling and MP3 leave it detectable.

DEFAULT_KEY is public on purpose: the point is that anyone can check a file. Pass your own key to mark
files only you can verify.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image
from scipy import fft, ndimage, signal, special

DEFAULT_KEY = "muselab-public-v1"

# Images smaller than this (shorter side) are returned unchanged: too few pixels to hide a pattern in.
MIN_IMAGE_SIDE = 64
CANONICAL_SIDE = 256
# DCT index radius at the canonical size (index k = k/2 cycles per image): high enough that little image
# energy competes, low enough to survive JPEG 50 and resizing a 128 px image to 0.75
BAND_RADIUS = (12.0, 96.0)
TARGET_PSNR_DB = 40.0  # leaves room for rounding and stays above the 38 dB target
# The chance that a file not marked with the key counts as marked, by the null distribution of its score
# (a design choice, not a fit: the thresholds below follow from it and the detectors' statistics)
FALSE_POSITIVE_RATE = 1e-3
# z at or above which an image counts as marked: the (1 - FALSE_POSITIVE_RATE) quantile of N(0, 1), 3.09
IMAGE_THRESHOLD = float(special.ndtri(1.0 - FALSE_POSITIVE_RATE))

AUDIO_RATE = 16_000
BLOCK = 2048  # samples at AUDIO_RATE per repeated block (128 ms)
# wide, so that some of it lies where the sound itself is quiet; below what MP3 128k and resampling cut
AUDIO_BAND_HZ = (300.0, 7000.0)
TARGET_SNR_DB = 31.0
ENVELOPE_S = 0.03  # window of the short-time loudness the audio mark follows
NOISE_FLOOR_PERCENTILE = 10.0
# The score is the best of BLOCK circular shifts, so the null sits well above a single test's: the
# threshold is where the maximum of BLOCK independent N(0, 1) lags exceeds it with probability
# FALSE_POSITIVE_RATE (each lag with probability 1 - (1 - FALSE_POSITIVE_RATE) ** (1 / BLOCK)), z = 4.90
AUDIO_THRESHOLD = float(-special.ndtri(-np.expm1(np.log1p(-FALSE_POSITIVE_RATE) / BLOCK)))


@dataclass(frozen=True)
class WatermarkResult:
    found: bool
    confidence: float  # 1 - p-value of `score` under the no-watermark null, in [0, 1]
    score: float  # z-score of the normalised correlation (for audio: the best over all shifts)


def _rng(key: str, medium: str) -> np.random.Generator:
    digest = hashlib.sha256(f"muselab-watermark/{medium}/{key}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


def _normal_sf(z: float) -> float:
    return float(special.ndtr(-z))


# ---------------------------------------------------------------- images


@lru_cache(maxsize=1)
def _band_mask() -> np.ndarray:
    u, v = np.meshgrid(np.arange(CANONICAL_SIDE), np.arange(CANONICAL_SIDE), indexing="ij")
    radius = np.hypot(u, v)
    return (radius >= BAND_RADIUS[0]) & (radius <= BAND_RADIUS[1])


@lru_cache(maxsize=8)
def _image_signs(key: str) -> np.ndarray:
    """The keyed +-1 values of the band coefficients (flattened in band order)."""
    return _rng(key, "image").choice(np.array([-1.0, 1.0]), size=int(_band_mask().sum()))


@lru_cache(maxsize=8)
def _image_pattern(key: str) -> np.ndarray:
    coeffs = np.zeros((CANONICAL_SIDE, CANONICAL_SIDE))
    coeffs[_band_mask()] = _image_signs(key)
    pattern = fft.idctn(coeffs, norm="ortho")
    return (pattern / pattern.std()).astype(np.float32)


def _resize(plane: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bicubic resize of a float plane (Pillow antialiases when shrinking)."""
    img = Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32))
    return np.asarray(img.resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32)


def _luminance(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return image.astype(np.float32)
    rgb = image[..., :3].astype(np.float32)
    return rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _check_image(image: np.ndarray) -> None:
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
        raise ValueError(f"expected a uint8 image [H,W], [H,W,3] or [H,W,4], got {image.dtype} {image.shape}")


def embed_image(image: np.ndarray, key: str = DEFAULT_KEY) -> tuple[np.ndarray, bool]:
    """Return (marked image, True), or (the image unchanged, False) when its shorter side is under
    MIN_IMAGE_SIDE pixels. The change is to luminance only (alpha untouched), at about TARGET_PSNR_DB."""
    _check_image(image)
    height, width = image.shape[:2]
    if min(height, width) < MIN_IMAGE_SIDE:
        return image, False
    luma = _luminance(image)
    pattern = _resize(_image_pattern(key), height, width)
    # local contrast: texture hides a stronger pattern than flat sky does
    mean = ndimage.uniform_filter(luma, 7)
    local_std = np.sqrt(np.maximum(ndimage.uniform_filter(luma * luma, 7) - mean * mean, 0.0))
    mask = np.clip(local_std / (local_std.mean() + 1e-6), 0.25, 3.0)
    delta = pattern * mask
    target_rms = 255.0 * 10 ** (-TARGET_PSNR_DB / 20)
    delta *= target_rms / (np.sqrt(np.mean(delta * delta)) + 1e-12)
    out = image.astype(np.float32)
    if image.ndim == 2:
        out += delta
    else:
        out[..., :3] += delta[..., None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), True


def image_score(image: np.ndarray, key: str = DEFAULT_KEY) -> float:
    """z-score of the keyed pattern in `image`: about N(0, 1) when the image is not marked with `key`."""
    luma = _resize(_luminance(image), CANONICAL_SIDE, CANONICAL_SIDE)
    coeffs = fft.dctn(luma - luma.mean(), norm="ortho")
    # whiten: natural images have far more energy at low frequencies; weigh each coefficient by the
    # inverse of its neighbourhood's magnitude (depends on |c| only, so the null stays N(0, 1))
    envelope = ndimage.uniform_filter(np.abs(coeffs), 7) + 1e-6
    band = _band_mask()
    weighted = (coeffs / envelope)[band]
    norm = np.sqrt(np.sum(weighted * weighted))
    return float(np.dot(weighted, _image_signs(key)) / norm) if norm > 0 else 0.0


def detect_image(image: np.ndarray, key: str = DEFAULT_KEY) -> WatermarkResult:
    _check_image(image)
    if min(image.shape[:2]) < MIN_IMAGE_SIDE // 2:  # a marked image shrunk to half may still show it
        return WatermarkResult(False, 0.0, 0.0)
    z = image_score(image, key)
    return WatermarkResult(z >= IMAGE_THRESHOLD, 1.0 - _normal_sf(z), z)


# ---------------------------------------------------------------- audio


@lru_cache(maxsize=8)
def _audio_spectrum(key: str) -> np.ndarray:
    """rfft of the keyed block: unit magnitude, random sign, only inside AUDIO_BAND_HZ."""
    freqs = np.fft.rfftfreq(BLOCK, 1 / AUDIO_RATE)
    in_band = (freqs >= AUDIO_BAND_HZ[0]) & (freqs <= AUDIO_BAND_HZ[1])
    spectrum = np.zeros(freqs.size, dtype=np.complex128)
    spectrum[in_band] = _rng(key, "audio").choice(np.array([-1.0, 1.0]), size=int(in_band.sum()))
    return spectrum


@lru_cache(maxsize=8)
def _audio_block(key: str) -> np.ndarray:
    block = fft.irfft(_audio_spectrum(key), n=BLOCK)
    return block / block.std()


def _to_rate(audio: np.ndarray, sr: int, target: int) -> np.ndarray:
    if sr == target:
        return audio.astype(np.float64)
    g = np.gcd(sr, target)
    return signal.resample_poly(audio.astype(np.float64), target // g, sr // g)


def _envelope(audio: np.ndarray, sr: int) -> np.ndarray:
    width = max(1, int(ENVELOPE_S * sr))
    return np.sqrt(np.maximum(ndimage.uniform_filter1d(audio * audio, width, mode="nearest"), 0.0))


def _check_audio(audio: np.ndarray, sr: int) -> None:
    if audio.ndim != 1 or sr <= 0:
        raise ValueError(f"expected mono audio [T] and a positive sample rate, got {audio.shape} at {sr}")


def embed_audio(audio: np.ndarray, sr: int, key: str = DEFAULT_KEY) -> np.ndarray:
    """Return `audio` plus the keyed mark at TARGET_SNR_DB, following the signal's loudness (silence
    stays silent). Works at any rate: the mark is made at 16 kHz and resampled to `sr`."""
    _check_audio(audio, sr)
    if audio.size == 0 or not np.any(audio):
        return audio.astype(np.float32)
    x16 = _to_rate(audio, sr, AUDIO_RATE)
    reps = -(-x16.size // BLOCK)
    mark = np.tile(_audio_block(key), reps)[: x16.size] * _envelope(x16, AUDIO_RATE)
    mark = _to_rate(mark, AUDIO_RATE, sr)[: audio.size]
    if mark.size < audio.size:
        mark = np.pad(mark, (0, audio.size - mark.size))
    power = np.mean(audio.astype(np.float64) ** 2)
    mark *= np.sqrt(power * 10 ** (-TARGET_SNR_DB / 10) / (np.mean(mark * mark) + 1e-20))
    return (audio + mark).astype(np.float32)


def audio_score(audio: np.ndarray, sr: int, key: str = DEFAULT_KEY) -> float:
    """Best z-score over all BLOCK alignments of the keyed block (phase-only correlation)."""
    x16 = _to_rate(audio, sr, AUDIO_RATE)
    # Weigh each moment by (mark amplitude) / (interference power). The mark follows the loudness of the
    # original, which the loudness above the clip's quiet floor estimates (the floor is added noise).
    envelope = _envelope(x16, AUDIO_RATE)
    floor = np.percentile(envelope, NOISE_FLOOR_PERCENTILE)
    x16 = x16 * np.sqrt(np.maximum(envelope**2 - floor**2, 0.0)) / (envelope**2 + 1e-12)
    reps = -(-x16.size // BLOCK)
    folded = np.pad(x16, (0, reps * BLOCK - x16.size)).reshape(reps, BLOCK).sum(axis=0)
    spectrum = _audio_spectrum(key)
    cross = fft.rfft(folded) * np.conj(spectrum)
    in_band = spectrum != 0
    cross[in_band] /= np.abs(cross[in_band]) + 1e-20
    # each lag is a sum of M unit phasors' real parts times 2: variance 2M under the null
    lags = fft.irfft(cross, n=BLOCK) * BLOCK
    return float(lags.max() / np.sqrt(2 * in_band.sum()))


def detect_audio(audio: np.ndarray, sr: int, key: str = DEFAULT_KEY) -> WatermarkResult:
    _check_audio(audio, sr)
    if audio.size == 0 or not np.any(audio):
        return WatermarkResult(False, 0.0, 0.0)
    z = audio_score(audio, sr, key)
    # p-value of the maximum of BLOCK (nearly independent) normal lags
    p_max = -np.expm1(BLOCK * np.log1p(-_normal_sf(z))) if z > 0 else 1.0
    return WatermarkResult(z >= AUDIO_THRESHOLD, float(1.0 - p_max), z)
