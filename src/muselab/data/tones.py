"""Synthetic instrument tones (``builtin:tones``): training data for the audio models, made by muselab.

Four instruments with distinct timbres play single notes and short phrases (2-5 notes, legato or
detached) at random pitches and loudness:

- flute: few harmonics falling steeply, breath noise, a gentle delayed vibrato;
- clarinet: odd harmonics (a cylindrical bore), the even ones almost absent;
- bowed: a sawtooth-like spectrum (every harmonic, 1 / k), vibrato and high bow noise;
- brass: a spectrum that brightens with loudness (the harmonics' decay follows the envelope).

Each note has an ADSR envelope; every clip is labelled with its notes and its true f0 per frame. The
audio is rendered here with numpy, apart from `muselab.audio.synth`, so a DDSP model trained on it
is not trained on its own synthesiser's exact output. Everything is drawn from a seeded generator:
the same arguments give the same clips, and clip i depends only on (seed, i), not on how many clips
are made, so a larger set extends a smaller one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from muselab.core.errors import ConfigError
from muselab.data.split import hold_out

TONES_VERSION = 1  # bump when the generator changes, so fingerprints of the data change with it
DEFAULT_CLIPS = 200  # 200 x 4 s = 13 minutes of audio: enough for the default DDSP preset
TONES_DESCRIPTION = ("synthetic flute, clarinet, bowed and brass notes and short phrases, made by muselab "
                     "(f0 labels included)")

Note = tuple[float, float, float]  # (MIDI pitch, start in seconds, duration in seconds)


@dataclass
class ToneClip:
    """One generated clip, with what was played in it."""

    audio: np.ndarray  # float32 [T], peak <= 1
    instrument: str
    notes: list[Note]  # (MIDI pitch, start_s, duration_s), in order
    f0_hz: np.ndarray  # float32 [1 + T // hop]: the true f0 at sample i * hop (0 where no note sounds)
    sample_rate: int = 16000
    hop: int = 64


# --------------------------------------------------------------------------------------------------
# Instruments


# Each spectrum maps harmonic numbers k [K] and the envelope level [T] to amplitudes [K, 1] (fixed) or
# [K, T] (changing with the level); they are normalised to sum to one afterwards.


def _flute_spectrum(k: np.ndarray, level: np.ndarray) -> np.ndarray:
    return np.array([1.0, 0.4, 0.15, 0.07, 0.03, 0.015])[k - 1, None]


def _clarinet_spectrum(k: np.ndarray, level: np.ndarray) -> np.ndarray:
    return (np.where(k % 2 == 1, 1.0, 0.03) / k)[:, None]


def _bowed_spectrum(k: np.ndarray, level: np.ndarray) -> np.ndarray:
    return (1.0 / k)[:, None]


def _brass_spectrum(k: np.ndarray, level: np.ndarray) -> np.ndarray:
    # Each harmonic is `ratio` times the one below, from 0.25 when silent to 0.9 at full level (on a
    # square-root scale, as loudness is heard): louder is brighter. Repeated products build the powers
    # ratio ** (k - 1) cheaply.
    ratio = 0.25 + 0.65 * np.sqrt(np.clip(level, 0.0, 1.0))
    powers = np.empty((k.size, ratio.size))
    powers[0] = 1.0
    for i in range(1, k.size):
        np.multiply(powers[i - 1], ratio, out=powers[i])
    return powers


@dataclass(frozen=True)
class Instrument:
    name: str
    low: int  # MIDI range
    high: int
    n_harmonics: int
    spectrum: Callable[[np.ndarray, np.ndarray], np.ndarray]  # (k [K], level [T]) -> amplitudes [K, 1 or T]
    attack_s: tuple[float, float]
    vibrato_hz: float
    vibrato_semitones: float
    noise_level: float  # relative to the harmonic amplitude
    noise_band_hz: tuple[float, float]


INSTRUMENTS: dict[str, Instrument] = {
    "flute": Instrument("flute", 60, 84, 6, _flute_spectrum, (0.06, 0.12), 5.0, 0.25, 0.08, (1500.0, 6000.0)),
    "clarinet": Instrument("clarinet", 50, 79, 30, _clarinet_spectrum, (0.02, 0.05), 0.0, 0.0, 0.01,
                           (1000.0, 5000.0)),
    "bowed": Instrument("bowed", 48, 79, 40, _bowed_spectrum, (0.08, 0.15), 6.0, 0.18, 0.03, (2500.0, 7500.0)),
    "brass": Instrument("brass", 48, 74, 30, _brass_spectrum, (0.03, 0.07), 5.0, 0.08, 0.01, (800.0, 4000.0)),
}


def tone_instruments() -> list[str]:
    """Names of the built-in instruments."""
    return list(INSTRUMENTS)


# --------------------------------------------------------------------------------------------------
# Rendering


def _adsr(n: int, sample_rate: int, attack: float, decay: float, sustain: float, release: float) -> np.ndarray:
    """An envelope of n samples: up to 1, down to `sustain`, held, then released to 0 at the end."""
    if n == 0:
        return np.zeros(0)
    t = np.arange(n) / sample_rate
    end = n / sample_rate
    # Short notes squeeze the stages to fit.
    squeeze = min(1.0, 0.9 * end / (attack + decay + release))
    attack, decay, release = attack * squeeze, decay * squeeze, release * squeeze
    return np.interp(t, [0.0, attack, attack + decay, end - release, end], [0.0, 1.0, sustain, sustain, 0.0])


def render_notes(instrument: str, notes: Sequence[Note], seconds: float, *, legato: bool = False,
                 loudness: float | Sequence[float] = 0.5, sample_rate: int = 16000, hop: int = 64,
                 seed: int = 0) -> ToneClip:
    """Play notes (MIDI pitch, start_s, duration_s) on one instrument into a clip `seconds` long.

    `loudness` (linear peak level of the harmonic part, one for all notes or one per note) scales the
    envelope. Legato notes are held until the next one starts and glide into it over 30 ms, under one
    envelope with a slight dip at each new note. The seed draws the noise and the small random
    variations (attack, vibrato phase).
    """
    spec = _instrument(instrument)
    rng = np.random.default_rng(seed)
    n_samples = round(seconds * sample_rate)
    levels = np.broadcast_to(np.asarray(loudness, dtype=np.float64), (len(notes),))
    midi = np.zeros(n_samples)
    env = np.zeros(n_samples)
    sounding = np.zeros(n_samples, dtype=bool)
    spans = [(max(0, round(start * sample_rate)), min(n_samples, round((start + dur) * sample_rate)))
             for _, start, dur in notes]
    if legato:
        spans = [(a, max(a, spans[i + 1][0]) if i + 1 < len(spans) else b) for i, (a, b) in enumerate(spans)]
    for (pitch, _, _), (a, b), level in zip(notes, spans, levels, strict=True):
        midi[a:b] = pitch
        sounding[a:b] = True
        if not legato:
            env[a:b] = level * _note_envelope(b - a, sample_rate, spec, rng)
    if legato and notes:
        a, b = spans[0][0], spans[-1][1]
        # One breath for the phrase; each note's level, with a 40 ms dip that re-articulates it.
        note_level = np.zeros(n_samples)
        for i, ((na, nb), level) in enumerate(zip(spans, levels, strict=True)):
            note_level[na:nb] = level
            dip = min(round(0.04 * sample_rate), nb - na)
            if i and dip:
                note_level[na:na + dip] *= 1.0 - 0.25 * np.sin(np.pi * np.arange(dip) / dip)
        level_curve = _smooth(note_level[a:b], sample_rate, 0.01)
        env[a:b] = _note_envelope(b - a, sample_rate, spec, rng) * level_curve
        midi[a:b] = _smooth(midi[a:b], sample_rate, 0.03)  # portamento between the notes
    f0 = _midi_to_hz(midi + _vibrato(spans, n_samples, sample_rate, spec, rng, legato)) * sounding

    audio = _harmonics(f0, env, spec, sample_rate) + _noise(env, spec, sample_rate, rng)
    peak = float(np.max(np.abs(audio))) if n_samples else 0.0
    if peak > 1.0:
        audio /= peak
    frames = np.minimum(np.arange(1 + n_samples // hop) * hop, max(n_samples - 1, 0))
    labels = f0[frames] if n_samples else np.zeros(1)
    return ToneClip(audio=audio.astype(np.float32), instrument=instrument,
                    notes=[(float(p), float(s), float(d)) for p, s, d in notes],
                    f0_hz=labels.astype(np.float32), sample_rate=sample_rate, hop=hop)


def _instrument(name: str) -> Instrument:
    if name not in INSTRUMENTS:
        raise ConfigError(f"unknown tones instrument {name!r}: choose from {', '.join(INSTRUMENTS)}")
    return INSTRUMENTS[name]


def _midi_to_hz(midi: np.ndarray) -> np.ndarray:
    return 440.0 * np.exp((midi - 69.0) * (math.log(2.0) / 12.0))


def _note_envelope(n: int, sample_rate: int, spec: Instrument, rng: np.random.Generator) -> np.ndarray:
    attack = rng.uniform(*spec.attack_s)
    return _adsr(n, sample_rate, attack, decay=rng.uniform(0.05, 0.15), sustain=rng.uniform(0.6, 0.9),
                 release=rng.uniform(0.05, 0.2))


# Filtering here uses numpy's FFT rather than scipy.signal, whose import alone costs about a second.


def _smooth(x: np.ndarray, sample_rate: int, seconds: float) -> np.ndarray:
    """Moving average with a Hann kernel `seconds` long; the ends are held, not faded to zero."""
    width = max(3, round(seconds * sample_rate) | 1)
    kernel = np.hanning(width)
    kernel /= kernel.sum()
    padded = np.pad(x, width // 2, mode="edge")
    n_fft = 1 << (padded.size + width - 2).bit_length()
    smoothed = np.fft.irfft(np.fft.rfft(padded, n_fft) * np.fft.rfft(kernel, n_fft), n_fft)
    return smoothed[width - 1:padded.size]


def _vibrato(spans: list[tuple[int, int]], n_samples: int, sample_rate: int, spec: Instrument,
             rng: np.random.Generator, legato: bool) -> np.ndarray:
    """Pitch deviation in semitones: a sine that fades in after each note's (or the phrase's) onset."""
    out = np.zeros(n_samples)
    if spec.vibrato_semitones == 0.0 or not spans:
        return out
    groups = [(spans[0][0], spans[-1][1])] if legato else spans
    for a, b in groups:
        t = np.arange(b - a) / sample_rate
        rate = spec.vibrato_hz * rng.uniform(0.9, 1.1)
        fade = np.clip((t - 0.15) / 0.3, 0.0, 1.0)  # vibrato starts 0.15 s into the note
        out[a:b] = spec.vibrato_semitones * fade * np.sin(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi))
    return out


def _harmonics(f0: np.ndarray, env: np.ndarray, spec: Instrument, sample_rate: int) -> np.ndarray:
    """sum_k a_k cos(k theta) times the envelope, theta the running sum of 2 pi f0 / sr (float64)."""
    audio = np.zeros(f0.shape[0])
    active = np.flatnonzero((env > 0) & (f0 > 0))
    if active.size == 0:
        return audio
    phase = np.cumsum(2 * np.pi * f0 / sample_rate)[active]
    # Only harmonics below Nyquist at the clip's highest pitch: nothing aliases.
    top = max(1, min(spec.n_harmonics, math.ceil(sample_rate / 2 / f0[active].max()) - 1))
    level = env[active]
    amplitudes = spec.spectrum(np.arange(1, top + 1), level)
    amplitudes = amplitudes / amplitudes.sum(axis=0, keepdims=True)  # the envelope is the harmonics' peak
    # Clenshaw's recurrence sums the cosine series with one cosine per sample instead of one per
    # harmonic: b_k = a_k + 2 cos(theta) b_{k+1} - b_{k+2}, and the sum is cos(theta) b_1 - b_2.
    cos_theta = np.cos(phase)
    two_cos = 2.0 * cos_theta
    b1, b2, b = np.zeros(active.size), np.zeros(active.size), np.empty(active.size)
    for row in amplitudes[::-1]:
        np.multiply(two_cos, b1, out=b)
        b -= b2
        b += row
        b2, b1, b = b1, b, b2
    audio[active] = (cos_theta * b1 - b2) * level
    return audio


def _noise(env: np.ndarray, spec: Instrument, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Band-limited noise (white noise with the spectrum outside the band zeroed) under the envelope."""
    n = env.shape[0]
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / sample_rate)
    low, high = spec.noise_band_hz
    spectrum[(freqs < low) | (freqs > min(high, 0.45 * sample_rate))] = 0.0
    band = np.fft.irfft(spectrum, n)
    # Scaled to a standard deviation of 1/3, so peaks stay near 1 before the level.
    return spec.noise_level * env * band / max(3.0 * float(np.std(band)), 1e-9)


# --------------------------------------------------------------------------------------------------
# The data set


def make_tones(n_clips: int = DEFAULT_CLIPS, seconds: float = 4.0, sample_rate: int = 16000, hop: int = 64,
               seed: int = 0, instruments: Sequence[str] | None = None) -> list[ToneClip]:
    """`n_clips` clips of `seconds` each, the instruments taking turns, at any sample rate (16 kHz for
    DDSP, 22,050 Hz for the vocoder). About a third are single notes, the rest phrases of 2-5 notes,
    half legato; pitches lie in each instrument's range within MIDI 48-84, levels from -24 to -1 dBFS."""
    names = list(instruments) if instruments is not None else tone_instruments()
    for name in names:
        _instrument(name)
    if not names:
        raise ConfigError("no tones instruments chosen: name at least one of " + ", ".join(INSTRUMENTS))
    if n_clips < 1:
        raise ConfigError(f"n_clips must be at least 1 (got {n_clips})")
    if seconds < 0.5:
        raise ConfigError(f"tones clips must be at least 0.5 s long (got {seconds})")
    if sample_rate < 8000 or hop < 1:
        raise ConfigError(f"tones need a sample rate of at least 8000 Hz and a hop of at least 1 "
                          f"(got {sample_rate} Hz, hop {hop})")
    return [_make_clip(i, names[i % len(names)], seconds, sample_rate, hop, seed) for i in range(n_clips)]


def _make_clip(index: int, instrument: str, seconds: float, sample_rate: int, hop: int, seed: int) -> ToneClip:
    rng = np.random.default_rng([seed, index])
    spec = INSTRUMENTS[instrument]
    n_notes = int(rng.choice([1, 1, 2, 3, 4, 5]))
    legato = n_notes > 1 and rng.random() < 0.5
    pitches = [int(rng.integers(spec.low, spec.high + 1))]
    for _ in range(n_notes - 1):
        step = int(rng.choice([-5, -4, -3, -2, -1, 1, 2, 3, 4, 5]))
        pitch = pitches[-1] + step
        pitches.append(pitch if spec.low <= pitch <= spec.high else pitches[-1] - step)
    if n_notes == 1:
        durations = [rng.uniform(0.8, 3.0)]
    else:
        durations = list(rng.uniform(0.25, 1.0, size=n_notes))
    gaps = [0.0] * (n_notes - 1) if legato else list(rng.uniform(0.05, 0.3, size=n_notes - 1))
    start = rng.uniform(0.05, 0.3)
    room = seconds - start - 0.1  # keep a moment of silence at the end
    squeeze = min(1.0, room / (sum(durations) + sum(gaps)))
    notes: list[Note] = []
    for i, (pitch, duration) in enumerate(zip(pitches, durations, strict=True)):
        notes.append((float(pitch), round(start, 4), round(duration * squeeze, 4)))
        start += duration * squeeze + (gaps[i] * squeeze if i < len(gaps) else 0.0)
    if legato:  # rounding must not open gaps between legato notes
        notes = [(p, s, (notes[i + 1][1] - s) if i + 1 < len(notes) else d) for i, (p, s, d) in enumerate(notes)]
    phrase_db = rng.uniform(-24.0, -1.0)
    loudness = 10.0 ** ((phrase_db + rng.uniform(-3.0, 3.0, size=n_notes).clip(max=-phrase_db)) / 20.0)
    return render_notes(instrument, notes, seconds, legato=legato, loudness=loudness, sample_rate=sample_rate,
                        hop=hop, seed=int(rng.integers(2**31)))


def tones_split(clips: Sequence[ToneClip], test_share: float = 0.1) -> tuple[list[ToneClip], list[ToneClip]]:
    """(train, test): `round(share * count)` of each instrument's clips are held out, at least one.

    Each clip is keyed by its instrument and position among that instrument's clips and placed by the
    shared stable-hash rule (`muselab.data.split.hold_out`). An instrument with two or more clips
    appears in both parts; one with a single clip goes to training only.
    """
    if not 0.0 < test_share < 1.0:
        raise ConfigError(f"test_share must be between 0 and 1 (got {test_share})")
    rows: dict[str, list[int]] = {}
    for i, clip in enumerate(clips):
        rows.setdefault(clip.instrument, []).append(i)
    held = [False] * len(clips)
    for instrument, members in rows.items():
        keys = [f"tones:{instrument}:{j}" for j in range(len(members))]
        for i, is_held in zip(members, hold_out(keys, test_share), strict=True):
            held[i] = is_held
    return ([c for c, h in zip(clips, held, strict=True) if not h],
            [c for c, h in zip(clips, held, strict=True) if h])
