"""A denoising diffusion model (Ho et al. 2020) with DDIM sampling (Song et al. 2021) and classifier-free
guidance (Ho & Salimans 2022), in one file.

Training adds Gaussian noise to an image x0 at a random timestep t,
x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, and a U-Net learns to predict from x_t the noise eps, the
clean image x0 or the velocity v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0 (`prediction`), with a mean
squared error, plain or min-SNR weighted (Hang et al. 2023: as an error on x0 weighted min(SNR, 5); the
plain loss on v weights it SNR + 1, so nearly clean timesteps crowd out the noisy ones where the picture's
layout and class are decided). abar_t falls from about 1 to about 0 along a linear (Ho et al.) or cosine
(Nichol & Dhariwal 2021) schedule. A conditional model also sees the class, replaced by a learned "null"
class for a share of the training images, so one network gives both the conditional and the unconditional
prediction and sampling can push the former away from the latter (guidance scale w:
out = out_null + w (out_label - out_null); w = 1 is the plain conditional model).

The U-Net: a 3x3 conv, then per resolution level residual blocks (GroupNorm, SiLU, 3x3 convs, the time
and class embedding added in between, or scaling and shifting the second GroupNorm's output) with
self-attention at low resolutions, a strided conv down to the next level; a middle of block, attention,
block; the mirror path up with the skip connections concatenated; GroupNorm, SiLU and a zero-initialised
3x3 conv out.

Sampling walks a subsequence of the training timesteps (evenly spaced, or denser at low noise). Each step
predicts x0 (clipped to [-1, 1]) and eps, then takes DDIM's update x_prev = sqrt(abar_prev) x0 + sqrt(1 -
abar_prev - s^2) eps + s z with s = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev):
eta = 0 is the deterministic DDIM sampler, eta = 1 is ancestral DDPM sampling (s^2 is then the variance of
the true posterior q(x_prev | x_t, x0), and with every timestep it is Ho et al.'s sampler). DPM-Solver++(2M)
(Lu et al. 2022) takes the same step with x0 extrapolated in the half log-SNR from this prediction and the
last (second order, deterministic). The same loop does image-to-image (SDEdit, Meng et al. 2022: start from
the picture noised to a fraction `strength` of the way) and inpainting (at every step the known pixels are
replaced by the picture noised to that step, as in RePaint's simplest form, so they come out exactly as
given).

Read top to bottom: config, schedules, U-Net blocks, U-Net, the diffusion model (loss, then sampling).
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from torch import Tensor, nn

from muselab.core.config import Section
from muselab.core.errors import ControlError
from muselab.image.controls import Spacing
from muselab.image.gan import check_conditioning, check_size
from muselab.nn import evaluating

Batch = dict[str, Tensor]  # "image" float [B, C, H, W] in [-1, 1], "label" int64 [B] (zeros if unlabelled)

MIN_RESOLUTION = 2  # the lowest U-Net level is at least 2x2 pixels
# The guidance scale of a model nobody has calibrated yet (`muselab evaluate` chooses one per run on held-out
# images): 1.5 trades a little control for recall against 2 on digits, 99.9 % / 0.76 against 99.95 % / 0.72,
# and on shapes 84.0 % / 0.80 against 86.7 % / 0.74 (control accuracy / recall; image_models_*_defaults.json)
DEFAULT_GUIDANCE = 1.5
GROUPS = 8  # GroupNorm groups (fewer when a layer has fewer channels)


class DiffusionConfig(Section):
    size: int = Field(8, description="image height and width: a power of two from 8 to 256")
    channels: Literal[1, 3] = Field(1, description="1 = greyscale, 3 = RGB")
    num_classes: int = Field(0, ge=0, description="number of classes; set from the data (0 = unlabelled)")
    conditional: bool = Field(False, description="condition the U-Net on the class label (needed for --label "
                                                 "and --guidance)")
    width: int = Field(32, ge=8, description="channels at full resolution (a multiple of 8)")
    channel_mult: list[int] = Field([], description="channels of each resolution level as a multiple of width; "
                                                    "each level after the first halves the resolution ([] = "
                                                    "1, 2, 2, ... down to 4x4)")
    res_blocks: int = Field(1, ge=1, description="residual blocks per level on the way down (one more up)")
    attention_resolution: int = Field(4, ge=0, description="self-attention in levels at this resolution or "
                                                           "lower (0 = none)")
    heads: int = Field(4, ge=1, description="attention heads")
    scale_shift: bool = Field(False, description="the time and class embedding scales and shifts each residual "
                                                 "block's normalised features (adaptive GroupNorm) instead of "
                                                 "being added to them; the presets turn it on (off here so "
                                                 "runs trained before it load as they were)")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout inside the residual blocks")
    timesteps: int = Field(1000, ge=2, description="noise levels of the forward process")
    schedule: Literal["linear", "cosine"] = Field("cosine", description="noise schedule: linear betas (Ho et al. "
                                                                        "2020) or cosine abar (Nichol & "
                                                                        "Dhariwal 2021)")
    # v (Salimans & Ho 2022) by default: on builtin:shapes in 15 minutes, control accuracy 84 % against 33 %
    # for the noise (benchmarks/results/image_models_shapes_defaults.json, image_models_shapes_w16b32.json)
    prediction: Literal["epsilon", "x0", "v"] = Field("v", description="what the U-Net predicts: the noise, "
                                                                       "the clean image, or the velocity v")
    loss_weighting: Literal["none", "min_snr"] = Field("none", description="none: the plain error of the "
                                                                            "prediction; min_snr: weighted as an "
                                                                            "x0 error times min(SNR, snr_gamma) "
                                                                            "(Hang et al. 2023)")
    snr_gamma: float = Field(5.0, gt=0, description="the SNR cap of min_snr weighting")
    class_dropout: float = Field(0.1, ge=0, lt=1, description="share of training images shown as the null class "
                                                              "(conditional models), for classifier-free guidance")

    @field_validator("size")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        return check_size(value)

    @field_validator("width")
    @classmethod
    def _multiple_of_eight(cls, value: int) -> int:
        if value % 8:
            raise ValueError("must be a multiple of 8 (GroupNorm groups)")
        return value

    @field_validator("channel_mult")
    @classmethod
    def _positive(cls, value: list[int]) -> list[int]:
        if any(m < 1 for m in value):
            raise ValueError("every multiple must be 1 or more")
        return value

    @model_validator(mode="after")
    def _levels_fit(self) -> DiffusionConfig:
        if self.size >> (len(self.levels()) - 1) < MIN_RESOLUTION:
            raise ValueError(f"{len(self.channel_mult)} levels halve a {self.size}x{self.size} image below "
                             f"{MIN_RESOLUTION}x{MIN_RESOLUTION}: shorten model.channel_mult")
        return self

    def levels(self) -> list[int]:
        """The channel multiple of each level: the configured ones, or 1, 2, 2, ... down to 4x4."""
        return self.channel_mult or [1] + [2] * (int(math.log2(self.size)) - 2)


# -- noise schedules ----------------------------------------------------------------------------------

def alphas_cumprod(schedule: str, timesteps: int) -> Tensor:
    """abar_t for t = 0 .. timesteps-1 (float64): the share of the signal's variance left at step t."""
    if schedule == "linear":
        # Ho et al.'s betas 1e-4 .. 0.02 for 1,000 steps, scaled so other lengths reach the same noise
        scale = 1000 / timesteps
        betas = torch.linspace(scale * 1e-4, min(scale * 0.02, 0.999), timesteps, dtype=torch.float64)
        return torch.cumprod(1.0 - betas, dim=0)
    if schedule == "cosine":
        s = 0.008
        f = torch.cos((torch.arange(timesteps + 1, dtype=torch.float64) / timesteps + s) / (1 + s) * math.pi / 2) ** 2
        # betas capped at 0.999 as in Nichol & Dhariwal, so the last step does not divide by zero
        betas = (1.0 - f[1:] / f[:-1]).clamp(max=0.999)
        return torch.cumprod(1.0 - betas, dim=0)
    raise ValueError(f"unknown schedule '{schedule}'")


SPACINGS = get_args(Spacing)
SIGMA_MAX = 80.0  # noise-to-signal ratio where log_snr and karras spacings start (EDM's): x_t is noise there


def sampling_timesteps(timesteps: int, steps: int, spacing: str = "uniform", abar: Tensor | None = None) -> Tensor:
    """`steps` distinct timesteps from timesteps-1 down to 0, both included. uniform: evenly spaced in t;
    quadratic: in sqrt(t), denser at low noise (DDIM's choice for CIFAR-10); log_snr: evenly in the half
    log-SNR (DPM-Solver's choice for small images); karras: evenly in sigma^(1/7), sigma =
    sqrt((1 - abar) / abar) (Karras et al. 2022). The last two need the schedule `abar` and spread the steps
    after the first from sigma 80 down, each level going to the nearest timestep."""
    if not 1 <= steps <= timesteps:
        raise ControlError(f"--steps must be from 1 to {timesteps} (the model's noise levels), got {steps}")
    if spacing not in SPACINGS:
        raise ControlError(f"unknown spacing '{spacing}': choose one of {', '.join(SPACINGS)}")
    if steps == 1:
        return torch.tensor([timesteps - 1])
    if spacing == "uniform":
        return torch.linspace(timesteps - 1, 0, steps, dtype=torch.float64).round().long()
    if spacing == "quadratic":
        chosen = (torch.linspace(1, 0, steps, dtype=torch.float64) ** 2 * (timesteps - 1)).round().long()
    else:
        if abar is None:
            raise ValueError(f"the {spacing} spacing needs the schedule's abar")
        sigma = ((1 - abar.double()) / abar.double()).sqrt().clamp(max=SIGMA_MAX)
        level = -sigma.log() if spacing == "log_snr" else sigma ** (1 / 7)  # monotonic in t
        targets = torch.linspace(float(level[-1]), float(level[0]), steps, dtype=torch.float64)
        chosen = (level[None, :] - targets[:, None]).abs().argmin(dim=1)
    # rounded timesteps can coincide where the steps are dense: keep them distinct, first from the noisy end
    # down, then from 0 up, so both ends stay and the count stays `steps`
    chosen[0] = timesteps - 1
    for i in range(1, steps):
        chosen[i] = min(int(chosen[i]), int(chosen[i - 1]) - 1)
    chosen[-1] = 0
    for i in range(steps - 2, -1, -1):
        chosen[i] = max(int(chosen[i]), int(chosen[i + 1]) + 1)
    return chosen


def _half_log_snr(abar: Tensor) -> Tensor:
    """lambda = log(alpha / sigma) = log(abar / (1 - abar)) / 2, the time variable of DPM-Solver."""
    return 0.5 * (abar.log() - (1 - abar).log())


# -- U-Net blocks -----------------------------------------------------------------------------------------

def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(GROUPS, channels), channels)


def timestep_embedding(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding of integer timesteps [B] -> [B, dim] (as the Transformer's positions)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs[None]
    return torch.cat((angles.sin(), angles.cos()), dim=1)


class ResBlock(nn.Module):
    """GroupNorm, SiLU, conv; the embedding added (or, with `scale_shift`, the second GroupNorm's output
    scaled and shifted by it: adaptive group normalisation, Dhariwal & Nichol 2021); GroupNorm, SiLU, conv."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, scale_shift: bool = False) -> None:
        super().__init__()
        self.scale_shift = scale_shift
        self.norm1, self.conv1 = _norm(in_ch), nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch if scale_shift else out_ch)
        self.norm2, self.dropout = _norm(out_ch), nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity: deep U-Nets train from step 0
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        e = self.emb(F.silu(emb))[:, :, None, None]
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + e)
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head self-attention over the pixels of a feature map, with a residual connection."""

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        self.heads = math.gcd(heads, channels)
        self.norm = _norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).transpose(3, 4).unbind(1)
        y = F.scaled_dot_product_attention(q, k, v)  # [b, heads, hw, c/heads]
        return x + self.out(y.transpose(2, 3).reshape(b, c, h, w))


class Level(nn.Module):
    """Residual blocks (each followed by attention at low resolution) of one U-Net level."""

    def __init__(self, in_chs: list[int], out_ch: int, emb_dim: int, attend: bool, cfg: DiffusionConfig) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(ResBlock(c, out_ch, emb_dim, cfg.dropout, cfg.scale_shift) for c in in_chs)
        self.attn = nn.ModuleList(Attention(out_ch, cfg.heads) if attend else nn.Identity() for _ in in_chs)


class UNet(nn.Module):
    def __init__(self, cfg: DiffusionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        emb_dim = 4 * cfg.width
        self.time_mlp = nn.Sequential(nn.Linear(cfg.width, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        # the last row is the null class of classifier-free guidance
        self.class_embed = nn.Embedding(cfg.num_classes + 1, emb_dim) if cfg.conditional else None
        chans = [cfg.width * m for m in cfg.levels()]
        self.stem = nn.Conv2d(cfg.channels, chans[0], 3, padding=1)
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        skips, ch, res = [chans[0]], chans[0], cfg.size
        for i, out_ch in enumerate(chans):
            attend = res <= cfg.attention_resolution
            self.down.append(Level([ch] + [out_ch] * (cfg.res_blocks - 1), out_ch, emb_dim, attend, cfg))
            ch = out_ch
            skips += [ch] * cfg.res_blocks
            if i < len(chans) - 1:
                self.downsample.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skips.append(ch)
                res //= 2
        self.mid1 = ResBlock(ch, ch, emb_dim, cfg.dropout, cfg.scale_shift)
        self.mid_attn = Attention(ch, cfg.heads)
        self.mid2 = ResBlock(ch, ch, emb_dim, cfg.dropout, cfg.scale_shift)
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for i, out_ch in reversed(list(enumerate(chans))):
            attend = res <= cfg.attention_resolution
            ins = []
            for _ in range(cfg.res_blocks + 1):
                ins.append(ch + skips.pop())
                ch = out_ch
            self.up.append(Level(ins, out_ch, emb_dim, attend, cfg))
            if i > 0:
                self.upsample.append(nn.Conv2d(ch, ch, 3, padding=1))
                res *= 2
        self.out_norm = _norm(ch)
        self.out = nn.Conv2d(ch, cfg.channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        """The prediction [B, C, H, W] for noisy images x [B, C, H, W] at timesteps t [B]; labels [B] (the
        null class is `num_classes`) for conditional models."""
        emb = self.time_mlp(timestep_embedding(t, self.cfg.width))
        if self.class_embed is not None:
            emb = emb + self.class_embed(labels)
        h = self.stem(x)
        skips = [h]
        for i, level in enumerate(self.down):
            for block, attn in zip(level.blocks, level.attn, strict=True):
                h = attn(block(h, emb))
                skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
                skips.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for i, level in enumerate(self.up):
            for block, attn in zip(level.blocks, level.attn, strict=True):
                h = attn(block(torch.cat((h, skips.pop()), dim=1), emb))
            if i < len(self.upsample):
                h = self.upsample[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.out(F.silu(self.out_norm(h)))


# -- the diffusion model ----------------------------------------------------------------------------------

class Diffusion(nn.Module):
    def __init__(self, cfg: DiffusionConfig) -> None:
        super().__init__()
        check_conditioning(cfg)
        self.cfg = cfg
        self.net = UNet(cfg)
        # Made from the config, so not saved (persistent=False) and untouched by the Trainer's EMA
        self.register_buffer("abar", alphas_cumprod(cfg.schedule, cfg.timesteps).float(), persistent=False)
        self.guidance = DEFAULT_GUIDANCE  # what sample() uses unless told: the run's calibrated scale once known

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @property
    def device(self) -> torch.device:
        return self.abar.device

    @property
    def null_class(self) -> int:
        return self.cfg.num_classes

    def _coefficients(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """sqrt(abar_t) and sqrt(1 - abar_t), shaped [B, 1, 1, 1] for timesteps [B]."""
        abar = self.abar[t].view(-1, 1, 1, 1)
        return abar.sqrt(), (1.0 - abar).sqrt()

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise."""
        a, s = self._coefficients(t)
        return a * x0 + s * noise

    # -- loss -------------------------------------------------------------------------------------------
    def target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        if self.cfg.prediction == "epsilon":
            return noise
        if self.cfg.prediction == "x0":
            return x0
        a, s = self._coefficients(t)
        return a * noise - s * x0

    def training_step(self, batch: Batch) -> Tensor:
        """Mean squared error of the prediction at a random timestep per image (global RNG: the Trainer
        seeds it per step)."""
        x0 = batch["image"]
        t = torch.randint(0, self.cfg.timesteps, (x0.size(0),), device=x0.device)
        noise = torch.randn_like(x0)
        labels = None
        if self.cfg.conditional:
            drop = torch.rand(x0.size(0), device=x0.device) < self.cfg.class_dropout
            labels = torch.where(drop, torch.full_like(batch["label"], self.null_class), batch["label"])
        out = self.net(self.add_noise(x0, noise, t), t, labels)
        error = (out.float() - self.target(x0, noise, t).float()).pow(2).mean(dim=(1, 2, 3))
        return (error * self.loss_weights(t)).mean()

    def loss_weights(self, t: Tensor) -> Tensor:
        """Per-image weights [B] of the prediction's squared error. min_snr: the x0 error is weighted
        min(SNR, gamma), which is min(SNR, gamma) / SNR on the noise's error and min(SNR, gamma) / (SNR + 1)
        on v's, since x0's error is the noise's over sqrt(SNR) and v's times sqrt(1 - abar)."""
        if self.cfg.loss_weighting == "none":
            return torch.ones_like(t, dtype=torch.float32)
        abar = self.abar[t]
        snr = abar / (1 - abar)
        capped = snr.clamp(max=self.cfg.snr_gamma)
        if self.cfg.prediction == "epsilon":
            return capped / snr
        if self.cfg.prediction == "x0":
            return capped
        return capped / (snr + 1)

    # -- sampling -----------------------------------------------------------------------------------------
    def predict(self, x: Tensor, t: int, labels: Tensor | None, guidance: float) -> tuple[Tensor, Tensor]:
        """(x0, eps) predicted from x_t at one timestep t; x0 clipped to [-1, 1] and eps made consistent
        with it. A conditional model with guidance != 1 runs labelled and null rows in one batch."""
        n = x.size(0)
        ts = torch.full((n,), t, device=x.device, dtype=torch.long)
        if labels is not None and guidance != 1.0:
            both = self.net(torch.cat((x, x)), torch.cat((ts, ts)),
                            torch.cat((labels, torch.full_like(labels, self.null_class))))
            cond, uncond = both.float().chunk(2)
            out = uncond + guidance * (cond - uncond)
        else:
            out = self.net(x, ts, labels).float()
        a, s = self._coefficients(ts)
        if self.cfg.prediction == "epsilon":
            x0 = (x - s * out) / a
        elif self.cfg.prediction == "x0":
            x0 = out
        else:
            x0 = a * x - s * out
        x0 = x0.clamp(-1.0, 1.0)
        return x0, (x - a * x0) / s

    def _labels(self, labels: Tensor | int | None, n: int) -> Tensor | None:
        if not self.cfg.conditional:
            if labels is not None:
                raise ControlError("this model was trained without labels: generate without a label")
            return None
        if labels is None:  # no label: the unconditional (null-class) model
            return torch.full((n,), self.null_class, dtype=torch.long, device=self.device)
        labels = torch.as_tensor(labels, dtype=torch.long, device=self.device)
        labels = labels.expand(n) if labels.dim() == 0 else labels
        if labels.shape != (n,) or bool(((labels < 0) | (labels >= self.cfg.num_classes)).any()):
            raise ControlError(f"give one label or one per image ({n}), each from 0 to {self.cfg.num_classes - 1}")
        return labels

    def _noise(self, shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
        # Drawn on the generator's device (the CPU by default), so a seed gives the same noise on any device
        where = generator.device if generator is not None else torch.device("cpu")
        return torch.randn(shape, generator=generator, device=where).to(self.device)

    @torch.no_grad()
    def sample(self, n: int, labels: Tensor | int | None = None, *, steps: int = 50, eta: float = 0.0,
               order: int = 1, guidance: float | None = None, generator: torch.Generator | None = None,
               noise: Tensor | None = None, init: Tensor | None = None, strength: float = 1.0,
               mask: Tensor | None = None, spacing: str = "uniform") -> Tensor:
        """n images [n, C, H, W] in [-1, 1].

        steps: timesteps visited, spread over the noise levels as `spacing` says (`sampling_timesteps`);
        eta: 0 = deterministic DDIM, 1 = ancestral DDPM; order 2: DPM-Solver++(2M) (deterministic, eta 0);
        guidance: classifier-free guidance scale (conditional models; 1 = none; default self.guidance); noise:
        the starting noise [n, C, H, W] (default: drawn from `generator`). init: a picture [1 or n, C, H, W]
        in [-1, 1] to start from, noised to `strength` of the way (0 returns it, 1 ignores it); mask [1 or n,
        1, H, W]: 1 where the picture is to be redrawn, 0 where it is kept exactly (needs init)."""
        cfg = self.cfg
        if not 0.0 <= strength <= 1.0:
            raise ControlError(f"--strength must be from 0 to 1, got {strength}")
        if mask is not None and init is None:
            raise ControlError("--mask needs --init-image: the picture whose unmasked pixels are kept")
        if order not in (1, 2):
            raise ValueError(f"order is 1 (DDIM, DDPM) or 2 (DPM-Solver++(2M)), got {order}")
        if order == 2 and eta > 0:
            raise ControlError("the second-order sampler is deterministic: leave --eta at 0 (or use --sampler ddim)")
        labels = self._labels(labels, n)
        guidance = self.guidance if guidance is None else guidance
        shape = (n, cfg.channels, cfg.size, cfg.size)
        schedule = sampling_timesteps(cfg.timesteps, steps, spacing, self.abar)
        if init is not None:
            init = init.to(self.device, torch.float32).expand(shape)
            mask = None if mask is None else mask.to(self.device, torch.float32).expand(n, 1, cfg.size, cfg.size)
            schedule = schedule[len(schedule) - round(len(schedule) * strength):]  # the last strength share
            if not len(schedule):
                return init.clone()
        x = noise.to(self.device, torch.float32) if noise is not None else self._noise(shape, generator)
        if init is not None and strength < 1.0:  # strength 1 starts from pure noise: the picture is ignored
            x = self.add_noise(init, x, schedule[:1].expand(n).to(self.device))
        earlier: tuple[Tensor, Tensor] | None = None  # the last step's x0 and log-SNR step (second order)
        with evaluating(self):
            for i, t in enumerate(schedule.tolist()):
                prev = int(schedule[i + 1]) if i + 1 < len(schedule) else -1
                x0, eps = self.predict(x, t, labels, guidance)
                abar_t = self.abar[t]
                abar_prev = self.abar[prev] if prev >= 0 else torch.ones_like(abar_t)
                if order == 2 and prev >= 0:
                    # DPM-Solver++(2M) (Lu et al. 2022) is DDIM's step with x0 extrapolated linearly in the
                    # half log-SNR from this prediction and the last. The last two steps stay first order: evenly
                    # spaced timesteps leave the log-SNR a long last stride (cosine, 25 steps: 2.5 to 5.1), where
                    # the extrapolation overshoots
                    h = _half_log_snr(abar_prev) - _half_log_snr(abar_t)
                    raw = x0
                    if earlier is not None and i + 2 < len(schedule):
                        x0 = x0 + (x0 - earlier[0]) * h / (2 * earlier[1])
                        eps = (x - abar_t.sqrt() * x0) / (1 - abar_t).sqrt()
                    earlier = (raw, h)
                sigma = eta * ((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)).clamp(min=0).sqrt()
                x = abar_prev.sqrt() * x0 + (1 - abar_prev - sigma ** 2).clamp(min=0).sqrt() * eps
                if prev >= 0 and eta > 0:
                    x = x + sigma * self._noise(shape, generator)
                if mask is not None:
                    known = init if prev < 0 else (abar_prev.sqrt() * init
                                                   + (1 - abar_prev).sqrt() * self._noise(shape, generator))
                    x = mask * x + (1 - mask) * known
        return x.clamp(-1.0, 1.0)
