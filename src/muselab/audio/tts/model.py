"""A non-autoregressive acoustic model (phonemes -> log-mel) in the FastSpeech 2 family, in one file.

FastSpeech 2 (Ren et al. 2021) with FastPitch's per-phoneme pitch (Lancucki 2021):

    phoneme ids -> embedding + positions -> encoder (feed-forward Transformer blocks) -> + speaker
    -> variance adaptor: duration, pitch and energy predicted per phoneme; pitch and energy (the true
       values in training, the predicted ones in synthesis) embedded and added
    -> length regulator: each phoneme's vector repeated for its duration in mel frames
    -> decoder (the same blocks, over frames) -> 80-band log-mel (+ an optional convolutional postnet)

Targets, per phoneme: duration in mel frames; pitch as the median f0 of its frames in semitones,
normalised by the training data's mean and spread (unvoiced phonemes 0, and left out of the pitch
loss); energy as the mean log-mel of its frames, normalised the same way. Synthesis controls act on
these: `speed` divides durations, `pause_scale` stretches pause symbols, `pitch_shift` adds semitones,
`pitch_scale` widens the contour around the utterance's mean, `energy_db` is a gain on the output mel.

Mel settings are `muselab.audio.vocoder.MEL` (22,050 Hz, n_fft 1024, hop 256, 80 mels), so any
`audio-vocoder` run turns the output into sound. Read top to bottom: config, blocks, length regulator,
the model (forward, loss, synthesis).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from muselab.core.config import Section

N_MELS = 80
LN10_OVER_20 = math.log(10.0) / 20.0  # decibels -> natural-log magnitude

Batch = dict[str, Tensor]
# "ids" long [B, N] (0 = pad), "speaker" long [B], "durations" long [B, N] (frames), "pitch" float [B, N]
# (normalised, 0 unvoiced), "voiced" bool [B, N], "energy" float [B, N] (normalised), "mel" float [B, 80, T]
# (padded), "mel_lengths" long [B]


class AcousticConfig(Section):
    # 192 wide by default: on validation sentences, 30 minutes on one thread, two seeds each, it beat 128
    # (MCD 3.24 / 3.29 dB against 3.36 / 3.39; WER 0.163 / 0.172 against 0.174 / 0.200) with 4,000 steps
    # against 5,000; 256 made only 2,800 (benchmarks/results/tts_width.json)
    dim: int = Field(192, ge=8, description="width of the encoder and decoder")
    heads: int = Field(2, ge=1, description="attention heads per block")
    encoder_layers: int = Field(3, ge=1, description="feed-forward Transformer blocks over phonemes")
    decoder_layers: int = Field(3, ge=1, description="feed-forward Transformer blocks over mel frames")
    ffn_hidden: int = Field(576, ge=8, description="hidden channels of each block's convolutional feed-forward")
    ffn_kernel: int = Field(3, ge=1, description="taps of the feed-forward's first convolution (odd)")
    predictor_hidden: int = Field(192, ge=8, description="channels of the duration, pitch and energy predictors")
    predictor_kernel: int = Field(3, ge=1, description="taps of the predictors' convolutions (odd)")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout in the blocks and predictors (0 by default: a "
                                                         "30-minute CPU run sees each utterance some 25 times, and "
                                                         "dropout's masks cost a fifth of a step)")
    postnet: bool = Field(False, description="refine the mel with a 5-layer convolutional postnet")
    duration_weight: float = Field(1.0, ge=0, description="weight of the log-duration MSE")
    pitch_weight: float = Field(1.0, ge=0, description="weight of the pitch MSE")
    energy_weight: float = Field(1.0, ge=0, description="weight of the energy MSE")


@dataclass
class Stats:
    """Normalisation of the pitch (semitones above 55 Hz, voiced phonemes) and energy (mean log-mel)."""

    pitch_mean: float = 30.0
    pitch_std: float = 4.0
    energy_mean: float = -4.0
    energy_std: float = 2.0
    log_duration_mean: float = 1.8  # mean of log(1 + frames) over phonemes: the duration predictor starts here


# ---------------------------------------------------------------------------------------------------
# Blocks


def positions(length: int, dim: int, device: torch.device) -> Tensor:
    """Sinusoidal position encodings [length, dim]."""
    pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim, device=device)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)[:, : dim // 2]
    return table


class FFTBlock(nn.Module):
    """FastSpeech's feed-forward Transformer block: self-attention, then two 1-D convolutions (post-norm)."""

    def __init__(self, dim: int, heads: int, hidden: int, kernel: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.conv1 = nn.Conv1d(dim, hidden, kernel, padding=kernel // 2)
        self.conv2 = nn.Conv1d(hidden, dim, 1)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x [B, L, D]; mask bool [B, L], True where real."""
        b, length, dim = x.shape
        q, k, v = self.qkv(x).view(b, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :],
                                              dropout_p=self.dropout.p if self.training else 0.0)
        x = self.norm1(x + self.dropout(self.out(attn.transpose(1, 2).reshape(b, length, dim))))
        y = self.conv2(F.relu(self.conv1(x.transpose(1, 2)))).transpose(1, 2)
        x = self.norm2(x + self.dropout(y))
        return x * mask[..., None]


class Stack(nn.Module):
    def __init__(self, cfg: AcousticConfig, layers: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(FFTBlock(cfg.dim, cfg.heads, cfg.ffn_hidden, cfg.ffn_kernel, cfg.dropout)
                                    for _ in range(layers))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        x = x + positions(x.shape[1], x.shape[2], x.device)
        for block in self.blocks:
            x = block(x, mask)
        return x


class VariancePredictor(nn.Module):
    """Two convolutions with ReLU, LayerNorm and dropout, then one value per position."""

    def __init__(self, dim: int, hidden: int, kernel: int, dropout: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(dim, hidden, kernel, padding=kernel // 2)
        self.norm1 = nn.LayerNorm(hidden)
        self.conv2 = nn.Conv1d(hidden, hidden, kernel, padding=kernel // 2)
        self.norm2 = nn.LayerNorm(hidden)
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(hidden, 1)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        y = self.dropout(self.norm1(F.relu(self.conv1(x.transpose(1, 2))).transpose(1, 2)))
        y = self.dropout(self.norm2(F.relu(self.conv2(y.transpose(1, 2))).transpose(1, 2)))
        return self.proj(y).squeeze(-1) * mask


class Postnet(nn.Module):
    def __init__(self, channels: int = 256, layers: int = 5, kernel: int = 5) -> None:
        super().__init__()
        sizes = [N_MELS] + [channels] * (layers - 1) + [N_MELS]
        self.convs = nn.ModuleList(nn.Conv1d(a, b, kernel, padding=kernel // 2) for a, b in zip(sizes, sizes[1:],
                                                                                              strict=False))

    def forward(self, mel: Tensor) -> Tensor:
        x = mel
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if i < len(self.convs) - 1:
                x = torch.tanh(x)
        return mel + x


# ---------------------------------------------------------------------------------------------------
# Length regulator


def length_regulate(hidden: Tensor, durations: Tensor) -> tuple[Tensor, Tensor]:
    """Repeat phoneme i's vector durations[i] times: hidden [B, N, D], durations long [B, N] ->
    (frames [B, T, D], frame mask bool [B, T]), T the longest total."""
    ends = durations.cumsum(1)
    total = ends[:, -1]
    length = max(1, int(total.max()))
    frames = torch.arange(length, device=hidden.device)
    index = (ends[:, None, :] <= frames[None, :, None]).sum(-1).clamp(max=hidden.shape[1] - 1)  # [B, T]
    mask = frames[None, :] < total[:, None]
    out = hidden.gather(1, index[..., None].expand(-1, -1, hidden.shape[2]))
    return out * mask[..., None], mask


def scaled_durations(durations: Tensor, scale: Tensor) -> Tensor:
    """Real-valued durations times `scale` [B, N], rounded so that every phoneme boundary is rounded
    (not every duration): the total is the rounded scaled total, never off by one per phoneme."""
    ends = torch.round(torch.cumsum(durations * scale, dim=1))
    return torch.diff(ends, dim=1, prepend=torch.zeros_like(ends[:, :1])).clamp(min=0).long()


# ---------------------------------------------------------------------------------------------------
# The model


class AcousticModel(nn.Module):
    """Phonemes (+ speaker) -> log-mel. `pause_ids` are the pause symbols (`pause_scale` stretches them),
    `voiced_ids` the phonemes that carry pitch."""

    def __init__(self, cfg: AcousticConfig, n_symbols: int, n_speakers: int, pause_ids: list[int],
                 voiced_ids: list[int], stats: Stats | None = None) -> None:
        super().__init__()
        if cfg.dim % cfg.heads:
            raise ValueError(f"dim {cfg.dim} must be a multiple of heads {cfg.heads}")
        self.cfg = cfg
        self.stats = stats or Stats()
        self.embed = nn.Embedding(n_symbols, cfg.dim, padding_idx=0)
        self.speaker = nn.Embedding(max(1, n_speakers), cfg.dim)
        self.encoder = Stack(cfg, cfg.encoder_layers)
        predictor = (cfg.dim, cfg.predictor_hidden, cfg.predictor_kernel, cfg.dropout)
        self.duration = VariancePredictor(*predictor)
        # An untrained model already speaks at the data's average rate, not in zero frames
        nn.init.constant_(self.duration.proj.bias, self.stats.log_duration_mean)
        self.pitch = VariancePredictor(*predictor)
        self.energy = VariancePredictor(*predictor)
        self.pitch_embed = nn.Conv1d(1, cfg.dim, 3, padding=1)
        self.energy_embed = nn.Conv1d(1, cfg.dim, 3, padding=1)
        self.decoder = Stack(cfg, cfg.decoder_layers)
        self.to_mel = nn.Linear(cfg.dim, N_MELS)
        self.postnet = Postnet() if cfg.postnet else None
        is_pause = torch.zeros(n_symbols, dtype=torch.bool)
        is_pause[pause_ids] = True
        is_voiced = torch.zeros(n_symbols, dtype=torch.bool)
        is_voiced[voiced_ids] = True
        self.register_buffer("is_pause", is_pause, persistent=False)
        self.register_buffer("is_voiced", is_voiced, persistent=False)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # -- pieces -----------------------------------------------------------------------------------
    def encode(self, ids: Tensor, speaker: Tensor) -> tuple[Tensor, Tensor]:
        mask = ids != 0
        x = self.encoder(self.embed(ids) * math.sqrt(self.cfg.dim), mask)
        return (x + self.speaker(speaker)[:, None, :]) * mask[..., None], mask

    def _add_variance(self, x: Tensor, pitch: Tensor, energy: Tensor) -> Tensor:
        x = x + self.pitch_embed(pitch[:, None, :]).transpose(1, 2)
        return x + self.energy_embed(energy[:, None, :]).transpose(1, 2)

    def decode(self, x: Tensor, durations: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """(mel [B, 80, T], frame mask [B, T], postnet mel or None)."""
        frames, mask = length_regulate(x, durations)
        mel = self.to_mel(self.decoder(frames, mask)).transpose(1, 2)
        post = self.postnet(mel) if self.postnet is not None else None
        return mel, mask, post

    # -- training ---------------------------------------------------------------------------------
    def losses(self, batch: Batch) -> dict[str, Tensor]:
        x, mask = self.encode(batch["ids"], batch["speaker"])
        log_d = self.duration(x, mask)
        pitch = self.pitch(x, mask)
        energy = self.energy(x, mask)
        x = self._add_variance(x, batch["pitch"], batch["energy"])
        mel, frame_mask, post = self.decode(x, batch["durations"])
        target = batch["mel"][:, :, : mel.shape[2]]
        frame_mask = frame_mask[:, None, : target.shape[2]]
        n_frames = frame_mask.sum() * N_MELS
        mel_loss = ((mel[:, :, : target.shape[2]] - target).abs() * frame_mask).sum() / n_frames
        if post is not None:
            mel_loss = mel_loss + ((post[:, :, : target.shape[2]] - target).abs() * frame_mask).sum() / n_frames
        phones = mask & (batch["durations"] > 0)  # zero-length phonemes have no pitch or energy
        voiced = phones & batch["voiced"]
        true_log_d = torch.log1p(batch["durations"].float())
        duration_loss = ((log_d - true_log_d) ** 2 * mask).sum() / mask.sum()
        pitch_loss = ((pitch - batch["pitch"]) ** 2 * voiced).sum() / voiced.sum().clamp(min=1)
        energy_loss = ((energy - batch["energy"]) ** 2 * phones).sum() / phones.sum().clamp(min=1)
        return {"mel": mel_loss, "duration": duration_loss, "pitch": pitch_loss, "energy": energy_loss}

    def training_step(self, batch: Batch) -> Tensor:
        parts = self.losses(batch)
        cfg = self.cfg
        return (parts["mel"] + cfg.duration_weight * parts["duration"] + cfg.pitch_weight * parts["pitch"]
                + cfg.energy_weight * parts["energy"])

    def eval_step(self, batch: Batch) -> tuple[Tensor, int]:
        n = batch["ids"].shape[0]
        return self.training_step(batch) * n, n

    # -- synthesis --------------------------------------------------------------------------------
    def pitch_hz(self, normalised: Tensor) -> Tensor:
        semitones = normalised * self.stats.pitch_std + self.stats.pitch_mean
        return 55.0 * torch.pow(2.0, semitones / 12.0)

    @torch.no_grad()
    def synthesise(self, ids: Tensor, speaker: Tensor, speed: float = 1.0, pause_scale: float = 1.0,
                   pitch_shift: float = 0.0, pitch_scale: float = 1.0, energy_db: float = 0.0) -> dict[str, Tensor]:
        """Log-mels for a batch of phoneme sequences (0-padded). Returns "mel" [B, 80, T], "mel_lengths" [B],
        "durations" long [B, N] (frames), "f0_hz" [B, N] (0 for unvoiced phonemes), "energy" [B, N]."""
        x, mask = self.encode(ids, speaker)
        d = torch.expm1(self.duration(x, mask)).clamp(min=0.0) * mask
        scale = torch.where(self.is_pause[ids], pause_scale, 1.0) / speed
        durations = scaled_durations(d, scale) * mask
        voiced = self.is_voiced[ids] & mask
        st = self.pitch(x, mask) * self.stats.pitch_std + self.stats.pitch_mean  # semitones
        count = voiced.sum(1, keepdim=True).clamp(min=1)
        mean = (st * voiced).sum(1, keepdim=True) / count
        st = mean + pitch_scale * (st - mean) + pitch_shift
        pitch = torch.where(voiced, (st - self.stats.pitch_mean) / self.stats.pitch_std, 0.0)
        energy = self.energy(x, mask)
        mel, frame_mask, post = self.decode(self._add_variance(x, pitch, energy), durations)
        mel = post if post is not None else mel
        # the energy control is a gain: it shifts the log-mel itself, exactly, not the decoder's input
        mel = torch.where(frame_mask[:, None, :], mel + energy_db * LN10_OVER_20, math.log(1e-5))
        return {"mel": mel, "mel_lengths": frame_mask.sum(1), "durations": durations,
                "f0_hz": torch.where(voiced, self.pitch_hz(pitch), 0.0),
                "energy": energy * self.stats.energy_std + self.stats.energy_mean + energy_db * LN10_OVER_20}
