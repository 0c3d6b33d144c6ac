"""Differentiable harmonic-plus-noise synthesis (DDSP, Engel et al. 2020), in one file.

A model predicts controls at a frame rate, shaped [B, frames, ...]; these functions turn them into
audio [B, samples] with plain torch operations, so gradients flow from an audio loss back to every
control. Read top to bottom: pitch helpers, control scaling, upsampling, the harmonic oscillator bank,
filtered noise, reverb.

Frame convention (shared by every function here): with `hop = n_samples / frames`, frame i describes
the instant at sample i * hop (a frame centre, as in librosa's `center=True`); after the last frame
centre the controls are held.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

UpsampleMode = Literal["linear", "window"]

# --------------------------------------------------------------------------------------------------
# Pitch helpers

def hz_to_midi(hz):
    """Hz (float, array or tensor, > 0) to a fractional MIDI note number; 440 Hz = 69."""
    if isinstance(hz, Tensor):
        return 69.0 + 12.0 * torch.log2(hz / 440.0)
    return 69.0 + 12.0 * np.log2(np.asarray(hz, dtype=np.float64) / 440.0)


# --------------------------------------------------------------------------------------------------
# Control scaling


def scale_function(x: Tensor) -> Tensor:
    """DDSP's exp-sigmoid, 2 * sigmoid(x) ** ln(10) + 1e-7: positive amplitudes spanning decades, with a
    floor that keeps gradients alive and a ceiling of 2 that keeps an untrained network quiet."""
    return 2.0 * torch.sigmoid(x) ** math.log(10.0) + 1e-7


def harmonics_below_nyquist(f0_hz: Tensor, n_harmonics: int, sample_rate: float) -> Tensor:
    """How many of the harmonics k = 1..n_harmonics lie below Nyquist, k * f0 < sr / 2 (int64, shape of
    f0_hz). Harmonics above Nyquist would alias back down as inharmonic partials."""
    with torch.no_grad():
        ratio = (sample_rate / 2.0) / f0_hz.double().clamp_min(1e-30)
        below = torch.ceil(ratio) - 1.0  # the largest k with k * f0 < nyquist (strictly)
        return below.clamp(0, n_harmonics).to(torch.int64)


def remove_above_nyquist(f0_hz: Tensor, distribution: Tensor, sample_rate: float) -> Tensor:
    """Zero the harmonics whose frequency k * f0 is at or above Nyquist.

    f0_hz [B, F] (or [B, F, 1]), distribution [B, F, K] -> [B, F, K]. Apply it before normalising the
    distribution, so the audible harmonics share the whole amplitude.
    """
    if f0_hz.dim() == distribution.dim():
        f0_hz = f0_hz.squeeze(-1)
    n_harmonics = distribution.shape[-1]
    count = harmonics_below_nyquist(f0_hz, n_harmonics, sample_rate)
    k = torch.arange(1, n_harmonics + 1, device=distribution.device)
    return distribution * (k <= count.unsqueeze(-1)).to(distribution.dtype)


# --------------------------------------------------------------------------------------------------
# Upsampling frame-rate controls


def _interpolation_weight(position: Tensor, mode: UpsampleMode) -> Tensor:
    """Weight of the next frame at a fractional distance `position` in [0, 1) past a frame centre."""
    if mode == "linear":
        return position
    if mode == "window":
        # Overlap-adding Hann windows 2 * hop long at 50% overlap (each centred on its frame, summing
        # to one) weights the two nearest frames by a raised cosine of the distance between them.
        return 0.5 - 0.5 * torch.cos(math.pi * position)
    raise ValueError(f"unknown upsampling mode {mode!r}: use 'linear' or 'window'")


def _segment_weights(hop: int, mode: UpsampleMode, dtype: torch.dtype, device) -> Tensor:
    """[hop] weights of frame j + 1 for the samples from frame centre j up to frame centre j + 1."""
    return _interpolation_weight(torch.arange(hop, device=device, dtype=torch.float64) / hop, mode).to(dtype)


def upsample(frames: Tensor, n_samples: int, mode: UpsampleMode = "linear") -> Tensor:
    """Frame-rate controls [B, F, K] to sample rate [B, n_samples, K].

    "linear" interpolates between frame centres: use it for f0, whose integral is the phase.
    "window" is the overlap-add of Hann windows (2 * hop long, 50% overlap, one per frame, like an
    inverse STFT; DDSP's amplitude upsampling), which equals interpolating with raised-cosine weights:
    envelopes are smooth, with zero slope at each frame centre. Both hold the last frame to the end.
    """
    batch, n_frames = frames.shape[:2]
    following = torch.cat([frames[:, 1:], frames[:, -1:]], dim=1)  # frame j + 1, the last one held
    if n_samples % n_frames == 0:
        # Whole hops: each segment between two frame centres is one broadcast, no gather.
        hop = n_samples // n_frames
        weight = _segment_weights(hop, mode, frames.dtype, frames.device)
        weight = weight.view(1, 1, hop, *([1] * (frames.dim() - 2)))
        segments = torch.lerp(frames.unsqueeze(2), following.unsqueeze(2), weight)
        return segments.reshape(batch, n_samples, *frames.shape[2:])
    position = torch.arange(n_samples, device=frames.device, dtype=torch.float64) * (n_frames / n_samples)
    before = position.floor().clamp(max=n_frames - 1)
    weight = _interpolation_weight(position - before, mode).to(frames.dtype)
    weight = weight.view(1, n_samples, *([1] * (frames.dim() - 2)))
    before = before.long()
    return torch.lerp(frames[:, before], following[:, before], weight)


# --------------------------------------------------------------------------------------------------
# Harmonic oscillator bank


def _fundamental_phase(f0_up: Tensor, sample_rate: float) -> Tensor:
    """Phase of the fundamental per sample, 2 pi * integral of f0 (the sum before each sample), wrapped
    to [-pi, pi). Accumulated in float64: a float32 running sum over 4 s at 16 kHz drifts by 1e-4 to
    1e-3 rad at the fundamental (measured at 110-1000 Hz), k times that at harmonic k (8e-3 rad at the
    64th harmonic of 110 Hz); float64 keeps it below 1e-9. Wrapping before the float32 cast keeps
    k * phase within float32 precision (about 1.5e-5 rad at k = 64)."""
    increment = f0_up.double() * (2.0 * math.pi / sample_rate)
    phase = torch.cumsum(increment, dim=-1) - increment  # exclusive sum: phase 0 at sample 0
    return (torch.remainder(phase + math.pi, 2.0 * math.pi) - math.pi).to(f0_up.dtype)


def harmonic_synth(f0_hz: Tensor, amplitude: Tensor, harmonic_distribution: Tensor, sample_rate: float,
                   n_samples: int, initial_phase: Tensor | None = None) -> Tensor:
    """The oscillator bank y(t) = sum_k A_k(t) cos(phi_k(t)), with phi_k = k * 2 pi * integral f0 + phase_k.

    f0_hz [B, F] (Hz, <= 0 means silent), amplitude [B, F] (overall, linear; [B, F, 1] works for
    both), harmonic_distribution [B, F, K] (non-negative, any scale), initial_phase broadcastable to
    [B, K] (radians; default 0) -> audio [B, n_samples]; n_samples must be a multiple of F.

    Per sample, after upsampling (f0 linearly, amplitude and distribution with Hann windows): harmonics
    at or above Nyquist are zeroed, the rest of the distribution is renormalised to sum to one and
    multiplied by the amplitude, so A_k = amplitude * d_k / sum_{audible j} d_j.
    """
    batch, n_frames, n_harmonics = harmonic_distribution.shape
    f0_hz = f0_hz.reshape(batch, n_frames)
    amplitude = amplitude.reshape(batch, n_frames)
    if n_samples % n_frames:
        raise ValueError(f"n_samples ({n_samples}) must be a multiple of the frame count ({n_frames})")
    hop = n_samples // n_frames
    f0_up = upsample(f0_hz.unsqueeze(-1), n_samples, "linear").squeeze(-1)  # [B, N]
    amplitude_up = upsample(amplitude.unsqueeze(-1), n_samples, "window").squeeze(-1)
    theta = _fundamental_phase(f0_up, sample_rate)

    # How many harmonics sound at each sample: those below Nyquist, none where f0 <= 0.
    audible = harmonics_below_nyquist(f0_up, n_harmonics, sample_rate)
    audible = torch.where(f0_up > 0, audible, torch.zeros_like(audible)).view(batch, n_frames, hop)
    most, least = audible.amax(dim=-1), audible.amin(dim=-1)  # per segment [B, F]
    # Harmonics above Nyquist at every sample cost nothing: leave them out of the bank.
    n_bank = max(int(most.max()), 1)
    k = torch.arange(1, n_bank + 1, device=f0_hz.device)

    # The bank, laid out per segment from frame centre j to frame centre j + 1 with the samples last,
    # [B, F, K, hop]: that layout makes the phase product and the matrix products below several times
    # faster on CPU than [B, F, hop, K].
    harmonic_numbers = k.to(theta.dtype).view(1, 1, n_bank, 1)
    phases = harmonic_numbers * theta.view(batch, n_frames, 1, hop)
    if initial_phase is not None:
        offset = torch.as_tensor(initial_phase, dtype=theta.dtype, device=theta.device)
        # In place after the product: three times faster than addcmul's three-way broadcast on CPU
        phases += offset.broadcast_to(batch, n_harmonics)[:, :n_bank].reshape(batch, 1, n_bank, 1)
    waves = torch.cos(phases)

    # The distribution at sample n of segment j is (1 - w) d_j + w d_{j+1} (Hann weights w), so its
    # product with the bank splits into one [2, K] @ [K, hop] matrix product per segment and never
    # builds the per-sample distribution, a [B, N, K] tensor.
    dist = harmonic_distribution[..., :n_bank]
    pair = torch.stack([dist, torch.cat([dist[:, 1:], dist[:, -1:]], dim=1)], dim=2)  # [B, F, 2, K]
    weight = _segment_weights(hop, "window", theta.dtype, theta.device)
    # Nyquist (and silence) masks the coefficients of a whole segment where the audible count is the
    # same at all its samples; only the few segments where it changes need the per-sample mask.
    mixed = torch.matmul(pair * (k <= most.unsqueeze(-1)).unsqueeze(2).to(pair.dtype), waves)  # [B, F, 2, hop]
    changing = torch.nonzero(least < most, as_tuple=True)
    if changing[0].numel():
        sounding = (k.view(-1, 1) <= audible[changing].unsqueeze(1)).to(waves.dtype)  # [S, K, hop]
        mixed = mixed.index_put(changing, torch.matmul(pair[changing], waves[changing] * sounding))
    numerator = torch.lerp(mixed[:, :, 0], mixed[:, :, 1], weight).reshape(batch, n_samples)

    # The normaliser, the distribution summed over the audible harmonics, from running sums over k.
    running = torch.cat([torch.zeros_like(pair[..., :1]), torch.cumsum(pair, dim=-1)], dim=-1)  # [B, F, 2, K+1]
    index = audible.clamp(max=n_bank).unsqueeze(2).expand(-1, -1, 2, -1)
    total = torch.gather(running, 3, index)  # [B, F, 2, hop]
    denominator = torch.lerp(total[:, :, 0], total[:, :, 1], weight).reshape(batch, n_samples)
    return amplitude_up * numerator / denominator.clamp_min(1e-7)


# --------------------------------------------------------------------------------------------------
# Filtered noise


def _overlap_add(frames: Tensor, hop: int) -> Tensor:
    """[B, F, W] frames placed every `hop` samples and summed -> [B, (F - 1) * hop + W]."""
    batch, n_frames, width = frames.shape
    length = (n_frames - 1) * hop + width
    return nn.functional.fold(frames.transpose(1, 2), output_size=(1, length), kernel_size=(1, width),
                              stride=(1, hop)).reshape(batch, length)


def _next_power_of_two(n: int) -> int:
    return 1 << (n - 1).bit_length()


def filtered_noise(band_magnitudes: Tensor, n_samples: int, hop: int, generator: torch.Generator | None = None,
                   noise: Tensor | None = None) -> Tensor:
    """White noise through a time-varying FIR filter: [B, F, M] band magnitudes -> [B, n_samples].

    Each frame's M magnitudes (linear, evenly spaced from 0 Hz to Nyquist) become a zero-phase impulse
    response (inverse real FFT, 2 (M - 1) taps), Hann-windowed to smooth its spectrum and shifted to be
    causal; frame i filters samples [i * hop, (i + 1) * hop) of the noise by FFT convolution and the
    filtered frames are overlap-added. The output is delayed back by the shift, so it is zero-phase.
    Noise is uniform in [-1, 1), drawn with `generator` (for reproducible audio) unless given as
    `noise` [B, n_samples]. Flat magnitudes of 1 pass the noise through unchanged.
    """
    batch, n_frames, n_bands = band_magnitudes.shape
    if n_bands < 2:
        raise ValueError("filtered_noise needs at least 2 band magnitudes per frame")
    if n_frames * hop != n_samples:
        raise ValueError(f"frames x hop ({n_frames} x {hop}) must equal n_samples ({n_samples})")
    if noise is None:
        noise = torch.rand(batch, n_samples, generator=generator, device=band_magnitudes.device,
                           dtype=band_magnitudes.dtype) * 2.0 - 1.0

    ir_size = 2 * (n_bands - 1)
    impulse = torch.fft.irfft(band_magnitudes, n=ir_size)  # real magnitudes: zero phase
    # Zero phase puts the response's centre at tap 0; roll it to the middle, where a periodic Hann
    # window of the same length peaks.
    impulse = torch.roll(impulse, ir_size // 2, dims=-1)
    impulse = impulse * torch.hann_window(ir_size, dtype=impulse.dtype, device=impulse.device)

    n_fft = _next_power_of_two(hop + ir_size - 1)
    spectrum = torch.fft.rfft(noise.view(batch, n_frames, hop), n=n_fft) * torch.fft.rfft(impulse, n=n_fft)
    filtered = _overlap_add(torch.fft.irfft(spectrum, n=n_fft), hop)
    delay = ir_size // 2
    return filtered[:, delay:delay + n_samples]


# --------------------------------------------------------------------------------------------------
# Reverb


def fft_convolve(signal: Tensor, impulse_response: Tensor) -> Tensor:
    """Causal convolution by FFT, cropped to the input length: [B, N] * [B or 1, L] -> [B, N]."""
    n_samples = signal.shape[-1]
    n_fft = _next_power_of_two(n_samples + impulse_response.shape[-1] - 1)
    spectrum = torch.fft.rfft(signal, n=n_fft) * torch.fft.rfft(impulse_response, n=n_fft)
    return torch.fft.irfft(spectrum, n=n_fft)[..., :n_samples]


class Reverb(nn.Module):
    """A learned room: out = (1 - wet) * audio + wet * (audio convolved with a learned tail).

    The tail is `ir_length` samples of noise under an exponential decay that falls by 60 dB in
    `decay_s` seconds at initialisation; its first tap is held at zero (the direct sound is the dry
    path). `wet` in (0, 1) is learned through a sigmoid. `impulse_response()` is the whole response:
    passing a unit impulse through the module returns it.
    """

    def __init__(self, ir_length: int, sample_rate: int = 16000, decay_s: float = 0.5, wet: float = 0.2,
                 trainable: bool = True, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if ir_length < 2:
            raise ValueError("Reverb needs an impulse response of at least 2 samples")
        if not 0.0 < wet < 1.0:
            raise ValueError("wet must be between 0 and 1 (exclusive)")
        time = torch.arange(ir_length, dtype=torch.float32) / sample_rate
        decay = torch.exp(-time * (math.log(1000.0) / decay_s))  # -60 dB at decay_s
        tail = (torch.rand(ir_length, generator=generator) * 2.0 - 1.0) * decay
        self.tail = nn.Parameter(tail, requires_grad=trainable)
        self.wet_logit = nn.Parameter(torch.tensor(math.log(wet / (1.0 - wet))), requires_grad=trainable)
        direct = torch.zeros(ir_length)
        direct[0] = 1.0
        self.register_buffer("direct", direct, persistent=False)

    def impulse_response(self) -> Tensor:
        """[ir_length]: the dry impulse plus the wet tail."""
        wet = torch.sigmoid(self.wet_logit)
        return (1.0 - wet) * self.direct + wet * self.tail * (1.0 - self.direct)

    def forward(self, audio: Tensor) -> Tensor:
        """[B, N] -> [B, N], the reverberated audio (the tail beyond N is cut)."""
        return fft_convolve(audio, self.impulse_response().unsqueeze(0))
