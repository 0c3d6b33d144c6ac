"""Learned phoneme durations for recordings without phone times: monotonic alignment search (MAS).

Glow-TTS (Kim et al. 2020) aligns phonemes to mel frames by dynamic programming: each phoneme i is a
Gaussian over mel frames, and the alignment is the monotonic path (frames in order, every frame to one
phoneme, phonemes in order, each at least one frame, the first phoneme first and the last one last) of
highest total log-likelihood. The number of frames the path gives a phoneme is its duration.

Here the Gaussians are a table: one mean and one diagonal variance per speaker and phoneme, over the
log-mel normalised per band. They are fitted by hard EM (Viterbi training, as speech recognisers have
long been trained from a "flat start"): the durations start uniform (every phoneme of an utterance
equally long), each round fits the table to the frames the current durations give each phoneme and
then realigns every utterance with MAS. On builtin:speech this recovers flite's own phone boundaries
to about one mel frame (12 ms) on average after eight rounds (`tests/audio/test_tts_align.py` checks
the search itself on a synthetic example).

The alignment is made once, before training, and cached; the acoustic model then trains on the
durations as it does on flite's. (Searching inside the training loop, over the encoder's outputs as
Glow-TTS does, was tried first: on this 2-core CPU a few hundred steps left the boundaries 8 frames
off, no better than a diagonal guess, where the table converges in seconds.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

ALIGN_VERSION = 1  # bump when learned durations would come out differently
VARIANCE_FLOOR = 0.05  # of the per-band normalised log-mel: keeps silent phonemes' Gaussians from collapsing
MIN_FRAMES_PER_GAUSSIAN = 5  # fewer frames than this: the phoneme uses every speaker's statistics


def monotonic_alignment_search(log_p: torch.Tensor | np.ndarray, n_symbols: Sequence[int] | np.ndarray,
                               n_frames: Sequence[int] | np.ndarray) -> np.ndarray:
    """Durations int64 [B, N] of the best monotonic path through `log_p` [B, N, T] (symbol i, frame j):
    every frame goes to one symbol, symbols in order, each symbol at least one frame, from (0, 0) to
    (N_b - 1, T_b - 1); padding beyond an item's lengths is ignored. Needs T_b >= N_b. Vectorised over
    the batch: one pass forward and one back over the frames."""
    scores = log_p.detach().float().cpu().numpy() if isinstance(log_p, torch.Tensor) else np.asarray(log_p)
    n_len = np.asarray(n_symbols, dtype=np.int64)
    t_len = np.asarray(n_frames, dtype=np.int64)
    if (t_len < n_len).any():
        raise ValueError("monotonic alignment needs at least as many frames as symbols")
    batch, n_max, t_max = scores.shape
    inside = ((np.arange(n_max)[None, :, None] < n_len[:, None, None])
              & (np.arange(t_max)[None, None, :] < t_len[:, None, None]))
    value = np.where(inside, scores, -np.inf).transpose(2, 0, 1).copy()  # [T, B, N]
    best = np.full_like(value, -np.inf)  # best[j, b, i]: the best path whose frame j is on symbol i
    best[0, :, 0] = value[0, :, 0]
    blocked = np.full((batch, 1), -np.inf, dtype=value.dtype)
    for j in range(1, t_max):
        previous = best[j - 1]
        best[j] = value[j] + np.maximum(previous, np.concatenate([blocked, previous[:, :-1]], axis=1))
    items = np.arange(batch)
    index = n_len - 1
    durations = np.zeros((batch, n_max), dtype=np.int64)
    for j in range(t_max - 1, -1, -1):
        active = j < t_len
        durations[items[active], index[active]] += 1
        if j == 0:
            break
        stay = best[j - 1, items, index]
        down = best[j - 1, items, np.maximum(index - 1, 0)]
        index = index - (active & (index > 0) & ((index == j) | (stay < down)))
    return durations


def uniform_durations(n_symbols: int, n_frames: int) -> np.ndarray:
    """Every symbol about equally long, each at least one frame (the flat start)."""
    ends = np.round(np.linspace(0, n_frames, n_symbols + 1)).astype(np.int64)
    return np.diff(ends)


class GaussianTable:
    """One diagonal Gaussian per (speaker, symbol) over per-band normalised log-mel frames."""

    def __init__(self, n_speakers: int, n_symbols: int, n_mels: int) -> None:
        self.mean = np.zeros((n_speakers, n_symbols, n_mels))
        self.var = np.ones((n_speakers, n_symbols, n_mels))

    def fit(self, ids: list[np.ndarray], speakers: np.ndarray, mels: list[np.ndarray],
            durations: list[np.ndarray]) -> None:
        """Means and variances of the frames the durations give each (speaker, symbol)."""
        n_speakers, n_symbols, n_mels = self.mean.shape
        total = np.zeros((n_speakers * n_symbols, n_mels))
        square = np.zeros_like(total)
        count = np.zeros(n_speakers * n_symbols)
        for symbols, speaker, mel, frames in zip(ids, speakers, mels, durations, strict=True):
            owner = np.repeat(symbols, frames) + speaker * n_symbols
            np.add.at(total, owner, mel.T)
            np.add.at(square, owner, mel.T ** 2)
            np.add.at(count, owner, 1.0)
        total, square = total.reshape(self.mean.shape), square.reshape(self.mean.shape)
        count = count.reshape(n_speakers, n_symbols)
        pooled = count.sum(0)
        pooled_mean = total.sum(0) / np.maximum(pooled, 1.0)[:, None]
        pooled_var = square.sum(0) / np.maximum(pooled, 1.0)[:, None] - pooled_mean ** 2
        own = count[..., None] >= MIN_FRAMES_PER_GAUSSIAN
        mean = np.where(own, total / np.maximum(count, 1.0)[..., None], pooled_mean[None])
        var = np.where(own, square / np.maximum(count, 1.0)[..., None] - mean ** 2, pooled_var[None])
        seen = (pooled >= MIN_FRAMES_PER_GAUSSIAN)[None, :, None]
        self.mean = np.where(seen | own, mean, 0.0)
        self.var = np.maximum(np.where(seen | own, var, 1.0), VARIANCE_FLOOR)

    def log_likelihood(self, ids: np.ndarray, speakers: np.ndarray, mel: np.ndarray) -> np.ndarray:
        """log N(frame j; symbol i's Gaussian) [B, N, T] for padded ids [B, N] and mel [B, C, T]."""
        mean = self.mean[speakers[:, None], ids]  # [B, N, C]
        precision = 1.0 / self.var[speakers[:, None], ids]
        constant = (mean ** 2 * precision + np.log(self.var[speakers[:, None], ids])).sum(-1)
        return -0.5 * (np.einsum("bnc,bct->bnt", precision, mel ** 2)
                       - 2.0 * np.einsum("bnc,bct->bnt", mean * precision, mel) + constant[..., None])


def _padded(arrays: Sequence[np.ndarray]) -> np.ndarray:
    longest = max(a.shape[-1] for a in arrays)
    out = np.zeros((len(arrays), *arrays[0].shape[:-1], longest), dtype=arrays[0].dtype)
    for i, a in enumerate(arrays):
        out[i, ..., : a.shape[-1]] = a
    return out


def learn_durations(ids: list[np.ndarray], speakers: Sequence[int], mels: list[np.ndarray], n_symbols: int,
                    rounds: int = 8, batch: int = 32,
                    progress: Callable[[int, int], None] | None = None) -> list[np.ndarray]:
    """Frames per symbol for every utterance (each array sums to its mel's frame count), by hard EM with
    monotonic alignment search over a (speaker, symbol) Gaussian table; `mels` [80, T_k] log-mels.
    Every utterance needs at least as many frames as symbols."""
    if any(mel.shape[1] < len(s) for s, mel in zip(ids, mels, strict=True)):
        raise ValueError("every utterance needs at least as many mel frames as symbols")
    frames = np.concatenate(mels, axis=1)
    centre, spread = frames.mean(1, keepdims=True), np.maximum(frames.std(1, keepdims=True), 1e-3)
    normalised = [((mel - centre) / spread).astype(np.float32) for mel in mels]
    speaker_ids = np.asarray(speakers, dtype=np.int64)
    table = GaussianTable(int(speaker_ids.max()) + 1, n_symbols, frames.shape[0])
    durations = [uniform_durations(len(s), mel.shape[1]) for s, mel in zip(ids, mels, strict=True)]
    # short utterances first in each batch keeps the padding small
    order = sorted(range(len(ids)), key=lambda k: mels[k].shape[1])
    for done in range(rounds):
        table.fit(ids, speaker_ids, normalised, durations)
        for first in range(0, len(order), batch):
            chosen = order[first:first + batch]
            log_p = table.log_likelihood(_padded([ids[k] for k in chosen]), speaker_ids[chosen],
                                         _padded([normalised[k] for k in chosen]))
            found = monotonic_alignment_search(log_p, [len(ids[k]) for k in chosen],
                                               [mels[k].shape[1] for k in chosen])
            for row, k in enumerate(chosen):
                durations[k] = found[row, : len(ids[k])]
        if progress is not None:
            progress(done + 1, rounds)
    return durations
