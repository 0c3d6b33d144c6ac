"""The harmonic-plus-noise synthesiser against independent numpy evaluations of its formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from helpers import error_message
from muselab.audio.synth import (
    Reverb,
    filtered_noise,
    harmonic_synth,
    harmonics_below_nyquist,
    hz_to_midi,
    remove_above_nyquist,
    scale_function,
    upsample,
)
from muselab.core.errors import ControlError
from muselab.data.notes import midi_to_hz, note_to_midi

SR = 16000


# ---- numpy oracles, written from the formulas, not from the torch code ----

def hann_overlap_add(frames: np.ndarray, hop: int, n_samples: int) -> np.ndarray:
    """Sum of Hann windows (2 * hop long, centred on frame i at sample i * hop) scaled by each frame,
    the last frame repeated once so the signal holds after it."""
    frames = np.concatenate([frames, frames[-1:]])
    out = np.zeros(n_samples + 2 * hop)
    window = np.hanning(2 * hop + 1)[:-1]  # periodic Hann, peak at index hop
    for i, value in enumerate(frames):
        out[i * hop:i * hop + 2 * hop] += value * window  # centred at i * hop after the shift below
    return out[hop:hop + n_samples]


def oracle_harmonics(f0_frames, amp_frames, dist_frames, hop, phase0=None):
    """y[n] = sum_k A_k[n] cos(k * 2 pi sum_{m<n} f0[m] / sr + phase0_k), straight from the definition."""
    n_frames, n_harmonics = dist_frames.shape
    n = n_frames * hop
    f0 = np.interp(np.arange(n), np.arange(n_frames) * hop, f0_frames)  # holds after the last frame
    amp = hann_overlap_add(amp_frames, hop, n)
    dist = np.stack([hann_overlap_add(dist_frames[:, k], hop, n) for k in range(n_harmonics)], axis=1)
    phase = 2 * np.pi * np.concatenate([[0.0], np.cumsum(f0 / SR)[:-1]])
    k = np.arange(1, n_harmonics + 1)
    audible = (k[None] * f0[:, None] < SR / 2) & (f0[:, None] > 0)
    dist = dist * audible
    total = dist.sum(axis=1, keepdims=True)
    amplitudes = amp[:, None] * np.divide(dist, total, out=np.zeros_like(dist), where=total > 0)
    offsets = np.zeros(n_harmonics) if phase0 is None else phase0
    return (amplitudes * np.cos(k[None] * phase[:, None] + offsets[None])).sum(axis=1)


def synth(f0, amp, dist, hop, phase0=None):
    t = lambda a: torch.tensor(np.asarray(a)[None], dtype=torch.float32)  # noqa: E731
    out = harmonic_synth(t(f0), t(amp), t(dist), SR, len(f0) * hop,
                         initial_phase=None if phase0 is None else t(phase0))
    return out[0].double().numpy()


def assert_close(actual, expected, rel=1e-4):
    scale = np.abs(expected).max()
    assert scale > 0
    assert np.abs(actual - expected).max() <= rel * scale


# ---- upsampling ----

def test_linear_upsampling_interpolates_between_frame_centres_and_holds_the_end():
    frames = torch.tensor([[[0.0], [4.0], [2.0]]])
    out = upsample(frames, 12, "linear")[0, :, 0].numpy()
    np.testing.assert_allclose(out, np.interp(np.arange(12), [0, 4, 8], [0, 4, 2]), atol=1e-6)
    # A sample count that is not a whole number of hops takes the general path, same rule.
    out = upsample(frames, 10, "linear")[0, :, 0].numpy()
    np.testing.assert_allclose(out, np.interp(np.arange(10) * 3 / 10, [0, 1, 2], [0, 4, 2]), atol=1e-6)


def test_window_upsampling_is_an_overlap_add_of_hann_windows():
    rng = np.random.default_rng(0)
    frames = rng.uniform(0, 1, size=9)
    out = upsample(torch.tensor(frames[None, :, None]), 9 * 16, "window")[0, :, 0].numpy()
    np.testing.assert_allclose(out, hann_overlap_add(frames, 16, 9 * 16), atol=1e-6)
    constant = upsample(torch.full((2, 5, 3), 0.7), 50, "window")
    assert torch.allclose(constant, torch.full((2, 50, 3), 0.7))
    with pytest.raises(ValueError, match="linear"):
        upsample(torch.ones(1, 2, 1), 8, "cubic")


# ---- harmonic synthesis ----

def test_constant_f0_matches_the_closed_form():
    hop, n_frames = 64, 50
    dist = np.array([1.0, 0.5, 0.25, 0.125])
    out = synth(np.full(n_frames, 220.0), np.full(n_frames, 0.8), np.tile(dist, (n_frames, 1)), hop)
    t = np.arange(n_frames * hop) / SR
    k = np.arange(1, 5)
    expected = 0.8 * (dist / dist.sum() * np.cos(2 * np.pi * 220.0 * k * t[:, None])).sum(axis=1)
    assert_close(out, expected)


def test_gliding_f0_with_changing_controls_matches_numpy():
    rng = np.random.default_rng(1)
    hop, n_frames, n_harmonics = 32, 40, 8
    f0 = np.linspace(110.0, 2500.0, n_frames)  # harmonic 8 passes Nyquist at 1 kHz, harmonic 4 at 2 kHz
    f0[:3] = 0.0  # and it starts silent
    amp = rng.uniform(0.1, 1.0, n_frames)
    dist = rng.uniform(0.0, 1.0, (n_frames, n_harmonics))
    phase0 = rng.uniform(-np.pi, np.pi, n_harmonics)
    assert_close(synth(f0, amp, dist, hop), oracle_harmonics(f0, amp, dist, hop))
    assert_close(synth(f0, amp, dist, hop, phase0), oracle_harmonics(f0, amp, dist, hop, phase0))


def test_phase_stays_accurate_over_four_seconds():
    hop = 64
    n_frames = 4 * SR // hop
    f0 = 440.0 * 2 ** (0.3 * np.sin(np.linspace(0, 40, n_frames)) / 12)  # vibrato
    dist = np.tile(np.ones(16), (n_frames, 1))
    assert_close(synth(f0, np.ones(n_frames), dist, hop), oracle_harmonics(f0, np.ones(n_frames), dist, hop))


def test_no_harmonic_at_or_above_nyquist_and_no_aliases():
    hop, n_frames, n_harmonics, f0 = 100, 160, 20, 1500.0  # 1 s; harmonics 1-5 lie below 8 kHz
    dist = np.ones((n_frames, n_harmonics))
    out = synth(np.full(n_frames, f0), np.ones(n_frames), dist, hop)
    t = np.arange(n_frames * hop) / SR
    only_audible = sum(np.cos(2 * np.pi * k * f0 * t) for k in range(1, 6)) / 5  # renormalised over 5
    assert_close(out, only_audible)
    spectrum = np.abs(np.fft.rfft(out))  # 1 Hz bins, the tone is periodic in the window: no leakage
    aliases = [SR - k * f0 for k in range(6, 11)]  # 7000, 5500, 4000, 2500, 1000 Hz
    assert all(spectrum[int(a)] < 1e-4 * spectrum.max() for a in aliases)
    assert spectrum[int(5 * f0)] > 0.1 * spectrum.max()


def test_distribution_is_normalised_and_amplitude_scales_the_output():
    rng = np.random.default_rng(2)
    hop, n_frames = 32, 20
    f0 = np.full(n_frames, 300.0)
    dist = rng.uniform(0.1, 1.0, (n_frames, 6))
    base = synth(f0, np.full(n_frames, 0.5), dist, hop)
    assert_close(synth(f0, np.full(n_frames, 0.5), 7.0 * dist, hop), base)
    assert_close(synth(f0, np.full(n_frames, 1.0), dist, hop), 2.0 * base)
    one = np.zeros((n_frames, 6))
    one[:, 0] = 3.0
    pure = synth(f0, np.full(n_frames, 0.25), one, hop)
    assert abs(np.abs(pure).max() - 0.25) < 1e-3
    # Controls shaped [B, F, 1], as networks often emit them, give the same audio.
    column = harmonic_synth(torch.full((1, n_frames, 1), 300.0), torch.full((1, n_frames, 1), 0.5),
                            torch.tensor(dist[None], dtype=torch.float32), SR, n_frames * hop)
    assert_close(column[0].double().numpy(), base)


def test_silent_where_f0_is_zero():
    out = synth(np.zeros(10), np.ones(10), np.ones((10, 4)), 16)
    assert np.abs(out).max() == 0


def test_remove_above_nyquist_zeroes_from_the_nyquist_harmonic_up():
    dist = torch.ones(1, 2, 10)
    f0 = torch.tensor([[1000.0, 3000.0]])  # 8 * 1000 = 8000 Hz is Nyquist itself: removed
    kept = remove_above_nyquist(f0, dist, SR)
    assert kept[0, 0].tolist() == [1.0] * 7 + [0.0] * 3
    assert kept[0, 1].tolist() == [1.0] * 2 + [0.0] * 8
    assert harmonics_below_nyquist(f0, 10, SR).tolist() == [[7, 2]]


def test_gradients_reach_every_control():
    gen = torch.Generator().manual_seed(0)
    f0 = torch.full((2, 10), 200.0, requires_grad=True)
    amp = torch.full((2, 10), 0.5, requires_grad=True)
    dist = torch.rand(2, 10, 12, generator=gen).requires_grad_()
    mags = torch.rand(2, 10, 17, generator=gen).requires_grad_()
    reverb = Reverb(64, generator=gen)
    audio = harmonic_synth(f0, amp, dist, SR, 640) + filtered_noise(mags, 640, 64, generator=gen)
    target = torch.randn(2, 640, generator=gen)
    (reverb(audio) - target).square().mean().backward()
    for tensor in (f0, amp, dist, mags, reverb.tail, reverb.wet_logit):
        assert tensor.grad is not None and torch.isfinite(tensor.grad).all() and tensor.grad.abs().sum() > 0


# ---- filtered noise ----

def test_flat_unit_magnitudes_pass_the_noise_through():
    noise = torch.rand(2, 512, generator=torch.Generator().manual_seed(3)) * 2 - 1
    out = filtered_noise(torch.ones(2, 8, 33), 512, 64, noise=noise)
    assert torch.allclose(out, noise, atol=1e-5)
    assert torch.allclose(filtered_noise(torch.full((2, 8, 33), 0.5), 512, 64, noise=noise), 0.5 * noise, atol=1e-5)


def band_energy(audio: np.ndarray, low: float, high: float) -> float:
    power = np.abs(np.fft.rfft(audio)) ** 2
    freqs = np.fft.rfftfreq(audio.size, 1 / SR)
    return float(power[(freqs >= low) & (freqs < high)].sum())


def test_flat_magnitudes_give_white_noise_and_low_pass_keeps_the_low_band():
    gen = torch.Generator().manual_seed(4)
    white = filtered_noise(torch.full((1, 250, 65), 0.3), 16000, 64, generator=gen)[0].numpy()
    bands = [band_energy(white, lo, lo + 2000) for lo in range(0, 8000, 2000)]
    assert max(bands) / min(bands) < 1.2
    low_pass = torch.zeros(1, 250, 65)
    low_pass[..., :16] = 1.0  # up to 2 kHz
    low = filtered_noise(low_pass, 16000, 64, generator=gen)[0].numpy()
    assert band_energy(low, 0, 2200) > 0.95 * band_energy(low, 0, 8001)


def test_noise_filter_follows_the_frames():
    mags = torch.zeros(1, 100, 65)
    mags[:, :50, :16] = 1.0  # low first
    mags[:, 50:, 48:] = 1.0  # high second
    out = filtered_noise(mags, 6400, 64, generator=torch.Generator().manual_seed(5))[0].numpy()
    first, second = out[:3000], out[3400:]
    assert band_energy(first, 0, 2500) > 0.9 * band_energy(first, 0, 8001)
    assert band_energy(second, 5500, 8001) > 0.9 * band_energy(second, 0, 8001)


def test_noise_is_reproducible_with_a_generator():
    mags = torch.rand(2, 10, 9, generator=torch.Generator().manual_seed(0))
    run = lambda seed: filtered_noise(mags, 320, 32, generator=torch.Generator().manual_seed(seed))  # noqa: E731
    assert torch.equal(run(7), run(7))
    assert not torch.equal(run(7), run(8))


def test_noise_shapes_are_checked():
    with pytest.raises(ValueError, match="n_samples"):
        filtered_noise(torch.ones(1, 10, 9), 300, 32)


# ---- reverb ----

def test_reverb_of_an_impulse_is_its_impulse_response():
    reverb = Reverb(256, sample_rate=SR, decay_s=0.01, wet=0.3, generator=torch.Generator().manual_seed(0))
    impulse = torch.zeros(1, 1000)
    impulse[0, 0] = 1.0
    out = reverb(impulse)[0]
    ir = reverb.impulse_response()
    assert torch.allclose(out[:256], ir, atol=1e-6)
    assert torch.allclose(out[256:], torch.zeros(744), atol=1e-6)
    assert abs(ir[0].item() - 0.7) < 1e-6  # the dry path
    assert ir[128:].abs().max() < 0.05 * ir[1:128].abs().max()  # the tail decays


def test_reverb_delays_a_later_impulse_and_is_linear():
    reverb = Reverb(64, generator=torch.Generator().manual_seed(1))
    x = torch.zeros(2, 400)
    x[0, 100] = 2.0
    x[1, 10] = 1.0
    out = reverb(x)
    ir = reverb.impulse_response()
    assert torch.allclose(out[0, 100:164], 2 * ir, atol=1e-5)
    assert torch.allclose(out[1, 10:74], ir, atol=1e-5)


# ---- pitch helpers and scaling ----

@pytest.mark.parametrize(("name", "midi"), [("C4", 60), ("A4", 69), ("F#3", 54), ("Bb2", 46), ("c-1", 0),
                                            ("G9", 127), ("B#3", 60), ("Cb4", 59), ("Ebb4", 62)])
def test_note_names(name, midi):
    assert note_to_midi(name) == midi


@pytest.mark.parametrize("bad", ["H4", "C", "4C", "", "C#b4", "Cx4", "G#9", "C 4 4"])
def test_bad_note_names_are_one_line_value_errors(bad):
    with pytest.raises(ValueError) as err:
        note_to_midi(bad)
    assert isinstance(err.value, ControlError)
    assert repr(bad) in error_message(err)


def test_midi_hz_round_trip():
    assert midi_to_hz(69) == 440.0
    assert math.isclose(midi_to_hz(60), 261.6255653, rel_tol=1e-9)
    assert math.isclose(midi_to_hz(81), 880.0)
    midis = np.linspace(0, 127, 50)
    np.testing.assert_allclose(hz_to_midi(midi_to_hz(midis)), midis, atol=1e-9)
    tensor = torch.linspace(20, 100, 9, dtype=torch.float64)
    assert torch.allclose(hz_to_midi(midi_to_hz(tensor)), tensor)
    assert hz_to_midi(440.0) == 69.0


def test_scale_function_is_positive_bounded_and_increasing():
    x = torch.linspace(-20, 20, 101)
    y = scale_function(x)
    assert (y > 0).all() and (y <= 2 + 1e-6).all() and (y.diff() >= 0).all()
    assert math.isclose(scale_function(torch.tensor(0.0)).item(), 2 * 0.5 ** math.log(10) + 1e-7, rel_tol=1e-6)
    assert scale_function(torch.tensor(-30.0)).item() == pytest.approx(1e-7, rel=1e-3)
