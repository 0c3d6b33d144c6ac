"""Audio signal processing shared by the audio models and their metrics.

Everything a model trains through is batched, differentiable torch code: waveforms are float32 `[T]`
or `[B, T]` (any leading dims work), spectra keep those leading dims and add `[F, frames]`. Pieces
used only for evaluation (pitch tracking, resampling, mel cepstral distortion) may use numpy, scipy
and librosa, which are imported inside the functions that need them: `import librosa.filters` alone
costs 1.5-2 s, so the mel filterbank below is our own (checked against librosa by the tests).

Framing conventions, the same everywhere in this module: Hann window (periodic), `center=True` with
reflect padding, so frame i is centred on sample i * hop and a signal of T samples has 1 + T // hop
frames. Reflect padding needs T > n_fft // 2.
Read top to bottom: STFT, mel, Griffin-Lim, loudness and pitch, resampling, losses and metrics.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from muselab.core.errors import ConfigError

# ---------------------------------------------------------------------------------------------------
# STFT


@functools.lru_cache(maxsize=64)
def hann_window(size: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """The periodic Hann window (scipy's and librosa's STFT window), made once per size and device.
    Made outside inference mode even when first asked for inside it: an inference tensor in the cache
    could never be used by training later in the same process."""
    with torch.inference_mode(False):
        return torch.hann_window(size, periodic=True, device=device, dtype=dtype)


def _window_for(x: Tensor, win_length: int) -> Tensor:
    dtype = x.real.dtype if x.is_complex() else x.dtype
    return hann_window(win_length, x.device, dtype)


def stft(x: Tensor, n_fft: int, hop: int, win_length: int | None = None, center: bool = True) -> Tensor:
    """Complex STFT `[..., T] -> [..., n_fft // 2 + 1, frames]` (reflect padding when centred)."""
    win_length = win_length or n_fft
    lead, length = x.shape[:-1], x.shape[-1]
    spec = torch.stft(x.reshape(-1, length), n_fft, hop_length=hop, win_length=win_length,
                      window=_window_for(x, win_length), center=center, pad_mode="reflect",
                      return_complex=True)
    return spec.reshape(*lead, *spec.shape[-2:])


def istft(spec: Tensor, n_fft: int, hop: int, win_length: int | None = None, center: bool = True,
          length: int | None = None) -> Tensor:
    """Inverse of `stft`: `[..., F, frames] -> [..., T]` (T = (frames - 1) * hop unless `length`)."""
    win_length = win_length or n_fft
    lead = spec.shape[:-2]
    wav = torch.istft(spec.reshape(-1, *spec.shape[-2:]), n_fft, hop_length=hop, win_length=win_length,
                      window=_window_for(spec, win_length), center=center, length=length)
    return wav.reshape(*lead, wav.shape[-1])


def istft_bases(window: Tensor) -> tuple[Tensor, Tensor]:
    """The inverse real DFT of `istft_real` as two matrices [n_fft, n_fft // 2 + 1], the window folded in."""
    n_fft = window.shape[0]
    bins = n_fft // 2 + 1
    k = torch.arange(bins, device=window.device)
    n = torch.arange(n_fft, device=window.device)
    # n * k taken modulo n_fft before it becomes an angle: float32 angles up to 2 pi * n_fft / 2 would be
    # off by 1e-4 rad, and so would the output
    angle = (n[:, None] * k[None, :] % n_fft).double() * (2 * math.pi / n_fft)
    # Bins other than DC and Nyquist stand for their mirror image too
    scale = torch.full((bins,), 2.0 / n_fft, device=window.device, dtype=torch.float64)
    scale[0] = scale[-1] = 1.0 / n_fft
    weights = scale * window.double()[:, None]
    return (angle.cos() * weights).to(window.dtype), (angle.sin() * weights).to(window.dtype)


def istft_real(real: Tensor, imag: Tensor, window: Tensor, hop: int, length: int,
               bases: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """`istft` of a centred one-sided spectrum given as real and imaginary parts `[B, n_fft // 2 + 1, frames]`,
    in real arithmetic only (matrix products and a transposed convolution), so that it exports to ONNX and
    TorchScript, which have no complex tensors. `window` is the analysis window of length n_fft, `bases`
    what `istft_bases(window)` returns (made here when not given); `length` cuts the output, `[B, length]`.
    Matches torch.istft to float rounding."""
    n_fft = window.shape[0]
    cos_basis, sin_basis = bases if bases is not None else istft_bases(window)
    frames = cos_basis @ real - sin_basis @ imag  # windowed frames [B, n_fft, frames]
    # Overlap-add: each frame lands hop samples after the one before
    eye = torch.eye(n_fft, device=window.device, dtype=window.dtype)[:, None, :]
    wav = F.conv_transpose1d(frames, eye, stride=hop)[:, 0]
    squares = window.square()[None, :, None].expand(1, n_fft, frames.shape[-1])
    envelope = F.conv_transpose1d(squares, eye, stride=hop)[:, 0]
    start = n_fft // 2  # centred frames: drop the padding
    return (wav / envelope.clamp(min=1e-11))[:, start:start + length]

def stft_bases(window: Tensor) -> tuple[Tensor, Tensor]:
    """The forward real DFT as two matrices [n_fft, n_fft // 2 + 1] (cos and -sin): a frame [..., n_fft] times
    them gives its spectrum's real and imaginary parts, in real arithmetic (for exported models)."""
    n_fft = window.shape[0]
    k = torch.arange(n_fft // 2 + 1, device=window.device)
    n = torch.arange(n_fft, device=window.device)
    angle = (n[:, None] * k[None, :] % n_fft).double() * (2 * math.pi / n_fft)  # exact angles, as istft_bases
    return angle.cos().to(window.dtype), (-angle.sin()).to(window.dtype)


def overlap_add(frames: Tensor, hop: int, exportable: bool = True) -> Tensor:
    """Frames `[B, F, n_fft]` laid `hop` samples apart and summed: `[B, (F - 1) * hop + n_fft]`, for an
    n_fft that is a multiple of hop. Sums blocks of hop samples, several times faster on a CPU than
    torch.istft's fold: padded copies (plain to export), or with `exportable=False` added in place into
    one buffer (three times faster again, differentiable, but slice assignment does not export)."""
    batch, count, n_fft = frames.shape
    if n_fft % hop:
        raise ValueError(f"overlap_add needs n_fft ({n_fft}) to be a multiple of hop ({hop})")
    parts = n_fft // hop
    blocks = frames.reshape(batch, count, parts, hop)  # block j of frame f lands on block f + j of the output
    if exportable:
        total = sum(F.pad(blocks[:, :, j], (0, 0, j, parts - 1 - j)) for j in range(parts))
    else:
        total = blocks.new_zeros(batch, count + parts - 1, hop)
        for j in range(parts):
            total[:, j:j + count] += blocks[:, :, j]
    return total.reshape(batch, -1)


def magnitude(x: Tensor, n_fft: int, hop: int, win_length: int | None = None, center: bool = True) -> Tensor:
    """|STFT| `[..., F, frames]`. Its gradient is finite at 0 (torch's complex abs uses sgn(0) = 0)."""
    return stft(x, n_fft, hop, win_length, center).abs()


# ---------------------------------------------------------------------------------------------------
# Mel scale (Slaney's, as in librosa with htk=False, norm="slaney")

_HZ_PER_MEL = 200.0 / 3  # linear part, below 1 kHz
_LOG_START_HZ = 1000.0
_LOG_START_MEL = _LOG_START_HZ / _HZ_PER_MEL
_LOG_STEP = math.log(6.4) / 27.0  # 27 mels per factor 6.4 above 1 kHz


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """Slaney mel: linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    log_part = _LOG_START_MEL + np.log(np.maximum(hz, _LOG_START_HZ) / _LOG_START_HZ) / _LOG_STEP
    return np.where(hz >= _LOG_START_HZ, log_part, hz / _HZ_PER_MEL)


def mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    """Inverse of `hz_to_mel`."""
    mel = np.asarray(mel, dtype=np.float64)
    log_part = _LOG_START_HZ * np.exp(_LOG_STEP * (np.maximum(mel, _LOG_START_MEL) - _LOG_START_MEL))
    return np.where(mel >= _LOG_START_MEL, log_part, mel * _HZ_PER_MEL)


@functools.lru_cache(maxsize=32)
def _mel_weights(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None) -> np.ndarray:
    fmax = sr / 2 if fmax is None else fmax
    if not 0 <= fmin < fmax <= sr / 2:
        raise ConfigError(f"mel band {fmin:g}-{fmax:g} Hz does not fit a sample rate of {sr} Hz; "
                          f"use 0 <= fmin < fmax <= {sr / 2:g}")
    bin_hz = np.fft.rfftfreq(n_fft, d=1.0 / sr)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bin_hz - lower) / (centre - lower)
    falling = (upper - bin_hz) / (upper - centre)
    triangles = np.maximum(0.0, np.minimum(rising, falling))
    # Slaney normalisation: every triangle has the same area, so wide high bands are not louder.
    return (triangles * (2.0 / (upper - lower))).astype(np.float32)


def mel_filterbank(sr: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None) -> Tensor:
    """Mel filters `[n_mels, n_fft // 2 + 1]`, equal to librosa.filters.mel(..., htk=False, norm="slaney")."""
    return torch.from_numpy(_mel_weights(sr, n_fft, n_mels, float(fmin), None if fmax is None else float(fmax)))


@dataclass(frozen=True)
class MelSettings:
    """Mel spectrogram parameters; the defaults are the TTS/vocoder convention (HiFi-GAN's 22 kHz mels)."""

    sr: int = 22050
    n_fft: int = 1024
    hop: int = 256
    win_length: int | None = None  # None = n_fft
    n_mels: int = 80
    fmin: float = 0.0
    fmax: float | None = 8000.0  # None = sr / 2
    power: float = 1.0  # 1 = magnitude, 2 = power
    log_floor: float = 1e-5  # mel values are clamped here before the natural log


def log_mel(x: Tensor, sr: int = 22050, n_fft: int = 1024, hop: int = 256, n_mels: int = 80,
            fmin: float = 0.0, fmax: float | None = 8000.0, power: float = 1.0, log_floor: float = 1e-5,
            win_length: int | None = None) -> Tensor:
    """Natural log of the clamped mel spectrogram, `[..., T] -> [..., n_mels, frames]`.

    Equals log(max(librosa.feature.melspectrogram(power=power, center=True, pad_mode="reflect"), floor)).
    """
    basis = mel_filterbank(sr, n_fft, n_mels, fmin, fmax).to(x.device, x.dtype)
    spec = magnitude(x, n_fft, hop, win_length)
    if power != 1.0:
        spec = spec.pow(power)
    return torch.log(torch.clamp(basis @ spec, min=log_floor))


class MelSpectrogram(nn.Module):
    """`log_mel` as a module whose filterbank moves with `.to()` (a buffer not saved in state dicts)."""

    def __init__(self, settings: MelSettings | None = None) -> None:
        super().__init__()
        self.settings = settings or MelSettings()
        s = self.settings
        self.register_buffer("mel_basis", mel_filterbank(s.sr, s.n_fft, s.n_mels, s.fmin, s.fmax),
                             persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        s = self.settings
        return self.from_magnitude(magnitude(x, s.n_fft, s.hop, s.win_length))

    def from_magnitude(self, spec: Tensor) -> Tensor:
        """The log-mel of a magnitude spectrogram `[..., n_fft // 2 + 1, frames]` made with these settings."""
        s = self.settings
        if s.power != 1.0:
            spec = spec.pow(s.power)
        return torch.log(torch.clamp(self.mel_basis.to(spec.dtype) @ spec, min=s.log_floor))


# ---------------------------------------------------------------------------------------------------
# Phase reconstruction (the vocoder baseline)


def mel_to_linear(mel: Tensor, mel_basis: Tensor) -> Tensor:
    """Approximate linear spectrum `[..., F, frames]` from a (non-log) mel spectrogram `[..., n_mels, frames]`.

    The minimum-norm least-squares solution (Moore-Penrose pseudo-inverse of the filterbank) clamped at
    zero: a one-shot approximation of non-negative least squares, cheap and differentiable.
    """
    inverse = torch.linalg.pinv(mel_basis.to(mel.dtype))
    return torch.clamp(inverse.to(mel.device) @ mel, min=0.0)


def griffin_lim(magnitude: Tensor, n_fft: int, hop: int, n_iter: int = 32, momentum: float = 0.99,
                seed: int = 0, win_length: int | None = None, length: int | None = None) -> Tensor:
    """Waveform `[..., T]` whose STFT magnitude approximates `magnitude` `[..., F, frames]`.

    The fast Griffin-Lim algorithm (Perraudin, Balazs and Sondergaard, 2013): alternate projections
    onto the target magnitude and onto consistent spectrograms, with the momentum step
    c_n = t_n + momentum * (t_n - t_{n-1}); momentum=0 is the classic algorithm. Starts from random
    phase drawn from `seed`.
    """
    generator = torch.Generator(device=magnitude.device).manual_seed(seed)
    phase = torch.rand(magnitude.shape, generator=generator, device=magnitude.device,
                       dtype=magnitude.dtype) * (2 * math.pi)
    angles = torch.polar(torch.ones_like(magnitude), phase)
    previous = torch.zeros_like(angles)
    for _ in range(n_iter):
        projected = stft(istft(magnitude * angles, n_fft, hop, win_length), n_fft, hop, win_length)
        accelerated = projected + momentum * (projected - previous)
        previous = projected
        angles = accelerated / accelerated.abs().clamp_min(1e-16)
    return istft(magnitude * angles, n_fft, hop, win_length, length=length)


# The Hann window's time-frequency spread as a Gaussian's (Prusa et al. 2017: lambda = 0.25645 * L^2 samples^2)
HANN_GAUSSIAN_SPREAD = 0.25645


def _central_difference(x: Tensor, dim: int) -> Tensor:
    """d x / d index along `dim`: central differences inside, one-sided at the ends (as torch.gradient,
    written with slices so that it exports); zero where there is a single index."""
    size = x.shape[dim]
    if size < 2:
        return torch.zeros_like(x)
    inner = (x.narrow(dim, 2, size - 2) - x.narrow(dim, 0, size - 2)) / 2
    first = x.narrow(dim, 1, 1) - x.narrow(dim, 0, 1)
    last = x.narrow(dim, size - 1, 1) - x.narrow(dim, size - 2, 1)
    return torch.cat([first, inner, last], dim)


def _cumulative_trapezoid(rate: Tensor, step: float, dim: int) -> Tensor:
    """The integral of `rate` from index 0 along `dim`, by the trapezoid rule with spacing `step`."""
    size = rate.shape[dim]
    areas = (rate.narrow(dim, 1, size - 1) + rate.narrow(dim, 0, size - 1)) * (step / 2)
    return torch.cat([torch.zeros_like(rate.narrow(dim, 0, 1)), areas.cumsum(dim)], dim)


def phase_from_magnitude(magnitude: Tensor, n_fft: int, hop: int) -> Tensor:
    """A phase `[..., bins, frames]` for STFT magnitude `magnitude` (Hann window of n_fft, centred frames,
    torch.stft's convention), from the magnitude alone: phase-gradient heap integration's gradients (Prusa,
    Balazs and Sondergaard 2017) integrated without the heap.

    For a Gaussian window the STFT's log-magnitude s and phase are linked: the phase advances in time at
    2 pi k / n_fft + (1 / lambda) ds/domega and changes across frequency at -lambda ds/dx (lambda the window's
    spread; the Hann window is close to a Gaussian). Each bin's phase is integrated along time; across
    frequency, each spectral peak's time-integrated phase is carried to the bins of its basin (the bins that
    climb to it), the bins nearest a peak being where the phase matters. Griffin-Lim started from this phase
    instead of zero reaches in 4 iterations what it reaches in 32 from zero on builtin:mixed's held-out clips
    (benchmarks/results/vocoder_phase_gradient_oracle.json). Gathers and sums only: differentiable, exportable,
    about 3 ms per second of 22 kHz audio on one CPU thread."""
    spread = HANN_GAUSSIAN_SPREAD * n_fft**2
    # Frame-major ([..., frames, bins]): the gathers along bins run over contiguous memory
    log_mag = torch.log(magnitude.clamp_min(1e-10)).transpose(-1, -2).contiguous()
    frames, bins = log_mag.shape[-2:]
    # omega in cycles per sample (one bin is 1 / n_fft), x in samples (one frame is hop)
    d_log_mag_d_omega = _central_difference(log_mag, -1) * n_fft
    d_log_mag_d_x = _central_difference(log_mag, -2) / hop
    # Along time, each bin's phase advances by its centre frequency, 2 pi k hop / n_fft per frame, plus the
    # deviation the magnitude shows. The centre's share is taken modulo 2 pi in integers: summed in floats it
    # reaches millions of radians in a minute of audio, where float32 keeps a fraction of a radian
    # It repeats every n_fft / gcd(hop, n_fft) frames (4 for a hop of a quarter window): one table of those
    # rows, laid out over the frames
    k = torch.arange(bins, device=magnitude.device)
    period = n_fft // math.gcd(hop, n_fft)
    rows = ((torch.arange(period, device=magnitude.device)[:, None] * hop % n_fft) * k % n_fft).to(log_mag.dtype)
    centre = (rows * (2 * math.pi / n_fft))[torch.arange(frames, device=magnitude.device) % period]
    along_time = centre + _cumulative_trapezoid(d_log_mag_d_omega / spread, hop, -2)
    along_frequency = _cumulative_trapezoid(-spread * d_log_mag_d_x, 1 / n_fft, -1)
    peak = _basin_peaks(log_mag)
    phase = along_time.gather(-1, peak) + along_frequency - along_frequency.gather(-1, peak)
    # torch.stft's phase is referenced to the frame's first sample, half a window before its centre: pi k
    return (phase + math.pi * (k % 2).to(log_mag.dtype)).transpose(-1, -2)


def _basin_peaks(values: Tensor) -> Tensor:
    """For every bin of `values` `[..., bins]`, the index of the local maximum it climbs to (each step to the
    larger neighbour, if larger), by pointer doubling: log2(bins) gathers."""
    bins = values.shape[-1]
    floor = torch.full_like(values[..., :1], -math.inf)
    below = torch.cat([floor, values[..., :-1]], -1)
    above = torch.cat([values[..., 1:], floor], -1)
    step_up = (above > values) & (above >= below)
    step_down = (below > values) & ~step_up
    pointer = torch.arange(bins, device=values.device) + step_up.long() - step_down.long()
    for _ in range(max(1, math.ceil(math.log2(bins)))):
        pointer = pointer.gather(-1, pointer)
    return pointer


# ---------------------------------------------------------------------------------------------------
# Loudness and pitch (the DDSP control signals; both give 1 + T // hop frames centred on i * hop)


@functools.lru_cache(maxsize=32)
def _a_weighting_power_gain(sr: int, n_fft: int) -> np.ndarray:
    """IEC 61672 A-weighting as a power gain per rfft bin (0 dB at 1 kHz)."""
    f2 = np.fft.rfftfreq(n_fft, d=1.0 / sr) ** 2
    ra = (12194.0**2 * f2**2) / ((f2 + 20.6**2) * np.sqrt((f2 + 107.7**2) * (f2 + 737.9**2)) * (f2 + 12194.0**2))
    return (ra**2 * 10 ** (2.0 / 10)).astype(np.float32)  # +2.0 dB puts 1 kHz at 0 dB


def a_weighted_loudness(x: Tensor, sr: int, n_fft: int, hop: int, floor_db: float = -80.0) -> Tensor:
    """A-weighted loudness in dB per frame, `[..., T] -> [..., frames]`; a full-scale 1 kHz sine is ~0 dB.

    As DDSP's compute_loudness, the A-weighting is applied to each frame's power spectrum and the
    weighted power is averaged; here it is scaled to the frame's weighted mean square (Parseval) and
    referred to a full-scale sine's mean square (1/2). Quieter frames are clamped at `floor_db`.
    """
    spec = stft(x, n_fft, hop)
    power = spec.real.square() + spec.imag.square()
    gain = torch.from_numpy(_a_weighting_power_gain(sr, n_fft)).to(power.device, power.dtype)
    window = hann_window(n_fft, power.device, power.dtype)
    # One-sided spectrum: doubling it approximates the two-sided Parseval sum.
    mean_square = 2 * (power * gain[:, None]).sum(dim=-2) / (n_fft * window.square().sum())
    return 10 * torch.log10(torch.clamp(mean_square / 0.5, min=10 ** (floor_db / 10)))


def pyin_frame_length(sr: int, fmin: float) -> int:
    """Smallest power of two holding four periods of `fmin`.

    pYIN needs two; twice that halves YIN's upward bias on low notes (on a 220 Hz sine at 16 kHz,
    about 4 cents with 1024 samples, 2 cents with 2048).
    """
    return 1 << math.ceil(math.log2(4 * sr / fmin))


def f0_pyin(x: np.ndarray, sr: int, hop: int, fmin: float = 50.0, fmax: float = 1000.0,
            frame_length: int | None = None, resolution: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Fundamental frequency with librosa's pYIN: `(f0 [frames] Hz, 0 where unvoiced; voiced_prob [frames])`.

    Frames are centred on i * hop (center=True), so they line up with `a_weighted_loudness(x, sr, n_fft,
    hop)` frame for frame: both give 1 + len(x) // hop frames. f0 takes values on pYIN's grid of
    `resolution` semitones from fmin (0.1 = 10 cents, so up to 5 cents of rounding); finer grids cost
    quadratically more time. Evaluation and data preparation only.
    """
    import librosa

    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"f0_pyin takes one waveform [T], got shape {x.shape}")
    f0, voiced, voiced_prob = librosa.pyin(x, fmin=fmin, fmax=fmax, sr=sr, hop_length=hop,
                                           frame_length=frame_length or pyin_frame_length(sr, fmin),
                                           resolution=resolution, center=True)
    return np.where(voiced, f0, 0.0).astype(np.float32), voiced_prob.astype(np.float32)


# ---------------------------------------------------------------------------------------------------
# Resampling


def spectral_envelope(magnitude: np.ndarray, lifter: int) -> np.ndarray:
    """The smooth envelope of magnitude spectra `[n_fft // 2 + 1, frames]` by cepstral liftering: the log
    magnitude's real cepstrum kept below quefrency `lifter` (samples), back to a magnitude."""
    cepstrum = np.fft.irfft(np.log(magnitude + 1e-8), axis=0)
    cepstrum[lifter:len(cepstrum) - lifter + 1] = 0.0
    return np.exp(np.fft.rfft(cepstrum, axis=0).real)


def shift_pitch(audio: np.ndarray, sr: int, semitones: float, n_fft: int = 1024, hop: int = 256,
                lifter_ms: float = 1.0, max_gain_db: float = 30.0) -> np.ndarray:
    """`audio` with every frequency of its fine structure moved by `semitones` while the spectral envelope
    (the formants: who is speaking, which vowel) stays where it was; same length.

    The shift itself is librosa's (a phase-vocoder time stretch by 2^(semitones / 12), then resampling back
    to the length), which moves the formants with the pitch (the "chipmunk" voice). Each STFT frame of the
    result is then multiplied by the original frame's envelope over its own (cepstral envelopes below
    `lifter_ms`, shorter than any voice's pitch period, so pitch stays out of them); the gain is capped at
    `max_gain_db` so near-silent frames do not turn into noise."""
    import librosa

    x = np.asarray(audio, dtype=np.float32)
    if semitones == 0 or len(x) < n_fft:
        return x.copy()
    shifted = librosa.effects.pitch_shift(x, sr=sr, n_steps=float(semitones), n_fft=n_fft, hop_length=hop)
    original = np.abs(librosa.stft(x, n_fft=n_fft, hop_length=hop))
    spectrum = librosa.stft(shifted, n_fft=n_fft, hop_length=hop)
    lifter = max(2, round(lifter_ms * sr / 1000))
    limit = 10.0 ** (max_gain_db / 20.0)
    gain = spectral_envelope(original, lifter) / spectral_envelope(np.abs(spectrum), lifter)
    corrected = librosa.istft(spectrum * np.clip(gain, 1.0 / limit, limit), hop_length=hop, n_fft=n_fft, length=len(x))
    return corrected.astype(np.float32)


def resample(x: Tensor | np.ndarray, sr_from: int, sr_to: int) -> Tensor:
    """Resample along the last axis with scipy's polyphase filter (Kaiser window); float32 tensor out."""
    from scipy.signal import resample_poly

    device = x.device if isinstance(x, Tensor) else torch.device("cpu")
    array = x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
    if sr_from != sr_to:
        common = math.gcd(int(sr_from), int(sr_to))
        array = resample_poly(array, int(sr_to) // common, int(sr_from) // common, axis=-1)
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).to(device)


# ---------------------------------------------------------------------------------------------------
# Losses and metrics


class MultiResolutionSTFTLoss(nn.Module):
    """Spectral convergence + L1 log-magnitude distance, averaged over several STFT resolutions.

    Per resolution: ||Y| - |X||_F / ||Y||_F over the whole batch (Y the target) plus
    mean |log(|X| + eps) - log(|Y| + eps)|. Inputs are waveforms `[..., T]` longer than max(fft_sizes) / 2.
    """

    def __init__(self, fft_sizes: tuple[int, ...] = (2048, 1024, 512, 256, 128, 64),
                 hop_sizes: tuple[int, ...] | None = None, win_lengths: tuple[int, ...] | None = None,
                 eps: float = 1e-5) -> None:
        super().__init__()
        hop_sizes = hop_sizes or tuple(n // 4 for n in fft_sizes)
        win_lengths = win_lengths or tuple(fft_sizes)
        if not len(fft_sizes) == len(hop_sizes) == len(win_lengths):
            raise ValueError("fft_sizes, hop_sizes and win_lengths need one entry per resolution")
        self.resolutions = list(zip(fft_sizes, hop_sizes, win_lengths, strict=True))
        self.eps = eps

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        if pred.shape != target.shape:
            raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
        total = pred.new_zeros(())
        for n_fft, hop, win_length in self.resolutions:
            # Two calls, not one on the stacked pair: the backward pass then skips the target's STFT.
            total = total + spectral_distance(magnitude(pred, n_fft, hop, win_length),
                                              magnitude(target, n_fft, hop, win_length), self.eps)
        return total / len(self.resolutions)


def spectral_distance(pred_mag: Tensor, target_mag: Tensor, eps: float = 1e-5) -> Tensor:
    """One resolution's term of the multi-resolution STFT loss, between magnitude spectrograms: spectral
    convergence ||Y - X||_F / ||Y||_F over the whole batch (Y the target) plus mean |log(X + eps) - log(Y + eps)|."""
    convergence = (torch.linalg.vector_norm(target_mag - pred_mag)
                   / torch.linalg.vector_norm(target_mag).clamp_min(eps))
    return convergence + (torch.log(pred_mag + eps) - torch.log(target_mag + eps)).abs().mean()


def mrstft_distance(pred: Tensor | np.ndarray, target: Tensor | np.ndarray) -> float:
    """Multi-resolution STFT loss (default resolutions) between two waveforms, cut to the shorter one."""
    pred_t, target_t = torch.as_tensor(pred, dtype=torch.float32), torch.as_tensor(target, dtype=torch.float32)
    length = min(pred_t.shape[-1], target_t.shape[-1])
    with torch.no_grad():
        return float(MultiResolutionSTFTLoss()(pred_t[..., :length], target_t[..., :length]))


# The all-pass constant that makes SPTK's frequency warping follow the mel scale best, for the sample
# rates SPTK's documentation lists (Tokuda et al. 1994; the values speech toolkits use); others interpolate.
_MEL_ALPHA_BY_RATE = ((8000, 0.31), (10000, 0.35), (12000, 0.37), (16000, 0.42), (22050, 0.455),
                      (32000, 0.50), (44100, 0.53), (48000, 0.55))


def mel_cepstrum_alpha(sr: int) -> float:
    """All-pass constant alpha for mel-cepstra at sample rate `sr` (0.42 at 16 kHz, 0.455 at 22.05 kHz),
    linear in the sample rate between the tabulated rates, clamped at 8 and 48 kHz."""
    rates, alphas = zip(*_MEL_ALPHA_BY_RATE, strict=True)
    return float(np.interp(sr, rates, alphas))


@functools.lru_cache(maxsize=16)
def _freqt_matrix(n_in: int, order: int, alpha: float) -> np.ndarray:
    """The all-pass frequency warping of a cepstrum (SPTK's `freqt`) as a matrix [order + 1, n_in].

    freqt maps c(0..n_in-1) to the coefficients of the same log spectrum on the warped axis
    z~^-1 = (z^-1 - alpha) / (1 - alpha z^-1), by SPTK's recursion over input lags from the highest down:
    g0 = c(i) + alpha g0', g1 = (1 - alpha^2) g0' + alpha g1', gj = g(j-1)' + alpha (gj' - g(j-1)) (primes:
    before this lag). It is linear, so it is run once on the identity and applied as a matrix product.
    """
    basis = np.eye(n_in)
    g = np.zeros((order + 1, n_in))
    b = 1.0 - alpha * alpha
    for i in range(n_in - 1, -1, -1):
        prev = g.copy()
        g[0] = basis[i] + alpha * prev[0]
        if order >= 1:
            g[1] = b * prev[0] + alpha * prev[1]
        for j in range(2, order + 1):
            g[j] = prev[j - 1] + alpha * (prev[j] - g[j - 1])
    return g


def mel_cepstrum(wav: Tensor | np.ndarray, sr: int, order: int = 24, n_fft: int = 1024, hop: int = 256,
                 alpha: float | None = None, floor: float = 1e-10) -> np.ndarray:
    """Mel-cepstra c(0..order) `[frames, order + 1]`, SPTK's definition, by SPTK's spectrum route.

    Per frame (Blackman window, `n_fft` samples every `hop`, centred with zero padding): the log
    periodogram log(|X|^2 + floor) is turned into the minimum-phase real cepstrum of the amplitude
    spectrum (inverse FFT, causal half, c(0) and c(n_fft/2) halved) and warped to the mel scale with the
    all-pass constant `alpha` (default `mel_cepstrum_alpha(sr)`) by `freqt`. That is pysptk's `sp2mc`
    (SPTK's `freqt` on the log power spectrum; it matches pysptk 1.0.1 to 1e-15). SPTK's `mcep` goes on
    to refine the cepstra by unbiased log-spectrum estimation, which gives different MCDs (on a tone plus
    noise, 0.93 dB where this gives 1.24 dB): compare MCDs only when computed the same way. The log is
    natural, so c is in nepers and MCD's 10/ln10 turns differences into dB.
    """
    x = np.asarray(wav.detach().cpu() if isinstance(wav, Tensor) else wav, dtype=np.float64).reshape(-1)
    alpha = mel_cepstrum_alpha(sr) if alpha is None else alpha
    if not 0 <= order < n_fft // 2 or not -1 < alpha < 1:
        raise ConfigError(f"mel_cepstrum needs 0 <= order < n_fft / 2 and |alpha| < 1, got order {order}, "
                          f"n_fft {n_fft} and alpha {alpha}")
    padded = np.pad(x, (n_fft // 2, n_fft // 2))
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop] * np.blackman(n_fft)
    log_power = np.log(np.abs(np.fft.rfft(frames, axis=-1)) ** 2 + floor)
    cepstrum = np.fft.irfft(log_power, n=n_fft, axis=-1)[:, :n_fft // 2 + 1]
    cepstrum[:, 0] /= 2
    cepstrum[:, -1] /= 2
    return cepstrum @ _freqt_matrix(n_fft // 2 + 1, order, float(alpha)).T


def mel_cepstral_distance_db(ref_cepstra: np.ndarray, syn_cepstra: np.ndarray) -> float:
    """Kubichek's MCD in dB between paired frames `[frames, D]` of mel-cepstra c1..cD (c0 left out by
    the caller): the mean over frames of (10 / ln 10) * sqrt(2 * sum_d (c_d - c'_d)^2)."""
    ref, syn = np.asarray(ref_cepstra, dtype=np.float64), np.asarray(syn_cepstra, dtype=np.float64)
    if ref.shape != syn.shape or ref.ndim != 2 or len(ref) == 0:
        raise ValueError(f"MCD needs two [frames, D] arrays of one shape, got {ref.shape} and {syn.shape}")
    per_frame = (10.0 / math.log(10.0)) * np.sqrt(2.0 * np.square(ref - syn).sum(axis=1))
    return float(per_frame.mean())


def mel_cepstral_distortion(ref_wav: Tensor | np.ndarray, syn_wav: Tensor | np.ndarray, sr: int,
                            n_coeffs: int = 24, n_fft: int = 1024, hop: int = 256, alpha: float | None = None,
                            use_dtw: bool | None = None) -> float:
    """Mel-cepstral distortion in dB as the TTS literature defines it (Kubichek 1993; the form used since
    Tokuda's HTS work): mel-cepstra c1..c`n_coeffs` of both signals from SPTK-style analysis
    (`mel_cepstrum`: order 24, all-pass alpha 0.455 at 22.05 kHz / 0.42 at 16 kHz), c0 (energy) left out,
    then the frame average of (10 / ln 10) * sqrt(2 * sum_d (c_d - c'_d)^2) (`mel_cepstral_distance_db`).

    Frames are paired one to one when both signals give the same number of frames, else aligned by
    dynamic time warping on the same cepstra (librosa.sequence.dtw, Euclidean) and averaged along the
    path; pass `use_dtw` to force either. Mono waveforms `[T]`. Implemented here with numpy because
    pysptk 1.0.1 (SPTK's wrapper) builds from source only and imports `pkg_resources`, which current
    setuptools no longer ships; the cepstra equal pysptk's `sp2mc` on the same frames.
    """
    ref = mel_cepstrum(ref_wav, sr, n_coeffs, n_fft, hop, alpha)[:, 1:]
    syn = mel_cepstrum(syn_wav, sr, n_coeffs, n_fft, hop, alpha)[:, 1:]
    if use_dtw is None:
        use_dtw = len(ref) != len(syn)
    if use_dtw:
        import librosa

        _, path = librosa.sequence.dtw(X=ref.T, Y=syn.T, metric="euclidean")
        ref, syn = ref[path[:, 0]], syn[path[:, 1]]
    elif len(ref) != len(syn):
        raise ValueError(f"{len(ref)} and {len(syn)} frames cannot be paired one to one; use DTW")
    return mel_cepstral_distance_db(ref, syn)
