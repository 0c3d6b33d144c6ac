"""A neural vocoder (mel spectrogram -> waveform), in one file.

The generator is Fourier-domain, after Vocos (Siuzdak 2023): a 1-D convolution embeds the log-mel
frames, a stack of ConvNeXt blocks (depthwise 7-tap conv, LayerNorm, a two-layer MLP, layer scale)
works at the frame rate, and a linear head predicts each frame's STFT log-magnitude and phase; one
inverse STFT (n_fft 1024, hop 256) makes the waveform. Nothing runs at the sample rate, which makes
it many times cheaper on a CPU than HiFi-GAN's stack of upsampling convolutions. With `mel_prior`
(our addition) the predicted log-magnitude is a correction to the log of the mel's least-squares
linear spectrum (the pseudo-inverse Griffin-Lim starts from): silence stays silent and the spectral
envelope is right from the first step, so a short CPU training run goes into detail and phase.
`prior_floor` raises that pseudo-inverse to a share of its bands' mean magnitude where it undershoots to
zero: between the harmonics of a high note the least squares leave holes ~60 dB deeper than real audio's
valleys, below the losses' log floor where the correction never learns to fill them, and the realised
spectral envelope (mel-cepstral distortion) pays for it.

With `phase="griffin_lim"` the head predicts only the log-magnitude, rescaled band by band so that its
mel is the input's, and `phase_iterations` of fast Griffin-Lim make the waveform (`GriffinLimPhase`,
frame-major and several times faster than torch.stft of torch.istft), starting from zero phase or, with
`phase_start="gradient"`, from the phase integrated from the magnitude's own gradients
(`dsp.phase_from_magnitude`: in as many iterations, much closer to consistent). The magnitude is
trained against the real audio's STFT magnitude (a regression: no waveform is made while training), or,
with `magnitude_target="waveform"`, by the reconstruction loss through the iterations. Griffin-Lim's weak
part on a mel is its magnitude more than its phase: on builtin:mixed's held-out clips 4 iterations on the
true magnitude score MRSTFT 0.81 and MCD 1.57 dB, 32 on the mel's pseudo-inverse 1.06 and 2.36 dB
(benchmarks/results/vocoder_magnitude_oracle.json), so a learnt magnitude is where a network helps most
within a CPU budget.

With `phase="network"` training minimises a reconstruction loss: L1 between log-mels of the output and
of the real audio plus the multi-resolution STFT loss (spectral convergence + log magnitude). With
`adversarial` on,
the model also has a multi-period discriminator (HiFi-GAN's MPD: the waveform folded by a period
into 2-D) and a multi-resolution discriminator (UnivNet's MRD: 2-D convolutions over magnitude
spectrograms at several resolutions), trained with least-squares GAN losses, and the generator adds
feature matching (L1 between the discriminators' feature maps on real and generated audio). The
GAN trains in two optimizer phases per step, discriminator first (see `Vocoder.optimizer_phases`).

Mel settings are muselab's one convention for every model that makes or reads mels (the TTS
acoustic model predicts the same): 22,050 Hz, n_fft 1024, hop 256, 80 Slaney mels over the full band,
0 to 11,025 Hz (HiFi-GAN's 22 kHz mels stop at 8 kHz, which leaves a vocoder guessing the top octave
of music), natural log of the magnitude mel. A mel of F frames gives F * hop samples. Frames whose mel
is silent everywhere (at the log floor) come out silent whatever the network predicts: silence in,
silence out. Read top to bottom: config, generator, discriminators, losses, the model.
"""

from __future__ import annotations

import functools
import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

from muselab.audio.dsp import (
    MelSettings,
    MelSpectrogram,
    MultiResolutionSTFTLoss,
    istft_bases,
    istft_real,
    log_mel,
    magnitude,
    mel_filterbank,
    overlap_add,
    phase_from_magnitude,
    spectral_distance,
    stft_bases,
)
from muselab.core.config import Section
from muselab.core.trainer import SINGLE_PHASE, OptimizerPhase, PhaseCarry
from muselab.nn import frozen  # no parameter gradients inside the block

MEL = MelSettings(fmax=None)  # 22,050 Hz, n_fft 1024, hop 256, 80 mels up to sr / 2, natural-log magnitude
MEL_FMAX = MEL.sr / 2
# A frame whose every mel value is within this of the log floor is digital silence
SILENT_FRAME_MARGIN = 1e-3


@functools.lru_cache(maxsize=1)
def _mel_pseudo_inverse() -> np.ndarray:
    basis = mel_filterbank(MEL.sr, MEL.n_fft, MEL.n_mels, MEL.fmin, MEL.fmax).double().numpy()
    return np.linalg.pinv(basis).astype(np.float32)  # numpy's: torch's first pinv costs most of a second


def mel_pseudo_inverse() -> Tensor:
    """The least-squares inverse [n_fft // 2 + 1, n_mels] of the mel filterbank (made once)."""
    return torch.from_numpy(_mel_pseudo_inverse().copy())


def mel_spectrogram(audio: Tensor) -> Tensor:
    """The log-mel every muselab vocoder reads, [..., T] -> [..., n_mels, 1 + T // hop]."""
    return log_mel(audio, MEL.sr, MEL.n_fft, MEL.hop, MEL.n_mels, MEL.fmin, MEL.fmax, MEL.power, MEL.log_floor,
                   MEL.win_length)

Batch = dict[str, Tensor]  # "audio" float [B, S], S a multiple of MEL.hop


class VocoderConfig(Section):
    dim: int = Field(128, ge=8, description="channels of the ConvNeXt blocks")
    intermediate: int = Field(384, ge=8, description="hidden size of each block's MLP")
    layers: int = Field(8, ge=1, description="ConvNeXt blocks")
    kernel_size: int = Field(7, ge=1, description="taps of the depthwise convolution over frames (odd)")
    mel_prior: bool = Field(True, description="predict the log magnitude as a correction to the mel's "
                                              "pseudo-inverse (silence and the spectral envelope come free)")
    # "network" stays the field's default so that runs made before the choice existed load as they were
    # trained; the recipe's presets choose griffin_lim
    phase: Literal["network", "griffin_lim"] = Field(
        "network", description="where the phase comes from: the network's head (trained on the waveform), or "
                               "phase_iterations of fast Griffin-Lim on the predicted magnitude (the network "
                               "learns the magnitude alone)")
    magnitude_target: Literal["spectrum", "waveform"] = Field(
        "spectrum", description="with phase=griffin_lim, what the magnitude is trained on: the real audio's STFT "
                                "magnitude (a fast regression), or the waveform Griffin-Lim makes from it (the "
                                "reconstruction loss through phase_iterations, slower steps) for the last "
                                "waveform_share of training, the regression before")
    waveform_share: float = Field(1.0, ge=0, le=1, description="with magnitude_target=waveform, the share of "
                                  "training (of the steps or of the time budget) at its end that learns through "
                                  "the iterations")
    phase_iterations: int = Field(0, ge=0, le=64, description="fast Griffin-Lim iterations that make the predicted "
                                  "spectrum consistent, from the predicted phase (trained through) or, with "
                                  "phase=griffin_lim, from the phase phase_start makes")
    # "zero" stays the field's default so that runs made before the choice existed load as they were trained
    phase_start: Literal["zero", "gradient"] = Field(
        "zero", description="with phase=griffin_lim, where the iterations start: zero phase, or the phase "
                            "integrated from the predicted magnitude's gradients (dsp.phase_from_magnitude; "
                            "better in as many iterations)")
    # 0 stays the field's default so that runs made before the choice existed load as they were trained
    prior_floor: float = Field(0.0, ge=0, le=1, description="with mel_prior, the pseudo-inverse is raised to at "
                               "least this share of its mel bands' mean magnitude, so the correction starts from "
                               "a level the loss can see where the pseudo-inverse is zero (between harmonics "
                               "the mel cannot resolve)")
    mel_weight: float = Field(45.0, ge=0, description="weight of the log-mel L1 loss")
    stft_weight: float = Field(15.0, ge=0, description="weight of the multi-resolution STFT loss")
    adversarial: bool = Field(False, description="train against discriminators (a GAN) as well as the "
                                                 "reconstruction loss")
    discriminators: Literal["mpd+mrd", "mpd", "mrd"] = Field(
        "mpd+mrd", description="multi-period (waveform), multi-resolution (spectrogram) or both")
    periods: list[int] = Field([2, 3, 5, 7, 11], min_length=1, description="periods of the MPD")
    disc_channels: int = Field(16, ge=1, description="channels of the MRD's layers and of the MPD's "
                                                     "first layer (which doubles them per layer)")
    adv_weight: float = Field(1.0, ge=0, description="weight of the generator's adversarial loss")
    fm_weight: float = Field(2.0, ge=0, description="weight of the feature-matching loss")
    d_lr_scale: float = Field(1.0, gt=0, description="discriminator learning rate as a multiple of the "
                                                     "generator's")

    @field_validator("kernel_size")
    @classmethod
    def _odd(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError("must be odd, so the convolution keeps frames centred")
        return value

    @field_validator("periods")
    @classmethod
    def _positive_periods(cls, value: list[int]) -> list[int]:
        if any(p < 2 for p in value):
            raise ValueError("periods must be 2 or more")
        return value

    @model_validator(mode="after")
    def _griffin_lim_needs_iterations(self) -> VocoderConfig:
        if self.phase == "griffin_lim" and not self.phase_iterations:
            raise ValueError("phase=griffin_lim needs phase_iterations of 1 or more (8 is a good start)")
        if self.phase == "griffin_lim" and self.adversarial:
            raise ValueError("adversarial training needs phase=network: with phase=griffin_lim the network "
                             "learns the magnitude alone and makes no waveform while training")
        return self


# -- generator -------------------------------------------------------------------------------------
class ConvNeXtBlock(nn.Module):
    """x + gamma * MLP(LayerNorm(depthwise_conv(x))), on [B, frames, C] (channels last).

    The depthwise convolution runs as a 2-D one on a channels-last view, which the CPU's convolution kernels
    take as it is: no copy between the layouts of the convolution and of the LayerNorm and MLP, as a 1-D
    convolution on [B, C, frames] needs (on 60 s of frames 1.7x faster per block at inference, 1.2x in
    training)."""

    def __init__(self, dim: int, intermediate: int, kernel_size: int, layer_scale: float) -> None:
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, intermediate)
        self.pwconv2 = nn.Linear(intermediate, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale))

    def forward(self, x: Tensor) -> Tensor:
        conv = self.dwconv
        h = F.conv2d(x.transpose(1, 2).unsqueeze(2), conv.weight.unsqueeze(2), conv.bias,
                     padding=(0, conv.padding[0]), groups=conv.groups).squeeze(2).transpose(1, 2)
        h = self.pwconv2(F.gelu(self.pwconv1(self.norm(h)))) * self.gamma
        return x + h


INITIAL_LOG_MAGNITUDE = -3.0
MIN_MAGNITUDE = 1e-7  # where the pseudo-inverse is zero or negative, well below any audible bin


class Generator(nn.Module):
    """Log-mel [B, n_mels, F] -> waveform [B, F * hop]."""

    def __init__(self, cfg: VocoderConfig) -> None:
        super().__init__()
        self.embed = nn.Conv1d(MEL.n_mels, cfg.dim, cfg.kernel_size, padding=cfg.kernel_size // 2)
        self.norm = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.blocks = nn.ModuleList(ConvNeXtBlock(cfg.dim, cfg.intermediate, cfg.kernel_size, 1.0 / cfg.layers)
                                    for _ in range(cfg.layers))
        self.final_norm = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.predicts_phase = cfg.phase == "network"
        # log-magnitude (and phase) of n_fft // 2 + 1 bins
        self.head = nn.Linear(cfg.dim, (MEL.n_fft + 2) if self.predicts_phase else (MEL.n_fft // 2 + 1))
        self.phase_iterations = cfg.phase_iterations
        self.phase_from_gradients = not self.predicts_phase and cfg.phase_start == "gradient"
        self.griffin_lim = GriffinLimPhase(MEL.hop)
        # The generator's own window rather than dsp's cached one: one first made under inference_mode
        # would be an inference tensor, unusable for training afterwards in the same process
        self.register_buffer("window", torch.hann_window(MEL.n_fft, periodic=True), persistent=False)
        self.apply(_vocos_init)
        basis = mel_filterbank(MEL.sr, MEL.n_fft, MEL.n_mels, MEL.fmin, MEL.fmax)
        # Each linear bin's share of the bands it lies in
        band_spread = basis.T / basis.T.sum(dim=1, keepdim=True).clamp_min(1e-12)
        # The least-squares linear spectrum of a mel (dsp.mel_to_linear's pseudo-inverse)
        self.register_buffer("mel_inverse", mel_pseudo_inverse() if cfg.mel_prior else None, persistent=False)
        # Each bin's floor under it: prior_floor x the mean magnitude of the bands the bin lies in (a band's
        # mel is its filter-weighted sum of magnitudes, so mel / the weights' sum is that mean). Without it
        # the pseudo-inverse is zero, clamped to 1e-7, wherever the least squares undershoot: far below the
        # losses' log floor (1e-5), where the correction gets no gradient, so the valleys between resolved
        # harmonics stay ~60 dB deeper than real audio's and the spectral envelope (mel-cepstral distortion)
        # suffers
        floors = cfg.mel_prior and cfg.prior_floor > 0
        self.register_buffer("prior_floor", cfg.prior_floor * band_spread / basis.sum(dim=1) if floors else None,
                             persistent=False)
        if cfg.mel_prior:
            # The correction starts at zero: the first magnitudes are exactly the pseudo-inverse's (the
            # spectrum Griffin-Lim would start from), not that plus noise, so early training goes into phase
            nn.init.zeros_(self.head.weight[: MEL.n_fft // 2 + 1])
        if not self.predicts_phase:
            # Each linear bin takes its share of the band ratios (mel wanted / mel predicted)
            self.register_buffer("mel_basis", basis, persistent=False)
            self.register_buffer("band_spread", band_spread, persistent=False)
            # Start quiet (|X| ~ 0.05) rather than at |X| = 1 in every bin, loud noise: most bins of real
            # audio are quiet, and on builtin:tones this starts with a quarter less mel loss
            nn.init.constant_(self.head.bias[: MEL.n_fft // 2 + 1], INITIAL_LOG_MAGNITUDE)

    def polar(self, mel: Tensor, start_phase: bool = True) -> tuple[Tensor, Tensor]:
        """The predicted STFT's magnitude and phase, [B, n_fft // 2 + 1, F] each (where Griffin-Lim makes the
        phase, the one it starts from; zero without `start_phase`, for the magnitude regression)."""
        x = self.norm(self.embed(mel).transpose(1, 2))  # [B, frames, C] from here to the head
        for block in self.blocks:
            x = block(x)
        x = self.head(self.final_norm(x)).transpose(1, 2)
        log_mag, phase = x.chunk(2, dim=1) if self.predicts_phase else (x, torch.zeros_like(x))
        if self.mel_inverse is not None:
            prior = self.mel_inverse @ mel.exp()
            if self.prior_floor is not None:  # (a band at the mel's floor says only "this quiet or quieter")
                prior = torch.maximum(prior, self.prior_floor @ (mel.exp() - MEL.log_floor).clamp_min(0.0))
            log_mag = log_mag + torch.log(torch.clamp(prior, min=MIN_MAGNITUDE))
        # No |STFT| of audio within [-1, 1] exceeds the window's sum (n_fft / 2): the cap only stops overflow
        mag = torch.exp(log_mag.clamp(max=math.log(MEL.n_fft)))
        if not self.predicts_phase:
            # The network says how the energy spreads inside the mel's bands, the mel how much there is:
            # rescaled band by band towards the input's mel. Without it a magnitude trained on log distances
            # drifts from the mel's loudness where the detail is uncertain, and the spectral envelope
            # (mel-cepstral distortion) gets worse than the pseudo-inverse's while the detail gets better
            mag = mag * (self.band_spread @ (mel.exp() / (self.mel_basis @ mag).clamp_min(MIN_MAGNITUDE)))
        # Silence in, silence out: frames with nothing above the floor are zeroed
        mag = mag * (mel.amax(dim=1, keepdim=True) > math.log(MEL.log_floor) + SILENT_FRAME_MARGIN)
        if self.phase_from_gradients and start_phase:
            # A starting point only: the loss reaches the magnitude through the iterations, not through it
            with torch.autocast(mag.device.type, enabled=False):
                phase = phase_from_magnitude(mag.detach().float(), MEL.n_fft, MEL.hop)
        return mag, phase

    def forward(self, mel: Tensor, iterations: int | None = None) -> Tensor:
        """The waveform, with `iterations` of Griffin-Lim instead of `phase_iterations` if given (an argument,
        not a change to the module, so concurrent callers of one model never see each other's choice)."""
        iterations = self.phase_iterations if iterations is None else iterations
        mag, phase = self.polar(mel)
        # The Fourier part in fp32 whatever the network ran in: the CPU's FFTs have no bf16 kernels
        with torch.autocast(mag.device.type, enabled=False):
            mag, phase = mag.float(), phase.float()
            length = mel.shape[-1] * MEL.hop
            cos, sin = torch.cos(phase), torch.sin(phase)
            if iterations:
                cos, sin = self.griffin_lim(mag, cos, sin, self.window, iterations)
            return self._istft(torch.complex(mag * cos, mag * sin), length)

    def _istft(self, spectrum: Tensor, length: int) -> Tensor:
        # Centred frames: frame i sits on sample i * hop, as in dsp.stft, so F frames give F * hop samples
        return torch.istft(spectrum, MEL.n_fft, MEL.hop, window=self.window, center=True, length=length)


GRIFFIN_LIM_MOMENTUM = 0.99  # the fast Griffin-Lim's (Perraudin et al. 2013), as dsp.griffin_lim and librosa


class GriffinLimPhase(nn.Module):
    """The phase (as cos and sin) after `iterations` of fast Griffin-Lim (Perraudin et al. 2013) on magnitude
    `mag`, starting from `cos`, `sin`, all [B, n_fft // 2 + 1, F]: each iteration projects the spectrum onto
    the consistent ones (the STFT of its inverse STFT) and keeps the projection's phase, with momentum.

    The projection works frame-major ([B, F, bins], the FFTs along contiguous memory) in the padded time of
    the centred frames (zero padding, where torch.stft reflects) and overlap-adds with `dsp.overlap_add`:
    several times faster than torch.stft of torch.istft on a CPU, which makes iterations affordable at
    inference. `bases` (the windowed inverse DFT of `istft_bases` and the DFT of `stft_bases`) do the
    transforms as matrix products instead, for export, where there are no complex tensors. Differentiable
    throughout (the norm's epsilon keeps the gradient finite where a bin is zero)."""

    def __init__(self, hop: int, bases: tuple[Tensor, Tensor, Tensor, Tensor] | None = None) -> None:
        super().__init__()
        self.hop = hop
        self.real_arithmetic = bases is not None
        for name, basis in zip(("inverse_cos", "inverse_sin", "forward_cos", "forward_sin"), bases or (), strict=False):
            self.register_buffer(name, basis, persistent=False)

    def forward(self, mag: Tensor, cos: Tensor, sin: Tensor, window: Tensor, iterations: int
                ) -> tuple[Tensor, Tensor]:
        mag, cos, sin = (x.transpose(1, 2) for x in (mag, cos, sin))
        n_fft, count = window.shape[0], mag.shape[1]
        # The inverse STFT's division by the overlap-added squared window, over the F * hop samples of the
        # signal (as torch.istft with `length`); the padding around it is zero, not reflected, so the
        # projection is exact and never divides by the near-zero window sums at the very ends
        half, envelope = n_fft // 2, overlap_add(window.square().expand(1, count, n_fft), self.hop)
        scale = F.pad(1 / envelope[:, half:half + count * self.hop], (half, half - self.hop))
        if not self.real_arithmetic:
            return self._iterate_interleaved(mag, cos, sin, window, scale, iterations)
        previous: tuple[Tensor, Tensor] | None = None
        for _ in range(iterations):
            re, im = self.project(mag * cos, mag * sin, window, scale)
            if previous is None:
                ahead_re, ahead_im = re, im
            else:
                ahead_re = re + GRIFFIN_LIM_MOMENTUM * (re - previous[0])
                ahead_im = im + GRIFFIN_LIM_MOMENTUM * (im - previous[1])
            previous = re, im
            norm = torch.sqrt(ahead_re.square() + ahead_im.square() + 1e-16)
            cos, sin = ahead_re / norm, ahead_im / norm
        return cos.transpose(1, 2), sin.transpose(1, 2)

    def _iterate_interleaved(self, mag: Tensor, cos: Tensor, sin: Tensor, window: Tensor, scale: Tensor,
                             iterations: int) -> tuple[Tensor, Tensor]:
        """The same iterations on spectra kept as [B, F, bins, 2] real tensors, the layout of the FFTs' complex
        ones (view_as_real / view_as_complex cost nothing): no complex tensor is assembled from parts or split
        into them, the momentum step is one lerp, the overlap-add runs in place and the norm is taken on
        the two strided halves (a reduction over a last dimension of 2 is slow on a CPU); 6 iterations on the
        shipped vocoder's magnitude for 60 s take about 0.8x the time of the loop on separate real and
        imaginary parts (1.5x faster on contiguous random spectra), which the real arithmetic for export keeps."""
        if not iterations:
            return cos.transpose(1, 2), sin.transpose(1, 2)
        mag = mag.contiguous()  # read once per iteration: in whichever layout the caller's tensor had
        spectrum = torch.stack((mag * cos, mag * sin), dim=-1)
        previous: Tensor | None = None
        for step in range(iterations):
            projected = self.project_interleaved(spectrum, window, scale)
            # c_n = t_n + momentum (t_n - t_(n-1)) = lerp(t_(n-1), t_n, 1 + momentum)
            ahead = projected if previous is None else torch.lerp(previous, projected, 1 + GRIFFIN_LIM_MOMENTUM)
            previous = projected
            # (the epsilon keeps the gradient finite where a bin is zero)
            inverse_norm = torch.rsqrt(torch.addcmul(ahead[..., 0].square(), ahead[..., 1], ahead[..., 1]) + 1e-16)
            if step < iterations - 1:  # the last one's phase is all that is asked for
                spectrum = ahead * (mag * inverse_norm).unsqueeze(-1)
        return (ahead[..., 0] * inverse_norm).transpose(1, 2), (ahead[..., 1] * inverse_norm).transpose(1, 2)

    def project(self, re: Tensor, im: Tensor, window: Tensor, scale: Tensor) -> tuple[Tensor, Tensor]:
        """A frame-major spectrum [B, F, bins] onto the consistent ones; `scale` turns the overlap-added
        frames into the signal (1 / the squared window's sum inside it, 0 in the padding)."""
        if not self.real_arithmetic:
            projected = self.project_interleaved(torch.stack((re, im), dim=-1), window, scale)
            return projected[..., 0], projected[..., 1]
        n_fft = window.shape[0]
        frames = re @ self.inverse_cos.T - im @ self.inverse_sin.T  # windowed already
        again = (overlap_add(frames, self.hop) * scale).unfold(-1, n_fft, self.hop) * window
        return again @ self.forward_cos, again @ self.forward_sin

    def project_interleaved(self, spectrum: Tensor, window: Tensor, scale: Tensor) -> Tensor:
        """`project` by FFTs on a spectrum [B, F, bins, 2] (real and imaginary parts last)."""
        n_fft = window.shape[0]
        frames = torch.fft.irfft(torch.view_as_complex(spectrum), n=n_fft) * window
        again = (overlap_add(frames, self.hop, exportable=False) * scale).unfold(-1, n_fft, self.hop) * window
        return torch.view_as_real(torch.fft.rfft(again))


class RealGenerator(nn.Module):
    """The generator's waveform in real arithmetic (no complex tensors, no torch.istft), for ONNX and
    TorchScript export: log-mel [B, n_mels, F] -> waveform [B, F * hop], equal to `Generator` to rounding."""

    def __init__(self, generator: Generator) -> None:
        super().__init__()
        self.generator = generator
        cos_basis, sin_basis = istft_bases(generator.window)
        self.register_buffer("cos_basis", cos_basis, persistent=False)
        self.register_buffer("sin_basis", sin_basis, persistent=False)
        self.griffin_lim = GriffinLimPhase(MEL.hop, (cos_basis, sin_basis, *stft_bases(generator.window)))

    def forward(self, mel: Tensor) -> Tensor:
        mag, phase = self.generator.polar(mel)
        length, window = mel.shape[-1] * MEL.hop, self.generator.window
        cos, sin = torch.cos(phase), torch.sin(phase)
        if self.generator.phase_iterations:
            cos, sin = self.griffin_lim(mag, cos, sin, window, self.generator.phase_iterations)
        return istft_real(mag * cos, mag * sin, window, MEL.hop, length, (self.cos_basis, self.sin_basis))


def _vocos_init(module: nn.Module) -> None:
    if isinstance(module, (nn.Conv1d, nn.Linear)):
        # Vocos's truncated normal cuts at +-2 in absolute terms, 100 standard deviations out: a plain
        # normal is the same distribution and many times faster to draw (it is drawn again at every load)
        nn.init.normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)


# -- discriminators --------------------------------------------------------------------------------
Scores = tuple[list[Tensor], list[list[Tensor]]]  # a logit map per sub-discriminator, and its feature maps


def _conv_stack(convs: nn.ModuleList, post: nn.Module, x: Tensor) -> tuple[Tensor, list[Tensor]]:
    """A discriminator body: leaky-ReLU convolutions, then the output layer; every layer's output is kept
    for the feature-matching loss."""
    features = []
    for conv in convs:
        x = F.leaky_relu(conv(x), 0.1)
        features.append(x)
    x = post(x)
    features.append(x)
    return x, features


class PeriodDiscriminator(nn.Module):
    """HiFi-GAN's period discriminator: the waveform folded into `period` interleaved sequences, each
    read by the same strided convolutions along time. Run as 1-D convolutions over B * period
    sequences, which equals HiFi-GAN's (k, 1) 2-D kernels and is several times faster on a CPU."""

    def __init__(self, period: int, channels: int) -> None:
        super().__init__()
        self.period = period
        widths = [1, channels, channels * 2, channels * 4, channels * 8]
        self.convs = nn.ModuleList(weight_norm(nn.Conv1d(a, b, 5, 3, padding=2))
                                   for a, b in zip(widths, widths[1:], strict=False))
        self.convs.append(weight_norm(nn.Conv1d(widths[-1], widths[-1], 5, padding=2)))
        self.post = weight_norm(nn.Conv1d(widths[-1], 1, 3, padding=1))

    def forward(self, wav: Tensor) -> tuple[Tensor, list[Tensor]]:
        batch, length = wav.shape
        pad = -length % self.period
        x = F.pad(wav, (0, pad), mode="reflect").view(batch, -1, self.period)
        x = x.transpose(1, 2).reshape(batch * self.period, 1, -1)  # [B * period, 1, T / period]
        x, features = _conv_stack(self.convs, self.post, x)
        return x.reshape(batch, -1), features


class ResolutionDiscriminator(nn.Module):
    """2-D convolutions over one resolution's magnitude spectrogram [B, 1, frames, bins]."""

    def __init__(self, n_fft: int, hop: int, channels: int) -> None:
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        # Strided in frequency from the first layer: a quarter of UnivNet's cost at full resolution
        self.convs = nn.ModuleList([weight_norm(nn.Conv2d(1, channels, (3, 9), (1, 2), padding=(1, 4)))])
        for _ in range(3):  # halve the frequency axis three more times
            self.convs.append(weight_norm(nn.Conv2d(channels, channels, (3, 9), (1, 2), padding=(1, 4))))
        self.convs.append(weight_norm(nn.Conv2d(channels, channels, (3, 3), padding=(1, 1))))
        self.post = weight_norm(nn.Conv2d(channels, 1, (3, 3), padding=(1, 1)))

    def forward(self, wav: Tensor) -> tuple[Tensor, list[Tensor]]:
        # Scaled to unit window energy, so each resolution sees magnitudes of the same size
        scale = math.sqrt(3 * self.n_fft / 8)
        x = (magnitude(wav, self.n_fft, self.hop) / scale).transpose(1, 2).unsqueeze(1)
        x, features = _conv_stack(self.convs, self.post, x)
        return x.flatten(1), features


MRD_RESOLUTIONS = ((512, 128), (1024, 256), (2048, 512))  # (n_fft, hop), as UnivNet and Vocos


class Discriminators(nn.Module):
    """The chosen sub-discriminators, run on the same waveforms."""

    def __init__(self, cfg: VocoderConfig) -> None:
        super().__init__()
        subs: list[nn.Module] = []
        if "mpd" in cfg.discriminators:
            subs += [PeriodDiscriminator(p, cfg.disc_channels) for p in cfg.periods]
        if "mrd" in cfg.discriminators:
            subs += [ResolutionDiscriminator(n, h, cfg.disc_channels) for n, h in MRD_RESOLUTIONS]
        self.subs = nn.ModuleList(subs)

    def forward(self, wav: Tensor) -> Scores:
        logits, features = [], []
        for sub in self.subs:
            logit, maps = sub(wav)
            logits.append(logit)
            features.append(maps)
        return logits, features


# -- losses ----------------------------------------------------------------------------------------
def discriminator_loss(real: list[Tensor], fake: list[Tensor]) -> Tensor:
    """Least-squares GAN: real towards 1, fake towards 0, summed over sub-discriminators."""
    return torch.stack([(1 - r).square().mean() + f.square().mean() for r, f in zip(real, fake, strict=True)]).sum()


def generator_loss(fake: list[Tensor]) -> Tensor:
    return torch.stack([(1 - f).square().mean() for f in fake]).sum()


def feature_matching_loss(real: list[list[Tensor]], fake: list[list[Tensor]]) -> Tensor:
    """Mean L1 between feature maps on real (a fixed target) and generated audio, averaged over maps."""
    pairs = [(r, f) for maps_r, maps_f in zip(real, fake, strict=True) for r, f in zip(maps_r, maps_f, strict=True)]
    return torch.stack([(r.detach() - f).abs().mean() for r, f in pairs]).mean()


# -- the model -------------------------------------------------------------------------------------
class Vocoder(nn.Module):
    def __init__(self, cfg: VocoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.generator = Generator(cfg)
        self.discriminators = Discriminators(cfg) if cfg.adversarial else None
        self.mel = MelSpectrogram(MEL)
        self.stft_loss = MultiResolutionSTFTLoss()
        self.progress = 1.0  # share of training done; the Trainer sets it before each step

    def num_parameters(self, part: str = "generator") -> int:
        return sum(p.numel() for p in getattr(self, part).parameters())

    # -- what the Trainer calls -------------------------------------------------------------------
    def optimizer_phases(self) -> list[OptimizerPhase]:
        if self.discriminators is None:
            return [OptimizerPhase(SINGLE_PHASE, ("",))]
        return [OptimizerPhase("discriminator", ("discriminators.",), self.cfg.d_lr_scale),
                OptimizerPhase("generator", ("generator.",))]

    def input_mel(self, audio: Tensor) -> Tensor:
        """The mel frames the generator sees for a segment of S samples: S / hop of them, so the output
        has exactly S samples (the frame centred on sample S, half outside, is left out)."""
        return self.mel(audio)[..., : audio.shape[-1] // MEL.hop]

    def reconstruction_loss(self, fake: Tensor, real: Tensor) -> tuple[Tensor, Tensor]:
        """(weighted total, the log-mel L1 alone)."""
        mel_l1 = (self.mel(fake) - self.mel(real)).abs().mean()
        total = self.cfg.mel_weight * mel_l1
        if self.cfg.stft_weight:
            total = total + self.cfg.stft_weight * self.stft_loss(fake, real)
        return total, mel_l1

    def set_training_progress(self, progress: float) -> None:
        """Called by the Trainer before each step with the share of training done (of the steps, or of the
        time budget), which decides when a spectrum regression gives way to the waveform loss."""
        self.progress = progress

    def _through_iterations(self) -> bool:
        return self.cfg.magnitude_target == "waveform" and self.progress >= 1.0 - self.cfg.waveform_share

    def magnitude_loss(self, real: Tensor) -> tuple[Tensor, Tensor]:
        """(weighted total, the log-mel L1 alone) of the predicted magnitude against the real audio's STFT
        magnitude, frame for frame: the loss of phase=griffin_lim, where no waveform is made in training."""
        mel = self.input_mel(real)
        predicted, _ = self.generator.polar(mel, start_phase=False)
        target = magnitude(real, MEL.n_fft, MEL.hop)[..., : mel.shape[-1]]
        mel_l1 = (self.mel.from_magnitude(predicted) - mel).abs().mean()
        return self.cfg.mel_weight * mel_l1 + self.cfg.stft_weight * spectral_distance(predicted, target), mel_l1

    def training_step(self, batch: Batch, phase: str = SINGLE_PHASE, carry: PhaseCarry | None = None) -> Tensor:
        """The phase's loss on one batch. The adversarial phases share the batch's generated audio through
        `carry`, whichever runs first, and log the discriminators' mean scores (d_real, d_fake) and the
        mel L1 in `carry.metrics`."""
        carry = carry if carry is not None else PhaseCarry()
        real = batch["audio"]
        if phase == SINGLE_PHASE:
            if self.generator.predicts_phase or self._through_iterations():
                loss, mel_l1 = self.reconstruction_loss(self.generator(self.input_mel(real)), real)
            else:
                loss, mel_l1 = self.magnitude_loss(real)
            carry.metrics["mel_l1"] = mel_l1.detach()
            return loss
        if phase == "discriminator":
            return self._discriminator_step(real, carry)
        if phase == "generator":
            return self._generator_step(real, carry)
        raise ValueError(f"unknown phase '{phase}'")

    def _fake(self, real: Tensor, carry: PhaseCarry) -> Tensor:
        """This batch's generated audio, with the generator's graph while gradients are on: made by the
        first phase that needs it and handed to the other in `carry`."""
        fake = carry.values.get("fake")
        if fake is None or (torch.is_grad_enabled() and not fake.requires_grad):
            fake = carry.values["fake"] = self.generator(self.input_mel(real))
        return fake

    def _discriminator_step(self, real: Tensor, carry: PhaseCarry) -> Tensor:
        fake = self._fake(real, carry)
        d_real, _ = self.discriminators(real)
        d_fake, _ = self.discriminators(fake.detach())
        carry.metrics.update(d_real=torch.stack([x.mean() for x in d_real]).mean().detach(),
                             d_fake=torch.stack([x.mean() for x in d_fake]).mean().detach())
        return discriminator_loss(d_real, d_fake)

    def _generator_step(self, real: Tensor, carry: PhaseCarry) -> Tensor:
        fake = self._fake(real, carry)
        loss, mel_l1 = self.reconstruction_loss(fake, real)
        with frozen(self.discriminators):
            with torch.no_grad():
                _, features_real = self.discriminators(real)
            d_fake, features_fake = self.discriminators(fake)
        loss = (loss + self.cfg.adv_weight * generator_loss(d_fake)
                + self.cfg.fm_weight * feature_matching_loss(features_real, features_fake))
        carry.metrics["mel_l1"] = mel_l1.detach()
        return loss

    @torch.no_grad()
    def eval_step(self, batch: Batch) -> tuple[Tensor, int]:
        """(summed reconstruction loss over the batch, examples): the validation loss, the output waveform's
        weighted log-mel L1 and multi-resolution STFT distance, as `reconstruction_loss` per example. The
        waveform whatever the training loss: with phase=griffin_lim and the spectrum regression the kept
        weights are those whose Griffin-Lim output is best, and a switch to the waveform loss (which trades a
        little log-mel L1 for a lower STFT distance) is judged on the scores the evaluation reports."""
        real = batch["audio"]
        fake = self.generator(self.input_mel(real))
        total = sum(self.reconstruction_loss(fake[i:i + 1], real[i:i + 1])[0] for i in range(real.shape[0]))
        return total, real.shape[0]

    # -- inference --------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.generator.head.weight.device

    def vocode(self, mel: Tensor, iterations: int | None = None) -> Tensor:
        """Waveform [..., F * hop] from log-mel [..., n_mels, F], in eval mode, without gradients; with
        `iterations` of the Griffin-Lim phase instead of the `phase_iterations` the model was trained with."""
        lead = mel.shape[:-2]
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode():
                wav = self.generator(mel.reshape(-1, *mel.shape[-2:]).to(self.device, torch.float32), iterations)
        finally:
            self.train(was_training)
        return wav.reshape(*lead, wav.shape[-1]).float()
