import math

import librosa
import numpy as np
import pytest
import torch

from helpers import error_message
from muselab.audio import dsp
from muselab.core.errors import ConfigError


def sine(freq: float, sr: int, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def harmonic_tone(sr: int = 16000, seconds: float = 0.5, f0: float = 220.0) -> np.ndarray:
    """A tone with six decaying harmonics and a rising envelope: music-like, not a pure sine."""
    t = np.arange(int(sr * seconds)) / sr
    tone = sum(0.2 / k * np.sin(2 * np.pi * f0 * k * t + k) for k in range(1, 7))
    return (tone * np.linspace(0.3, 1.0, len(t))).astype(np.float32)


def spectral_convergence(target_mag: torch.Tensor, wav: torch.Tensor, n_fft: int, hop: int) -> float:
    mag = dsp.magnitude(wav, n_fft, hop)
    return float(torch.linalg.vector_norm(target_mag - mag) / torch.linalg.vector_norm(target_mag))


# --- STFT and mel -------------------------------------------------------------------------------------


@pytest.mark.parametrize("sr,n_fft,n_mels,fmin,fmax", [
    (22050, 1024, 80, 0.0, 8000.0), (16000, 512, 64, 0.0, None), (44100, 2048, 128, 30.0, 16000.0),
    (24000, 1024, 100, 0.0, 12000.0),
])
def test_mel_filterbank_matches_librosa_slaney(sr, n_fft, n_mels, fmin, fmax):
    ours = dsp.mel_filterbank(sr, n_fft, n_mels, fmin, fmax)
    theirs = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=False,
                                 norm="slaney")
    assert ours.shape == (n_mels, n_fft // 2 + 1) and ours.dtype == torch.float32
    np.testing.assert_allclose(ours.numpy(), theirs, atol=1e-5, rtol=0)


def test_mel_band_beyond_nyquist_is_a_one_line_config_error():
    with pytest.raises(ConfigError) as err:
        dsp.mel_filterbank(16000, 512, 64, fmax=11025.0)
    assert "8000" in error_message(err)


@pytest.mark.parametrize("power", [1.0, 2.0])
def test_log_mel_matches_librosa(power):
    rng = np.random.default_rng(0)
    y = sine(220, 22050, 0.5, 0.3) + 0.05 * rng.standard_normal(11025).astype(np.float32)
    s = dsp.MelSettings()
    theirs = librosa.feature.melspectrogram(y=y, sr=s.sr, n_fft=s.n_fft, hop_length=s.hop, n_mels=s.n_mels,
                                            fmin=s.fmin, fmax=s.fmax, power=power, center=True,
                                            pad_mode="reflect")
    expected = np.log(np.maximum(theirs, 1e-5))
    ours = dsp.log_mel(torch.from_numpy(y), power=power)
    np.testing.assert_allclose(ours.numpy(), expected, atol=2e-4, rtol=0)
    module = dsp.MelSpectrogram(dsp.MelSettings(power=power))
    np.testing.assert_allclose(module(torch.from_numpy(y)[None])[0].numpy(), expected, atol=2e-4, rtol=0)


def test_mel_module_is_batched_and_keeps_its_filterbank_out_of_checkpoints():
    module = dsp.MelSpectrogram(dsp.MelSettings(sr=16000, n_fft=512, hop=128, n_mels=64, fmax=None))
    mel = module(torch.randn(3, 4000) * 0.1)
    assert mel.shape == (3, 64, 1 + 4000 // 128)
    assert "mel_basis" not in module.state_dict()


@pytest.mark.parametrize("n_fft,hop,frames", [(1024, 256, 12), (512, 128, 3)])
def test_istft_real_matches_torch_istft(n_fft, hop, frames):
    gen = torch.Generator().manual_seed(0)
    real, imag = (torch.randn(2, n_fft // 2 + 1, frames, generator=gen) * 8 for _ in range(2))
    window = torch.hann_window(n_fft, periodic=True)
    expected = torch.istft(torch.complex(real, imag), n_fft, hop, window=window, center=True, length=frames * hop)
    got = dsp.istft_real(real, imag, window, hop, frames * hop)
    assert got.shape == expected.shape == (2, frames * hop)
    assert (got - expected).abs().max() < 1e-5 * expected.abs().max()


def test_overlap_add_sums_frames_hop_apart():
    frames = torch.randn(2, 5, 8)
    got = dsp.overlap_add(frames, 2)
    expected = torch.zeros(2, 4 * 2 + 8)
    for f in range(5):
        expected[:, 2 * f:2 * f + 8] += frames[:, f]
    assert torch.allclose(got, expected)
    with pytest.raises(ValueError, match="multiple of hop"):
        dsp.overlap_add(frames, 3)


def test_stft_shapes_and_istft_round_trip():
    x = torch.randn(3, 4000) * 0.3
    spec = dsp.stft(x, 512, 128)
    assert spec.is_complex() and spec.shape == (3, 257, 1 + 4000 // 128)
    assert dsp.stft(x[0], 512, 128).shape == (257, 1 + 4000 // 128)
    back = dsp.istft(spec, 512, 128, length=4000)
    assert back.shape == x.shape
    assert torch.allclose(back, x, atol=1e-5)


# --- Griffin-Lim --------------------------------------------------------------------------------------


def test_fast_griffin_lim_reconstructs_a_harmonic_tone_as_well_as_librosa():
    n_fft, hop = 512, 128
    target = dsp.magnitude(torch.from_numpy(harmonic_tone()), n_fft, hop)
    fast = spectral_convergence(target, dsp.griffin_lim(target, n_fft, hop, n_iter=32), n_fft, hop)
    plain = spectral_convergence(target, dsp.griffin_lim(target, n_fft, hop, n_iter=32, momentum=0.0),
                                 n_fft, hop)
    reference = librosa.griffinlim(target.numpy(), n_iter=32, hop_length=hop, n_fft=n_fft, momentum=0.99,
                                   pad_mode="reflect", random_state=0)
    librosa_sc = spectral_convergence(target, torch.from_numpy(reference), n_fft, hop)
    assert fast < 0.15
    assert fast < plain
    assert fast < 1.1 * librosa_sc


def test_griffin_lim_is_reproducible_from_its_seed_and_batched():
    target = dsp.magnitude(torch.from_numpy(np.stack([harmonic_tone(), harmonic_tone()[::-1].copy()])), 256, 64)
    a = dsp.griffin_lim(target, 256, 64, n_iter=4, seed=3, length=8000)
    assert a.shape == (2, 8000)
    assert torch.equal(a, dsp.griffin_lim(target, 256, 64, n_iter=4, seed=3, length=8000))
    assert not torch.equal(a, dsp.griffin_lim(target, 256, 64, n_iter=4, seed=4, length=8000))


def test_phase_from_magnitude_advances_a_steady_tone_by_its_frequency_per_hop():
    n_fft, hop, sr = 1024, 256, 22050
    bin_index = 40  # a tone centred on a bin: its phase advances by 2 pi k hop / n_fft per frame
    wav = torch.from_numpy(sine(bin_index * sr / n_fft, sr, 1.0))
    spec = dsp.stft(wav, n_fft, hop)
    phase = dsp.phase_from_magnitude(spec.abs(), n_fft, hop)
    assert phase.shape == spec.shape
    frames = slice(8, -8)  # away from the signal's ends
    advance = torch.diff(phase[bin_index, frames])
    expected = 2 * math.pi * bin_index * hop / n_fft
    assert torch.allclose(torch.remainder(advance - expected + math.pi, 2 * math.pi) - math.pi,
                          torch.zeros_like(advance), atol=1e-3)
    # The bins around the peak share its phase, as the true STFT's do (Hann's main lobe: same sign, torch.stft's
    # frame-start convention turning it by pi per bin)
    true_step = torch.angle(spec[bin_index + 1, frames] / spec[bin_index, frames])
    made_step = phase[bin_index + 1, frames] - phase[bin_index, frames]
    assert (torch.cos(made_step - true_step) > 0.999).all()


def test_phase_from_magnitude_makes_a_more_consistent_spectrum_than_zero_phase():
    n_fft, hop = 1024, 256
    wav = torch.from_numpy(harmonic_tone(sr=22050, seconds=1.0))
    target = dsp.magnitude(wav, n_fft, hop)
    batch = torch.stack([target, target.flip(-1)])  # batched, and a falling envelope as well as a rising one
    phase = dsp.phase_from_magnitude(batch, n_fft, hop)
    assert phase.shape == batch.shape and torch.isfinite(phase).all()
    for mag, angles in zip(batch, phase, strict=True):
        gradient = spectral_convergence(mag, dsp.istft(torch.polar(mag, angles), n_fft, hop), n_fft, hop)
        zero = spectral_convergence(mag, dsp.istft(mag.to(torch.complex64), n_fft, hop), n_fft, hop)
        assert gradient < 0.5 * zero
    # Silence and a single frame pass through without NaNs
    for frames in (1, 2, 3):
        assert torch.isfinite(dsp.phase_from_magnitude(torch.zeros(513, frames), n_fft, hop)).all()
        assert dsp.phase_from_magnitude(target[:, :frames], n_fft, hop).shape == (513, frames)


def test_mel_to_linear_is_non_negative_and_maps_back_to_the_mel():
    basis = dsp.mel_filterbank(16000, 512, 64)
    linear = dsp.magnitude(torch.from_numpy(harmonic_tone()), 512, 128)
    mel = basis @ linear
    approx = dsp.mel_to_linear(mel, basis)
    assert approx.shape == linear.shape and (approx >= 0).all()
    assert torch.linalg.vector_norm(basis @ approx - mel) < 0.1 * torch.linalg.vector_norm(mel)
    wav = dsp.griffin_lim(approx, 512, 128, n_iter=16)
    assert torch.linalg.vector_norm(basis @ dsp.magnitude(wav, 512, 128) - mel) < 0.5 * torch.linalg.vector_norm(mel)


# --- loudness and pitch -------------------------------------------------------------------------------


def loudness_of(wav: np.ndarray, sr: int = 16000) -> torch.Tensor:
    return dsp.a_weighted_loudness(torch.from_numpy(wav), sr, n_fft=1024, hop=256)


def test_full_scale_1khz_sine_is_0_db_and_halving_the_amplitude_is_minus_6_db():
    full = loudness_of(sine(1000, 16000, 1.0, amplitude=1.0))
    half = loudness_of(sine(1000, 16000, 1.0, amplitude=0.5))
    assert full.shape == (1 + 16000 // 256,)
    assert abs(float(full[4:-4].mean())) < 0.1
    assert torch.allclose(half - full, torch.full_like(full, 20 * math.log10(0.5)), atol=0.05)


def test_a_weighting_makes_100hz_quieter_than_1khz_and_silence_sits_at_the_floor():
    low = float(loudness_of(sine(100, 16000, 1.0))[4:-4].mean())
    mid = float(loudness_of(sine(1000, 16000, 1.0))[4:-4].mean())
    assert 17 < mid - low < 21  # the A-curve is -19.1 dB at 100 Hz
    silent = dsp.a_weighted_loudness(torch.zeros(2, 4000), 16000, 1024, 256)
    assert silent.shape == (2, 1 + 4000 // 256) and torch.all(silent == -80.0)


@pytest.mark.slow
@pytest.mark.parametrize("freq", [220.0, 440.0])
def test_pyin_finds_a_sine_within_5_cents_on_the_loudness_frames(freq):
    sr, hop = 16000, 256
    wav = sine(freq, sr, 0.3)
    f0, voiced_prob = dsp.f0_pyin(wav, sr, hop)
    frames = dsp.a_weighted_loudness(torch.from_numpy(wav), sr, 1024, hop).shape[-1]
    assert f0.shape == voiced_prob.shape == (frames,)
    voiced = f0 > 0
    assert voiced.mean() > 0.8
    assert np.abs(1200 * np.log2(f0[voiced] / freq)).max() < 5.0


# --- resampling ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("sr_from,sr_to", [(16000, 22050), (44100, 16000)])
def test_resample_scales_the_length_and_keeps_the_frequency(sr_from, sr_to):
    out = dsp.resample(sine(440, sr_from, 1.0), sr_from, sr_to)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    assert out.shape == (sr_to,)
    spectrum = np.abs(np.fft.rfft(out.numpy()))
    assert np.argmax(spectrum) == 440  # 1 s of audio: bin k is k Hz


def test_resample_keeps_batches_and_same_rate_is_a_copy():
    x = torch.randn(2, 1000)
    assert dsp.resample(x, 8000, 16000).shape == (2, 2000)
    assert torch.equal(dsp.resample(x, 8000, 8000), x)


# --- losses and metrics -------------------------------------------------------------------------------


def test_mrstft_loss_is_zero_for_identical_audio_and_grows_with_noise():
    torch.manual_seed(0)
    target = torch.from_numpy(np.stack([harmonic_tone(), harmonic_tone(seconds=0.5)[::-1].copy()]))
    loss = dsp.MultiResolutionSTFTLoss()
    assert float(loss(target, target)) == 0.0
    noise = torch.randn_like(target)
    small, large = float(loss(target + 0.01 * noise, target)), float(loss(target + 0.1 * noise, target))
    assert 0 < small < large
    assert dsp.mrstft_distance(target + 0.01 * noise, target) == pytest.approx(small, rel=1e-5)


def test_mrstft_loss_is_differentiable_even_at_zero_distance():
    loss = dsp.MultiResolutionSTFTLoss(fft_sizes=(512, 128), hop_sizes=(100, 32))
    target = torch.from_numpy(harmonic_tone())[None]
    pred = (target + 0.05 * torch.randn_like(target)).requires_grad_()
    loss(pred, target).backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    same = target.clone().requires_grad_()
    loss(same, target).backward()
    assert torch.isfinite(same.grad).all()


def test_mrstft_loss_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="shape"):
        dsp.MultiResolutionSTFTLoss()(torch.zeros(1, 4000), torch.zeros(1, 4001))


def test_mel_cepstral_distortion_is_zero_for_identical_audio_and_grows_with_noise():
    rng = np.random.default_rng(0)
    clean = harmonic_tone()
    noise = rng.standard_normal(len(clean)).astype(np.float32)
    assert dsp.mel_cepstral_distortion(clean, clean, 16000) == 0.0
    slightly = dsp.mel_cepstral_distortion(clean, clean + 0.003 * noise, 16000)
    very = dsp.mel_cepstral_distortion(clean, clean + 0.03 * noise, 16000)
    assert 0 < slightly < very


def test_mcd_formula_matches_a_hand_computation():
    # frame 1 differs by 1 in one coefficient, frame 2 by 3: (10 / ln 10) * sqrt(2) * (1 + 3) / 2
    ref, syn = np.array([[1.0, 2.0], [0.0, 0.0]]), np.array([[1.0, 1.0], [0.0, 3.0]])
    assert dsp.mel_cepstral_distance_db(ref, syn) == pytest.approx(2 * math.sqrt(2) * 10 / math.log(10))
    assert dsp.mel_cepstral_distance_db(ref, syn) == pytest.approx(12.2837, abs=1e-4)


def test_mel_cepstrum_describes_the_frame_spectrum_on_the_all_pass_warped_axis():
    # A short minimum-phase filter's impulse at a frame centre: its log spectrum is smooth, so 100
    # mel-cepstral coefficients describe it exactly: log|X(w)| = sum_m c~_m cos(m beta(w)), beta the
    # phase of the all-pass z~^-1 = (z^-1 - alpha) / (1 - alpha z^-1)
    n_fft, hop, alpha, order = 1024, 256, 0.455, 100
    wav = np.zeros(4 * n_fft)
    centre = 8 * hop
    wav[centre:centre + 3] = [1.0, 0.5, 0.25]
    cepstra = dsp.mel_cepstrum(wav, 22050, order, n_fft, hop, alpha)
    frame = np.blackman(n_fft) * wav[centre - n_fft // 2:centre + n_fft // 2]
    log_amplitude = np.log(np.abs(np.fft.rfft(frame)))
    w = np.linspace(0, np.pi, n_fft // 2 + 1)
    beta = w + 2 * np.arctan(alpha * np.sin(w) / (1 - alpha * np.cos(w)))
    rebuilt = np.cos(np.outer(beta, np.arange(order + 1))) @ cepstra[8]
    np.testing.assert_allclose(rebuilt, log_amplitude, atol=1e-6)
    # without warping it is the plain cepstrum: c0 the mean log amplitude
    plain = dsp.mel_cepstrum(wav, 22050, order, n_fft, hop, alpha=0.0)
    np.testing.assert_allclose(np.cos(np.outer(w, np.arange(order + 1))) @ plain[8], log_amplitude, atol=1e-6)


def test_mel_cepstral_distortion_leaves_out_energy_and_uses_the_usual_alpha():
    assert dsp.mel_cepstrum_alpha(16000) == pytest.approx(0.42)
    assert dsp.mel_cepstrum_alpha(22050) == pytest.approx(0.455)
    # a little noise keeps the spectrum above the analysis floor, as in any recording
    clean = harmonic_tone() + 1e-3 * np.random.default_rng(0).standard_normal(8000)
    c, c_louder = dsp.mel_cepstrum(clean, 16000), dsp.mel_cepstrum(2 * clean, 16000)
    np.testing.assert_allclose(c_louder[:, 0] - c[:, 0], math.log(2), atol=1e-4)  # energy: c0 only
    louder = dsp.mel_cepstral_distortion(clean, 2 * clean, 16000)
    duller = dsp.mel_cepstral_distortion(clean, np.convolve(clean, [0.5, 0.5], "same"), 16000)
    assert louder < 0.01 and duller > 1.0


def test_mel_cepstral_distortion_aligns_different_lengths_by_dtw():
    clean = harmonic_tone(seconds=0.5)
    delayed = np.concatenate([np.zeros(800, np.float32), clean])  # 50 ms of silence in front
    aligned = dsp.mel_cepstral_distortion(clean, delayed, 16000)
    mismatched = dsp.mel_cepstral_distortion(clean, harmonic_tone(f0=330.0), 16000)
    assert 0 < aligned < mismatched
    with pytest.raises(ValueError, match="DTW"):
        dsp.mel_cepstral_distortion(clean, delayed, 16000, use_dtw=False)


def _vowel(f0: float, sr: int, seconds: float) -> np.ndarray:
    """A sung vowel: harmonics of a vibrato f0 under two formant bumps (700 and 1,200 Hz)."""
    t = np.arange(round(seconds * sr)) / sr
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.02 * np.sin(2 * np.pi * 5 * t))) / sr
    x = sum((np.exp(-((k * f0 - 700) / 150) ** 2) + 0.6 * np.exp(-((k * f0 - 1200) / 200) ** 2) + 0.02)
            * np.sin(k * phase) for k in range(1, 60))
    return (0.3 * x / np.abs(x).max()).astype(np.float32)


@pytest.mark.parametrize("semitones", [12.0, -7.0])
def test_shift_pitch_moves_the_pitch_and_keeps_the_formants(semitones: float) -> None:
    sr = 22050
    x = _vowel(150.0, sr, 1.5)
    y = dsp.shift_pitch(x, sr, semitones)
    assert y.shape == x.shape and np.isfinite(y).all()

    def median_f0(a: np.ndarray) -> float:
        f0, voiced, _ = librosa.pyin(a, fmin=60, fmax=800, sr=sr, frame_length=2048, hop_length=256)
        return float(np.median(f0[voiced]))

    assert median_f0(y) / median_f0(x) == pytest.approx(2 ** (semitones / 12), rel=0.02)

    def envelope(a: np.ndarray) -> np.ndarray:
        return np.log(dsp.spectral_envelope(np.abs(librosa.stft(a, n_fft=1024, hop_length=256)), 22)).mean(axis=1)

    speech_band = slice(10, 140)  # 215-3,000 Hz
    chipmunk = librosa.effects.pitch_shift(x, sr=sr, n_steps=semitones)
    kept = np.abs(envelope(y) - envelope(x))[speech_band].mean()
    moved = np.abs(envelope(chipmunk) - envelope(x))[speech_band].mean()
    assert kept < 0.3 * moved
    assert np.array_equal(dsp.shift_pitch(x, sr, 0.0), x)
