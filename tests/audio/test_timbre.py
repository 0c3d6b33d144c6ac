"""Timbre measures for evaluating instruments: the MFCC-DTW distance and the average-spectrum baseline."""

from __future__ import annotations

import numpy as np
import pytest

from muselab.audio.timbre import AverageSpectrum, mfcc_dtw_distance
from muselab.data.audio_features import ClipFeatures

SR, HOP = 16000, 64


def _tone(amplitudes: list[float], f0: float = 220.0, seconds: float = 1.0, noise: float = 0.0,
          seed: int = 0) -> np.ndarray:
    t = np.arange(int(SR * seconds)) / SR
    audio = sum(a * np.sin(2 * np.pi * f0 * k * t) for k, a in enumerate(amplitudes, start=1))
    return (audio + noise * np.random.default_rng(seed).uniform(-1, 1, t.size)).astype(np.float32)


def _clip(audio: np.ndarray, f0: float) -> ClipFeatures:
    n = len(audio) // HOP
    return ClipFeatures("c", audio[:n * HOP], np.full(n, f0, np.float32), np.ones(n, bool),
                        np.full(n, -20.0, np.float32), np.zeros((n, 4), np.float32))


def test_mfcc_dtw_distance_is_zero_for_the_same_sound_and_larger_for_another_timbre():
    bright, dull = _tone([0.3, 0.2, 0.15, 0.1, 0.08]), _tone([0.5])
    assert mfcc_dtw_distance(bright, bright, SR) == pytest.approx(0.0, abs=1e-6)
    shifted = np.concatenate([np.zeros(800, np.float32), bright[:-800]])  # 50 ms late
    assert mfcc_dtw_distance(shifted, bright, SR) < 0.2 * mfcc_dtw_distance(dull, bright, SR)


def test_average_spectrum_recovers_the_harmonic_shares_and_the_noise():
    shares = [0.5, 0.25, 0.15, 0.1]
    clips = [_clip(_tone(shares, f0, noise=0.01, seed=i), f0) for i, f0 in enumerate((180.0, 220.0, 260.0))]
    quiet = [_clip(_tone(shares, f0, seed=i), f0) for i, f0 in enumerate((180.0, 220.0, 260.0))]
    model = AverageSpectrum.fit(clips, 8, 17, SR, HOP)
    assert model.harmonics[:4] == pytest.approx(shares, abs=0.03)
    assert model.harmonics[4:].sum() < 0.05
    assert model.noise[2:-2].mean() > 5 * AverageSpectrum.fit(quiet, 8, 17, SR, HOP).noise[2:-2].mean()
    # Played back at a clip's pitch and loudness it sounds like that clip, not like a sine
    audio = model.render(clips[1].f0_hz, clips[1].loudness_db)
    assert audio.shape == clips[1].audio.shape
    assert mfcc_dtw_distance(audio, clips[1].audio, SR) < mfcc_dtw_distance(_tone([0.5]), clips[1].audio, SR)
