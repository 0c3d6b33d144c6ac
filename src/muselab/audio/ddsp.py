"""A DDSP instrument (Engel et al. 2020): pitch and loudness in, a harmonic-plus-noise sound out, in one file.

Per frame (hop 64 at 16 kHz: 250 frames/s) the decoder reads f0 (as a scaled MIDI number), loudness
(A-weighted dB, normalised with the training set's mean and std, stored as buffers) and optionally a
timbre code z (from MFCCs, a mean over the window: one timbre per window). Each input has its own MLP;
their outputs go through a GRU and one more MLP (DDSP's RnnFcDecoder), which predicts three synth
controls: the overall harmonic amplitude, the distribution over `n_harmonics` harmonics and the
magnitudes of `n_noise_bands` noise bands. `muselab.audio.synth` turns them into audio (an oscillator
bank plus filtered noise, optionally through a learned reverb); the loss is the multi-resolution STFT
distance to the real audio. Read top to bottom: config, MLPs, timbre encoder, the model, the loss.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import Tensor, nn

from muselab.audio.dsp import MultiResolutionSTFTLoss
from muselab.audio.synth import (
    Reverb,
    filtered_noise,
    harmonic_synth,
    hz_to_midi,
    remove_above_nyquist,
    scale_function,
)
from muselab.core.config import Section

Batch = dict[str, Tensor]  # "audio" [B, N], "f0_hz" [B, F], "loudness_db" [B, F], optional "mfcc" [B, F, C]
NOISE_BIAS = -5.0  # DDSP's initial bias on the noise magnitudes: start nearly noiseless
EVAL_SEED = 0  # eval_step's noise comes from this seed, so validation losses are comparable
INAUDIBLE = 1e-4  # a harmonic's share of the amplitude below which render leaves it out (-80 dB)


class DDSPConfig(Section):
    sample_rate: int = Field(16000, ge=8000, le=48000, description="audio sample rate in Hz")
    hop: int = Field(64, ge=16, le=1024, description="samples per control frame (64 at 16 kHz = 250 frames/s)")
    n_harmonics: int = Field(60, ge=1, le=256, description="harmonics of the oscillator bank")
    n_noise_bands: int = Field(65, ge=2, le=513, description="magnitudes of the filtered-noise bands, 0 Hz to Nyquist")
    hidden: int = Field(64, ge=8, description="width of the MLPs")
    mlp_layers: int = Field(1, ge=1, le=6, description="layers of each MLP")
    gru: int = Field(64, ge=8, description="GRU hidden size")
    reverb: bool = Field(False, description="a learned room reverb after the synth")
    reverb_seconds: float = Field(0.5, gt=0, le=4, description="length of the learned reverb's impulse response")
    use_z: bool = Field(False, description="condition on a timbre code z encoded from MFCCs (then generation "
                                           "needs a --timbre recording)")
    n_mfcc: int = Field(30, ge=4, le=80, description="MFCCs read by the timbre encoder")
    z_dims: int = Field(16, ge=1, le=128, description="size of the timbre code z")


class MLP(nn.Sequential):
    """DDSP's fc stack: (Linear, LayerNorm, leaky ReLU) x layers."""

    def __init__(self, n_in: int, width: int, layers: int) -> None:
        blocks: list[nn.Module] = []
        for i in range(layers):
            blocks += [nn.Linear(n_in if i == 0 else width, width), nn.LayerNorm(width), nn.LeakyReLU(0.2)]
        super().__init__(*blocks)


class TimbreEncoder(nn.Module):
    """MFCC frames [B, F, C] -> one timbre code per window [B, z_dims], the mean over the frames of an
    MLP: the timbre of a recording, not its notes, so notes and a reference recording can be combined."""

    def __init__(self, cfg: DDSPConfig) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(cfg.n_mfcc)
        self.mlp = MLP(cfg.n_mfcc, cfg.hidden, cfg.mlp_layers)
        self.out = nn.Linear(cfg.hidden, cfg.z_dims)

    def forward(self, mfcc: Tensor) -> Tensor:
        return self.out(self.mlp(self.norm(mfcc)).mean(dim=1))


class DDSP(nn.Module):
    """The decoder and its synthesiser. `render` is the generation entry point; `training_step` the loss."""

    def __init__(self, cfg: DDSPConfig, loudness_mean: float = -40.0, loudness_std: float = 20.0) -> None:
        super().__init__()
        self.cfg = cfg
        # Normalisation of the loudness input, from the training set (saved with the weights)
        self.register_buffer("loudness_mean", torch.tensor(float(loudness_mean)))
        self.register_buffer("loudness_std", torch.tensor(float(max(loudness_std, 1e-3))))
        self.f0_mlp = MLP(1, cfg.hidden, cfg.mlp_layers)
        self.loudness_mlp = MLP(1, cfg.hidden, cfg.mlp_layers)
        n_inputs = 2
        if cfg.use_z:
            self.encoder = TimbreEncoder(cfg)
            self.z_mlp = MLP(cfg.z_dims, cfg.hidden, cfg.mlp_layers)
            n_inputs = 3
        self.gru = nn.GRU(n_inputs * cfg.hidden, cfg.gru, batch_first=True)
        self.out_mlp = MLP(cfg.gru + n_inputs * cfg.hidden, cfg.hidden, cfg.mlp_layers)
        self.out = nn.Linear(cfg.hidden, 1 + cfg.n_harmonics + cfg.n_noise_bands)
        if cfg.reverb:
            self.reverb = Reverb(round(cfg.reverb_seconds * cfg.sample_rate), cfg.sample_rate,
                                 generator=torch.Generator().manual_seed(0))
        self.stft_loss = MultiResolutionSTFTLoss()

    # -- controls -----------------------------------------------------------------------------------
    def decode(self, f0_hz: Tensor, loudness_db: Tensor, z: Tensor | None = None) -> Tensor:
        """Raw decoder outputs [B, F, 1 + n_harmonics + n_noise_bands] for f0 and loudness [B, F]."""
        midi = hz_to_midi(f0_hz.clamp_min(8.18))  # 8.18 Hz = MIDI 0; unpitched frames read as the lowest note
        inputs = [self.f0_mlp((midi / 127.0).unsqueeze(-1)),
                  self.loudness_mlp(((loudness_db - self.loudness_mean) / self.loudness_std).unsqueeze(-1))]
        if self.cfg.use_z:
            if z is None:
                raise ValueError("this model was built with use_z: pass a timbre code z [B, z_dims]")
            inputs.append(self.z_mlp(z).unsqueeze(1).expand(-1, f0_hz.shape[1], -1))
        features = torch.cat(inputs, dim=-1)
        recurrent, _ = self.gru(features)
        return self.out(self.out_mlp(torch.cat([recurrent, features], dim=-1)))

    def controls(self, f0_hz: Tensor, loudness_db: Tensor, z: Tensor | None = None) -> dict[str, Tensor]:
        """Synth controls per frame: "amplitude" [B, F] (linear), "harmonics" [B, F, K] (zero at and above
        Nyquist, the rest summing to one) and "noise" [B, F, M] (linear band magnitudes)."""
        return self._controls_from_raw(f0_hz, self.decode(f0_hz, loudness_db, z))

    def synthesize(self, f0_hz: Tensor, controls: dict[str, Tensor],
                   generator: torch.Generator | None = None) -> Tensor:
        """Audio [B, F * hop] from f0 [B, F] and the controls; noise from `generator` (else the global RNG)."""
        n_samples = f0_hz.shape[1] * self.cfg.hop
        harmonic = harmonic_synth(f0_hz, controls["amplitude"], controls["harmonics"], self.cfg.sample_rate,
                                  n_samples)
        noise = filtered_noise(controls["noise"], n_samples, self.cfg.hop, generator=generator)
        audio = harmonic + noise
        return self.reverb(audio) if self.cfg.reverb else audio

    def timbre(self, mfcc: Tensor | None) -> Tensor | None:
        """The timbre code z [B, z_dims] of MFCC frames [B, F, C], or None for a model without z."""
        if not self.cfg.use_z:
            return None
        if mfcc is None:
            raise ValueError("this model was built with use_z: pass the MFCC frames of a timbre reference")
        return self.encoder(mfcc)

    def forward(self, f0_hz: Tensor, loudness_db: Tensor, mfcc: Tensor | None = None,
                generator: torch.Generator | None = None) -> Tensor:
        return self.synthesize(f0_hz, self.controls(f0_hz, loudness_db, self.timbre(mfcc)), generator)

    @torch.inference_mode()
    def render(self, f0_hz: Tensor, loudness_db: Tensor, mfcc: Tensor | None = None, seed: int = 0,
               chunk_frames: int = 125, synth_frames: int = 250) -> Tensor:
        """Generation: audio [B, F * hop] for f0 and loudness [B, F] (a [F] curve gives [F * hop]).

        The same seed gives the same noise, so the same audio. A long curve is decoded in chunks of
        `chunk_frames` (0.5 s at 250 frames/s, as long as the default training windows), each after a
        warm-up of a quarter chunk, batched together: the GRU never runs much longer than it was trained
        to, and 10 s are one batch of 156 steps instead of 2,500 sequential ones. The synthesiser runs
        `synth_frames` at a time (phase-continuous): pieces of 1 s were the fastest measured on 2 CPU
        cores, small enough to stay in cache and large enough for both cores to share each operation.
        """
        single = f0_hz.dim() == 1
        if single:
            f0_hz, loudness_db = f0_hz.unsqueeze(0), loudness_db.unsqueeze(0)
            mfcc = None if mfcc is None else mfcc.unsqueeze(0)
        z = self.timbre(mfcc)
        raw = self._decode_chunked(f0_hz, loudness_db, z, chunk_frames)
        controls = self._controls_from_raw(f0_hz, raw)
        # Harmonics 80 dB below the whole in every frame are inaudible: leave them out of the oscillator
        # bank, whose cost grows with its size. A trained model pushes the harmonics it does not use to
        # the exp-sigmoid's floor, so this halves the bank (55 to 29 harmonics on builtin:tones) and
        # moves the level by at most 0.05 dB (60 harmonics under 1e-4 share under 0.6 % of the amplitude).
        heard = (controls["harmonics"].amax(dim=(0, 1)) > INAUDIBLE).nonzero()
        n_heard = int(heard.max()) + 1 if len(heard) else 1
        controls["harmonics"] = controls["harmonics"][..., :n_heard]
        generator = torch.Generator(device=f0_hz.device).manual_seed(seed)
        noise = self._noise_in_pieces(controls["noise"], generator, synth_frames)
        audio = self._harmonics_in_pieces(f0_hz, controls, synth_frames) + noise
        audio = self.reverb(audio) if self.cfg.reverb else audio
        return audio[0] if single else audio

    def _noise_in_pieces(self, magnitudes: Tensor, generator: torch.Generator, piece: int) -> Tensor:
        """`filtered_noise` (the same noise draw, the same audio to float rounding) `piece` frames at a time;
        each piece is filtered with enough frames around it to cover the filter's reach."""
        batch, n_frames, n_bands = magnitudes.shape
        hop = self.cfg.hop
        white = torch.rand(batch, n_frames * hop, generator=generator, device=magnitudes.device,
                           dtype=magnitudes.dtype) * 2.0 - 1.0
        margin = -(-(n_bands - 1) // hop) + 1  # frames: the impulse response reaches n_bands - 1 samples each way
        pieces = []
        for a in range(0, n_frames, piece):
            b = min(a + piece, n_frames)
            lo, hi = max(0, a - margin), min(n_frames, b + margin)
            filtered = filtered_noise(magnitudes[:, lo:hi], (hi - lo) * hop, hop, noise=white[:, lo * hop:hi * hop])
            pieces.append(filtered[:, (a - lo) * hop:(b - lo) * hop])
        return torch.cat(pieces, dim=1)

    def _harmonics_in_pieces(self, f0_hz: Tensor, controls: dict[str, Tensor], piece: int) -> Tensor:
        """The oscillator bank of `synthesize`, `piece` frames at a time, each piece starting from the phase
        the one before ended on: the same audio (to float rounding) as one call, about twice as fast on
        long clips, because the [frames, harmonics, hop] tensors of a piece stay in the CPU's caches."""
        batch, n_frames = f0_hz.shape
        hop, sr = self.cfg.hop, self.cfg.sample_rate
        # Sum of the linearly upsampled f0 over each segment between frame centres (the last one held)
        f0 = f0_hz.double()
        following = torch.cat([f0[:, 1:], f0[:, -1:]], dim=1)
        segment = hop * f0 + (following - f0) * (hop - 1) / 2
        start_phase = 2 * math.pi / sr * (torch.cumsum(segment, dim=1) - segment)  # [B, F] at each frame centre
        k = torch.arange(1, controls["harmonics"].shape[-1] + 1, dtype=torch.float64, device=f0.device)
        pieces = []
        for a in range(0, n_frames, piece):
            b = min(a + piece, n_frames)
            end = min(b + 1, n_frames)  # one frame more, so the last segment glides towards it
            offset = torch.remainder(start_phase[:, a:a + 1] * k, 2 * math.pi).to(f0_hz.dtype)
            audio = harmonic_synth(f0_hz[:, a:end], controls["amplitude"][:, a:end], controls["harmonics"][:, a:end],
                                   sr, (end - a) * hop, initial_phase=offset)
            pieces.append(audio[:, :(b - a) * hop])
        return torch.cat(pieces, dim=1)

    def _controls_from_raw(self, f0_hz: Tensor, raw: Tensor) -> dict[str, Tensor]:
        k = self.cfg.n_harmonics
        harmonics = remove_above_nyquist(f0_hz, scale_function(raw[..., 1:1 + k]), self.cfg.sample_rate)
        harmonics = harmonics / harmonics.sum(dim=-1, keepdim=True).clamp_min(1e-7)
        return {"amplitude": scale_function(raw[..., 0]), "harmonics": harmonics,
                "noise": scale_function(raw[..., 1 + k:] + NOISE_BIAS)}

    def _decode_chunked(self, f0_hz: Tensor, loudness_db: Tensor, z: Tensor | None, chunk: int) -> Tensor:
        batch, n_frames = f0_hz.shape
        warm = chunk // 4
        if n_frames <= chunk + warm:
            return self.decode(f0_hz, loudness_db, z)
        n_chunks = math.ceil(n_frames / chunk)
        # Pad at both ends (edge values), then cut overlapping pieces [warm-up | chunk] as one batch
        pad_end = n_chunks * chunk - n_frames

        def pieces(x: Tensor) -> Tensor:
            padded = torch.cat([x[:, :1].expand(-1, warm), x, x[:, -1:].expand(-1, pad_end)], dim=1)
            return padded.unfold(1, chunk + warm, chunk).reshape(batch * n_chunks, chunk + warm)

        z_pieces = None if z is None else z.repeat_interleave(n_chunks, dim=0)
        raw = self.decode(pieces(f0_hz), pieces(loudness_db), z_pieces)[:, warm:]
        return raw.reshape(batch, n_chunks * chunk, -1)[:, :n_frames]

    # -- loss -----------------------------------------------------------------------------------------
    def training_step(self, batch: Batch) -> Tensor:
        """Multi-resolution STFT loss of the resynthesis against the real audio window."""
        audio = self(batch["f0_hz"], batch["loudness_db"], batch.get("mfcc"))
        return self.stft_loss(audio, batch["audio"])

    def eval_step(self, batch: Batch) -> tuple[Tensor, int]:
        """The same loss with fixed noise, times the batch size (the Trainer averages per window)."""
        generator = torch.Generator(device=batch["audio"].device).manual_seed(EVAL_SEED)
        audio = self(batch["f0_hz"], batch["loudness_db"], batch.get("mfcc"), generator=generator)
        n = batch["audio"].shape[0]
        return self.stft_loss(audio, batch["audio"]) * n, n
