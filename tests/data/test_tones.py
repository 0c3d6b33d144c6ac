"""builtin:tones: reproducible, labelled, instruments that sound different, a fair held-out split."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from helpers import error_message
from muselab.core.errors import ConfigError
from muselab.data.tones import make_tones, render_notes, tone_instruments, tones_split


@pytest.fixture(scope="module")
def clips():
    return make_tones(n_clips=16, seconds=2.0)


def test_same_arguments_give_the_same_clips(clips):
    again = make_tones(n_clips=16, seconds=2.0)
    for a, b in zip(clips, again, strict=True):
        assert np.array_equal(a.audio, b.audio) and np.array_equal(a.f0_hz, b.f0_hz)
        assert a.notes == b.notes and a.instrument == b.instrument
    other = make_tones(n_clips=4, seconds=2.0, seed=1)
    assert not np.array_equal(other[0].audio, clips[0].audio)


def test_a_larger_set_extends_a_smaller_one(clips):
    fewer = make_tones(n_clips=5, seconds=2.0)
    assert all(np.array_equal(a.audio, b.audio) for a, b in zip(fewer, clips[:5], strict=True))


def test_count_length_level_and_labels(clips):
    assert len(clips) == 16
    assert Counter(c.instrument for c in clips) == {name: 4 for name in tone_instruments()}
    for clip in clips:
        assert clip.audio.dtype == np.float32 and clip.audio.shape == (32000,)
        assert 0.01 < np.abs(clip.audio).max() <= 1.0
        assert clip.f0_hz.shape == (1 + 32000 // 64,)
        assert 1 <= len(clip.notes) <= 5
        for pitch, start, duration in clip.notes:
            assert 48 <= pitch <= 84 and start >= 0 and start + duration <= 2.0
        # f0 is labelled exactly where a note sounds.
        times = np.arange(clip.f0_hz.size) * 64 / 16000
        inside = np.zeros(times.size, dtype=bool)
        for _, start, duration in clip.notes:
            inside |= (times >= start + 0.001) & (times < start + duration - 0.001)
        assert (clip.f0_hz[inside] > 0).all()
        edges = np.zeros(times.size, dtype=bool)
        for _, start, duration in clip.notes:
            edges |= np.abs(times - start) < 0.002
            edges |= np.abs(times - start - duration) < 0.002
        assert (clip.f0_hz[~inside & ~edges] == 0).all()
    assert any(len(c.notes) == 1 for c in clips) and any(len(c.notes) > 1 for c in clips)


def peak_frequency(audio: np.ndarray, sample_rate: int) -> float:
    """The strongest spectral peak, refined by parabolic interpolation of log magnitudes."""
    n_fft = 8 * audio.size
    spectrum = np.log(np.abs(np.fft.rfft(audio * np.hanning(audio.size), n=n_fft)) + 1e-12)
    i = int(np.argmax(spectrum))
    shift = 0.5 * (spectrum[i - 1] - spectrum[i + 1]) / (spectrum[i - 1] - 2 * spectrum[i] + spectrum[i + 1])
    return (i + shift) * sample_rate / n_fft


@pytest.mark.parametrize("instrument", tone_instruments())
def test_f0_labels_agree_with_the_spectrum_of_a_sustained_note(instrument):
    clip = render_notes(instrument, [(62.0, 0.1, 1.8)], seconds=2.0, loudness=0.5, seed=3)
    a, b = round(0.6 * 16000), round(1.6 * 16000)  # in the sustain, about five vibrato cycles
    label = float(np.mean(clip.f0_hz[a // 64:b // 64]))
    assert abs(label / 293.66 - 1) < 0.01  # MIDI 62 is D4
    assert abs(peak_frequency(clip.audio[a:b], 16000) / label - 1) < 0.005


def test_f0_labels_of_generated_clips_match_their_spectra(clips):
    checked = 0
    for clip in clips:
        for _, start, duration in clip.notes:
            if duration < 0.6:
                continue
            a, b = round((start + 0.3) * 16000), round((start + duration - 0.2) * 16000)
            label = float(np.median(clip.f0_hz[a // 64:b // 64]))
            assert abs(peak_frequency(clip.audio[a:b], 16000) / label - 1) < 0.02
            checked += 1
    assert checked >= 4


def harmonic_levels(audio: np.ndarray, f0: float, n: int, sample_rate: int = 16000) -> np.ndarray:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(audio.size)))
    freqs = np.fft.rfftfreq(audio.size, 1 / sample_rate)
    return np.array([spectrum[np.abs(freqs - k * f0) < 0.3 * f0].max() for k in range(1, n + 1)])


def centroid(audio: np.ndarray, sample_rate: int = 16000) -> float:
    power = np.abs(np.fft.rfft(audio * np.hanning(audio.size))) ** 2
    return float((np.fft.rfftfreq(audio.size, 1 / sample_rate) * power).sum() / power.sum())


def test_instruments_sound_different():
    notes = [(57.0, 0.05, 1.0)]  # A3, 220 Hz
    sustain = slice(8000, 14000)
    audio = {name: render_notes(name, notes, 1.1, loudness=0.5, seed=0).audio[sustain]
             for name in tone_instruments()}
    clarinet = harmonic_levels(audio["clarinet"], 220.0, 8)
    bowed = harmonic_levels(audio["bowed"], 220.0, 8)
    even_to_odd = lambda h: h[1::2].sum() / h[0::2].sum()  # noqa: E731
    assert even_to_odd(clarinet) < 0.1 < 0.4 < even_to_odd(bowed)
    assert centroid(audio["flute"]) < centroid(audio["bowed"])
    soft = render_notes("brass", notes, 1.1, loudness=0.1, seed=0).audio[sustain]
    loud = render_notes("brass", notes, 1.1, loudness=0.9, seed=0).audio[sustain]
    assert centroid(loud) > 1.5 * centroid(soft)


def test_other_sample_rates():
    clip = make_tones(n_clips=1, seconds=1.0, sample_rate=22050, hop=256)[0]
    assert clip.audio.shape == (22050,) and clip.f0_hz.shape == (1 + 22050 // 256,)
    assert clip.sample_rate == 22050 and clip.hop == 256
    assert np.abs(clip.audio).max() <= 1.0


def test_split_is_disjoint_deterministic_and_covers_every_instrument():
    clips = make_tones(n_clips=24, seconds=0.5)
    train, test = tones_split(clips, test_share=0.25)
    assert len(train) + len(test) == 24 and len(test) == 8  # round(6 * 0.25) of each instrument
    assert not {id(c) for c in train} & {id(c) for c in test}
    assert {c.instrument for c in train} == {c.instrument for c in test} == set(tone_instruments())
    again_train, again_test = tones_split(clips, test_share=0.25)
    assert [id(c) for c in again_test] == [id(c) for c in test]
    # Few clips still test every instrument.
    small_train, small_test = tones_split(clips[:8], test_share=0.1)
    assert {c.instrument for c in small_test} == {c.instrument for c in small_train} == set(tone_instruments())


def test_bad_requests_are_one_line_errors():
    with pytest.raises(ConfigError) as err:
        make_tones(n_clips=2, instruments=["kazoo"])
    assert "kazoo" in error_message(err) and "flute" in error_message(err)
    with pytest.raises(ConfigError) as err:
        make_tones(n_clips=0)
    assert "n_clips" in error_message(err)
    with pytest.raises(ConfigError) as err:
        tones_split([], test_share=1.5)
    assert "test_share" in error_message(err)
