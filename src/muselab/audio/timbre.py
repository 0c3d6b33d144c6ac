"""Timbre measures for evaluating an instrument model, apart from its training loss.

- `mfcc_dtw_distance`: how far apart two recordings' timbres are, as the mean Euclidean distance between
  their MFCC frames (c1..c19, c0 left out: it is the level, not the colour) along the DTW path that best
  aligns them (librosa's MFCC and DTW, not muselab's own features or loss).
- `AverageSpectrum`: a baseline instrument that knows the training set only on average: the mean share
  of each harmonic over voiced frames, the mean noise level per band relative to the harmonics, and how
  loud the harmonics are at each loudness. It plays any f0 and loudness curve through muselab's own
  synthesiser, like a DDSP model, but with one fixed spectrum instead of one predicted per frame.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from muselab.audio.synth import filtered_noise, harmonic_synth

MFCC_N_FFT, MFCC_HOP, MFCC_COEFFS = 1024, 256, 20
ANALYSIS_N_FFT = 2048  # 128 ms at 16 kHz: harmonics of a 60 Hz note are 7.7 bins apart
ANALYSIS_STRIDE = 4  # analyse every 4th control frame (16 ms at hop 64)
CLEAR_BINS = 3.0  # a bin this far from every harmonic counts as noise (a Hann main lobe spans +-2 bins)
LOUDNESS_BIN_DB = 2.0


def _mel_power(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    import librosa

    return librosa.feature.melspectrogram(y=np.asarray(audio, dtype=np.float32), sr=sample_rate, n_fft=MFCC_N_FFT,
                                          hop_length=MFCC_HOP)


def mfcc_frames(mel_power: np.ndarray, floor: float) -> np.ndarray:
    """MFCCs c1..c19 [19, frames] of a mel power spectrogram, in dB above `floor` (librosa's DCT)."""
    import librosa

    return librosa.feature.mfcc(S=10.0 * np.log10(np.maximum(mel_power, floor)), n_mfcc=MFCC_COEFFS)[1:]


def mfcc_dtw_distance(audio: np.ndarray, reference: np.ndarray, sample_rate: int) -> float:
    """Mean Euclidean MFCC distance (c1..c19) between `audio` and `reference` along their DTW alignment.

    Both log mel spectra share one floor, 80 dB below the reference's loudest band: what is inaudible
    next to the reference reads as the same silence in both, whatever the two recordings' own peaks."""
    import librosa

    mine, theirs = _mel_power(audio, sample_rate), _mel_power(reference, sample_rate)
    floor = max(float(theirs.max()), 1e-20) * 1e-8
    cost, path = librosa.sequence.dtw(X=mfcc_frames(mine, floor), Y=mfcc_frames(theirs, floor), metric="euclidean")
    return float(cost[-1, -1] / len(path))


def _frames(audio: np.ndarray, hop: int, n_frames: int) -> np.ndarray:
    """Hann-windowed analysis frames [n, ANALYSIS_N_FFT] centred on control frames 0, stride, 2 stride, ..."""
    half = ANALYSIS_N_FFT // 2
    padded = np.pad(np.asarray(audio, dtype=np.float64), (half, half + ANALYSIS_N_FFT))
    starts = np.arange(0, n_frames, ANALYSIS_STRIDE) * hop
    index = starts[:, None] + np.arange(ANALYSIS_N_FFT)[None, :]
    return padded[index] * np.hanning(ANALYSIS_N_FFT + 1)[:-1]


@dataclass
class AverageSpectrum:
    """The training set's average harmonic spectrum and noise, played at any pitch and loudness."""

    harmonics: np.ndarray  # [K] mean share of each harmonic (sums to one)
    noise: np.ndarray  # [M] mean noise band magnitude per unit of harmonic amplitude
    loudness_db: np.ndarray  # [L] loudness bin centres
    amplitude: np.ndarray  # [L] median harmonic amplitude (sum over harmonics) in each loudness bin
    sample_rate: int
    hop: int

    @classmethod
    def fit(cls, clips: Sequence, n_harmonics: int, n_noise_bands: int, sample_rate: int,
            hop: int) -> AverageSpectrum:
        """Measure `clips` (ClipFeatures: audio, f0_hz, voiced, loudness_db): harmonic amplitudes are the
        spectrum's peaks near k * f0; noise is the median magnitude of the bins clear of every harmonic,
        per band, calibrated by analysing filtered_noise with flat unit bands the same way."""
        bin_hz = sample_rate / ANALYSIS_N_FFT
        window_gain = np.hanning(ANALYSIS_N_FFT + 1)[:-1].sum() / 2  # a sine of amplitude A peaks at A * this
        band_of_bin = np.rint(np.arange(ANALYSIS_N_FFT // 2 + 1) * bin_hz / (sample_rate / 2)
                              * (n_noise_bands - 1)).astype(int)
        k = np.arange(1, n_harmonics + 1)
        shares, noise_rel, amps, louds = [], [], [], []
        for clip in clips:
            spectra = np.abs(np.fft.rfft(_frames(clip.audio, hop, clip.n_frames), axis=1))
            f0 = clip.f0_hz[::ANALYSIS_STRIDE].astype(np.float64)
            voiced = clip.voiced[::ANALYSIS_STRIDE]
            centre = k[None, :] * f0[:, None] / bin_hz  # [n, K] fractional bins
            below = k[None, :] * f0[:, None] < sample_rate / 2
            peaks = np.zeros(centre.shape)
            for offset in (-1, 0, 1):
                cols = np.clip(np.rint(centre).astype(int) + offset, 0, spectra.shape[1] - 1)
                peaks = np.maximum(peaks, np.take_along_axis(spectra, cols, axis=1))
            peaks = np.where(below, peaks / window_gain, 0.0)
            total = peaks.sum(axis=1)
            amps.append(total)
            louds.append(clip.loudness_db[::ANALYSIS_STRIDE])
            use = voiced & (total > 0)
            shares.append(peaks[use] / total[use, None])
            noise_rel.append(_noise_bands(spectra[use], f0[use] / bin_hz, band_of_bin, n_noise_bands)
                             / total[use, None])
        shares_all, noise_all = np.concatenate(shares), np.concatenate(noise_rel)
        if not len(shares_all):
            raise ValueError("no voiced frames to measure the average spectrum on")
        calibration = _noise_calibration(band_of_bin, n_noise_bands, hop)
        harmonics = shares_all.mean(axis=0)
        measured = np.isfinite(noise_all).any(axis=0)  # bands with no clear bin anywhere (0 Hz) stay silent
        noise = np.zeros(n_noise_bands)
        noise[measured] = np.nanmean(noise_all[:, measured], axis=0) / calibration[measured]
        loud, amp = np.concatenate(louds), np.concatenate(amps)
        edges = np.arange(np.floor(loud.min()), loud.max() + LOUDNESS_BIN_DB, LOUDNESS_BIN_DB)
        which = np.digitize(loud, edges)
        centres = [(edges[b - 1] + LOUDNESS_BIN_DB / 2, np.median(amp[which == b])) for b in np.unique(which)]
        table = np.array(centres)
        # Louder means more amplitude: keep the table monotonic against noisy sparse bins
        return cls(harmonics / harmonics.sum(), noise, table[:, 0], np.maximum.accumulate(table[:, 1]),
                   sample_rate, hop)

    def render(self, f0_hz: np.ndarray, loudness_db: np.ndarray, seed: int = 0) -> np.ndarray:
        """Audio [F * hop] for per-frame f0 (Hz) and loudness (dB) curves."""
        n_frames = len(f0_hz)
        amplitude = torch.from_numpy(np.interp(loudness_db, self.loudness_db, self.amplitude)).float()[None]
        distribution = torch.from_numpy(self.harmonics).float().expand(1, n_frames, -1)
        f0 = torch.from_numpy(np.asarray(f0_hz, dtype=np.float32))[None]
        n_samples = n_frames * self.hop
        harmonic = harmonic_synth(f0, amplitude, distribution, self.sample_rate, n_samples)
        bands = amplitude[..., None] * torch.from_numpy(self.noise).float()
        generator = torch.Generator().manual_seed(seed)
        noise = filtered_noise(bands, n_samples, self.hop, generator=generator)
        return (harmonic + noise)[0].numpy()


def _noise_bands(spectra: np.ndarray, f0_bins: np.ndarray, band_of_bin: np.ndarray, n_bands: int) -> np.ndarray:
    """[n, bands] median magnitude per band of the bins at least CLEAR_BINS from every harmonic of each
    frame (NaN where a band has none)."""
    position = np.arange(spectra.shape[1])[None, :] / np.maximum(f0_bins, 1e-6)[:, None]
    distance = np.abs(position - np.rint(position)) * f0_bins[:, None]
    clear = np.where((distance >= CLEAR_BINS) & (position > 0.5), spectra, np.nan)
    out = np.full((len(spectra), n_bands), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN bands stay NaN
        for band in range(n_bands):
            out[:, band] = np.nanmedian(clear[:, band_of_bin == band], axis=1)
    return out


def _noise_calibration(band_of_bin: np.ndarray, n_bands: int, hop: int) -> np.ndarray:
    """Median analysis magnitude per band of filtered_noise with all bands at 1 (its noise is uniform in
    [-1, 1)): the factor from a measured noise floor to band magnitudes."""
    n_frames = 256 * ANALYSIS_STRIDE
    ones = torch.ones(1, n_frames, n_bands)
    audio = filtered_noise(ones, n_frames * hop, hop, generator=torch.Generator().manual_seed(0))[0].numpy()
    spectra = np.abs(np.fft.rfft(_frames(audio, hop, n_frames), axis=1))
    out = np.array([np.median(spectra[:, band_of_bin == band]) if (band_of_bin == band).any() else np.nan
                    for band in range(n_bands)])
    return np.where(np.isfinite(out) & (out > 0), out, np.nanmedian(out))
