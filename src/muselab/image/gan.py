"""A DCGAN-style generative adversarial network, in one file.

The generator maps a latent z (and, when conditional, a class embedding) through a linear layer to a
4x4 feature map, then doubles the resolution once per block (transposed 4x4 conv, BatchNorm, ReLU),
halving the channels, until the image size; a 3x3 conv and tanh make the image. The discriminator
mirrors it: a 3x3 conv, one strided 4x4 conv per halving (LeakyReLU 0.2; BatchNorm only when neither
spectral normalisation, which takes its place, nor the gradient penalty, which needs a per-image
function, is on) down to 4x4, then a linear layer to one logit. Class conditioning in the discriminator is either projection
(Miyato & Koyama 2018: logit += <embed(y), phi(x)>) or concatenation of a label map as extra input
channels. Losses: non-saturating, hinge and WGAN-GP. DiffAugment (Zhao et al. 2020) may transform
real and generated images alike before the discriminator.

Training has two optimizer phases run on the same real batch, discriminator first (see
`GAN.optimizer_phases`). Read top to bottom: config, helpers shared with the VAE, blocks, generator,
discriminator, losses, the GAN module.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from muselab.core.config import Section
from muselab.core.errors import ControlError
from muselab.core.trainer import OptimizerPhase, PhaseCarry
from muselab.image.augment import diff_augment, parse_policy
from muselab.nn import evaluating, frozen

Batch = dict[str, Tensor]  # "image" float [B, C, H, W] in [-1, 1], "label" int64 [B] (zeros if unlabelled)

MAX_WIDTH_MULTIPLIER = 8  # channels never exceed 8 x width (DCGAN's 4x4 stage), so 256x256 stays affordable
LABEL_MAP_CHANNELS = 16  # label embedding channels the "concat" discriminator reads beside the image


class GANConfig(Section):
    size: int = Field(32, description="image height and width: a power of two from 8 to 256")
    channels: Literal[1, 3] = Field(3, description="1 = greyscale, 3 = RGB")
    num_classes: int = Field(0, ge=0, description="number of classes; set from the data (0 = unlabelled)")
    conditional: bool = Field(False, description="condition both networks on the class label")
    latent_dim: int = Field(128, ge=1, description="size of the latent vector z")
    width: int = Field(64, ge=1, description="channels at full resolution; each halving doubles them, "
                                             f"up to {MAX_WIDTH_MULTIPLIER} x width")
    loss: Literal["nonsaturating", "hinge", "wgan-gp"] = Field(
        "hinge", description="adversarial loss: non-saturating (softplus), hinge, or Wasserstein with "
                             "gradient penalty")
    gp_weight: float = Field(10.0, ge=0, description="weight of the gradient penalty (wgan-gp only)")
    spectral_norm: bool = Field(True, description="spectral normalisation of the discriminator's layers")
    conditioning: Literal["projection", "concat"] = Field(
        "projection", description="how the discriminator reads the label: projection (Miyato & Koyama "
                                  "2018) or a label map concatenated to the image")
    diffaugment: str = Field("", description="DiffAugment transforms for real and fake images before the "
                                             "discriminator, comma-separated from translation, cutout, "
                                             "color ('' = off)")
    d_lr_scale: float = Field(1.0, gt=0, description="discriminator learning rate as a multiple of the "
                                                     "generator's (two-time-scale update rule)")
    generator_conditioning: Literal["input", "batchnorm"] = Field(
        "input", description="how the generator reads the label: a class embedding beside z at the input, "
                             "or that plus class-conditional BatchNorm gains and biases in every block "
                             "(as in SNGAN and BigGAN)")
    aux_classifier: float = Field(0.0, ge=0, description="weight of an auxiliary classifier on the "
                                                         "discriminator's features (AC-GAN, Odena et al. 2017; "
                                                         "conditional models only, 0 = off): the discriminator "
                                                         "learns the classes of real images and the generator "
                                                         "is rewarded for fakes it classifies as their label")

    @field_validator("size")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        return check_size(value)

    @field_validator("diffaugment")
    @classmethod
    def _known_transforms(cls, value: str) -> str:
        return ",".join(parse_policy(value))


# -- helpers shared with the VAE ----------------------------------------------------------------
def check_size(size: int) -> int:
    """Image sizes the 4x4-based networks support (shared with the VAE's config)."""
    if size < 8 or size > 256 or size & (size - 1):
        raise ValueError("must be a power of two from 8 to 256")
    return size


def stage_channels(size: int, width: int) -> list[int]:
    """Channels at 4x4, 8x8, ... up to `size`: width at full resolution, doubling per halving, capped."""
    n_blocks = int(math.log2(size)) - 2
    return [width * min(2 ** (n_blocks - i), MAX_WIDTH_MULTIPLIER) for i in range(n_blocks + 1)]


def check_conditioning(cfg: GANConfig | Section) -> None:
    if cfg.conditional and cfg.num_classes < 2:
        raise ValueError(f"a conditional model needs at least 2 classes, got num_classes={cfg.num_classes}: "
                         "use labelled data or train unconditionally")


def resolve_labels(labels: Tensor | int | None, n: int, cfg: GANConfig | Section,
                   device: torch.device) -> Tensor | None:
    """Check the labels given for sampling against the model: one label for all n, or one per item."""
    if not cfg.conditional:
        if labels is not None:
            raise ControlError("this model was trained without labels: generate without a label")
        return None
    if labels is None:
        raise ControlError(f"this model is conditional: give a label from 0 to {cfg.num_classes - 1}")
    labels = torch.as_tensor(labels, dtype=torch.long, device=device)
    if labels.dim() == 0:
        labels = labels.expand(n)
    elif labels.shape != (n,):
        raise ControlError(f"give one label, or one per image ({n}), not {labels.numel()}")
    if bool(((labels < 0) | (labels >= cfg.num_classes)).any()):
        raise ControlError(f"labels must be from 0 to {cfg.num_classes - 1}, got {sorted(set(labels.tolist()))}")
    return labels


# -- blocks ----------------------------------------------------------------------------------------
def dcgan_init(module: nn.Module) -> None:
    """N(0, 0.02) weights and zero biases (Radford et al. 2016); BatchNorm scales N(1, 0.02); class
    BatchNorm's per-class offsets zero (`Module.apply` reaches a module after its children, so this
    overrides its embedding's normal draw)."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)
        if isinstance(module, ClassBatchNorm2d):
            nn.init.zeros_(module.class_affine.weight)


class ClassBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm whose gain and bias also depend on the class (de Vries et al. 2017): the shared affine
    parameters plus a per-class offset, which starts at zero, so an untrained model is plain BatchNorm."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__(channels)
        self.class_affine = nn.Embedding(num_classes, 2 * channels)

    def forward(self, x: Tensor, labels: Tensor) -> Tensor:  # type: ignore[override]
        gain, bias = self.class_affine(labels)[:, :, None, None].chunk(2, dim=1)
        return super().forward(x) * (1.0 + gain) + bias


class UpBlock(nn.Module):
    """Double the resolution: transposed 4x4 conv (stride 2), BatchNorm (class-conditional when given the
    number of classes), ReLU."""

    def __init__(self, in_ch: int, out_ch: int, num_classes: int = 0) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose2d(in_ch, out_ch, 4, stride=2, padding=1, bias=False)
        self.reads_labels = num_classes > 0
        self.norm = ClassBatchNorm2d(out_ch, num_classes) if self.reads_labels else nn.BatchNorm2d(out_ch)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        x = self.conv(x)
        x = self.norm(x, labels) if self.reads_labels else self.norm(x)
        return F.relu(x, inplace=True)


class DownBlock(nn.Sequential):
    """Halve the resolution: strided 4x4 conv, optional BatchNorm, LeakyReLU 0.2."""

    def __init__(self, in_ch: int, out_ch: int, batch_norm: bool) -> None:
        layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, 4, stride=2, padding=1, bias=not batch_norm)]
        if batch_norm:
            # The discriminator only ever runs in training mode: running statistics would be unused state
            # (and would differ between data-parallel processes, which each update them on their own data)
            layers.append(nn.BatchNorm2d(out_ch, track_running_stats=False))
        layers.append(nn.LeakyReLU(0.2, inplace=True))
        super().__init__(*layers)


# -- generator -------------------------------------------------------------------------------------
class Generator(nn.Module):
    def __init__(self, cfg: GANConfig) -> None:
        super().__init__()
        chans = stage_channels(cfg.size, cfg.width)
        # Conditioning by concatenation: z and the class embedding enter the first layer together
        self.label_embed = nn.Embedding(cfg.num_classes, cfg.latent_dim) if cfg.conditional else None
        in_dim = cfg.latent_dim * (2 if cfg.conditional else 1)
        self.stem = nn.Sequential(nn.Linear(in_dim, chans[0] * 16, bias=False), nn.Unflatten(1, (chans[0], 4, 4)),
                                  nn.BatchNorm2d(chans[0]), nn.ReLU(inplace=True))
        block_classes = cfg.num_classes if cfg.conditional and cfg.generator_conditioning == "batchnorm" else 0
        self.blocks = nn.ModuleList(UpBlock(a, b, block_classes) for a, b in zip(chans, chans[1:], strict=False))
        self.to_image = nn.Conv2d(chans[-1], cfg.channels, 3, padding=1)
        self.apply(dcgan_init)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        if self.label_embed is not None:
            z = torch.cat((z, self.label_embed(labels)), dim=1)
        x = self.stem(z)
        for block in self.blocks:
            x = block(x, labels)
        return torch.tanh(self.to_image(x))


# -- discriminator ---------------------------------------------------------------------------------
class Discriminator(nn.Module):
    def __init__(self, cfg: GANConfig) -> None:
        super().__init__()
        chans = stage_channels(cfg.size, cfg.width)[::-1]  # full resolution first
        self.batch_norm = not cfg.spectral_norm and cfg.loss != "wgan-gp"
        self.label_map = (nn.Embedding(cfg.num_classes, LABEL_MAP_CHANNELS)
                          if cfg.conditional and cfg.conditioning == "concat" else None)
        in_ch = cfg.channels + (LABEL_MAP_CHANNELS if self.label_map is not None else 0)
        self.from_image = nn.Sequential(nn.Conv2d(in_ch, chans[0], 3, padding=1), nn.LeakyReLU(0.2, inplace=True))
        self.blocks = nn.Sequential(*(DownBlock(a, b, self.batch_norm)
                                      for a, b in zip(chans, chans[1:], strict=False)))
        features = chans[-1] * 16
        self.to_logit = nn.Linear(features, 1)
        projection = cfg.conditional and cfg.conditioning == "projection"
        self.label_embed = nn.Embedding(cfg.num_classes, features) if projection else None
        self.classifier = nn.Linear(features, cfg.num_classes) if cfg.conditional and cfg.aux_classifier else None
        self.apply(dcgan_init)
        if cfg.spectral_norm:
            # Not the auxiliary classifier: its logits need room to grow (with a unit spectral norm on the
            # small features of this network, its cross-entropy stayed near chance on builtin:shapes)
            for module in self.modules():
                if isinstance(module, (nn.Conv2d, nn.Linear, nn.Embedding)) and module is not self.classifier:
                    spectral_norm(module)

    def forward(self, images: Tensor, labels: Tensor | None = None) -> Tensor:
        """One logit per image, [B]."""
        return self.logits(images, labels)[0]

    def logits(self, images: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """The real/fake logit [B] and, with an auxiliary classifier, the class logits [B, classes]."""
        x = images
        if self.label_map is not None:
            label_map = self.label_map(labels)[:, :, None, None].expand(-1, -1, *images.shape[2:])
            x = torch.cat((x, label_map), dim=1)
        phi = self.blocks(self.from_image(x)).flatten(1)
        logit = self.to_logit(phi).squeeze(1)
        if self.label_embed is not None:
            logit = logit + (self.label_embed(labels) * phi).sum(1)
        return logit, None if self.classifier is None else self.classifier(phi)


# -- losses ----------------------------------------------------------------------------------------
def discriminator_loss(kind: str, d_real: Tensor, d_fake: Tensor) -> Tensor:
    """Mean loss over the batch, without the gradient penalty."""
    if kind == "nonsaturating":
        return F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
    if kind == "hinge":
        return F.relu(1.0 - d_real).mean() + F.relu(1.0 + d_fake).mean()
    return d_fake.mean() - d_real.mean()


def generator_loss(kind: str, d_fake: Tensor) -> Tensor:
    if kind == "nonsaturating":
        return F.softplus(-d_fake).mean()
    return -d_fake.mean()  # hinge and WGAN alike


def gradient_penalty(critic: Callable[[Tensor], Tensor], real: Tensor, fake: Tensor) -> Tensor:
    """(||grad critic(x_hat)|| - 1)^2 averaged over random interpolates of real and fake images
    (Gulrajani et al. 2017); differentiable, so the penalty trains the critic."""
    alpha = torch.rand(real.size(0), 1, 1, 1, device=real.device, dtype=real.dtype)
    x_hat = torch.lerp(fake.detach(), real.detach(), alpha).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    return (grad.flatten(1).norm(2, dim=1) - 1.0).square().mean()


# -- the model -------------------------------------------------------------------------------------
class GAN(nn.Module):
    PHASES = ("discriminator", "generator")

    def __init__(self, cfg: GANConfig) -> None:
        super().__init__()
        check_conditioning(cfg)
        self.cfg = cfg
        self.generator = Generator(cfg)
        self.discriminator = Discriminator(cfg)
        # NHWC convolution weights: a training step measured ~14% faster on the CPU (oneDNN prefers it)
        self.to(memory_format=torch.channels_last)
        self.augment_policy = parse_policy(cfg.diffaugment)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @property
    def device(self) -> torch.device:
        return self.generator.to_image.weight.device

    # -- what the Trainer calls -------------------------------------------------------------------
    def optimizer_phases(self) -> list[OptimizerPhase]:
        return [OptimizerPhase("discriminator", ("discriminator.",), self.cfg.d_lr_scale),
                OptimizerPhase("generator", ("generator.",))]

    def training_step(self, batch: Batch, phase: str, carry: PhaseCarry | None = None) -> Tensor:
        """The phase's loss on one real batch. The phases of one batch share its generated images through
        `carry` (one generator forward per step, as in the classic DCGAN loop), whichever runs first; the
        discriminator phase also logs d_real and d_fake (mean logits on real and generated images) and,
        with wgan-gp, gp (the penalty before its weight) in `carry.metrics`. Random numbers come from
        torch's global RNG."""
        carry = carry if carry is not None else PhaseCarry()
        real = batch["image"]
        labels = batch["label"] if self.cfg.conditional else None
        if phase == "discriminator":
            return self._discriminator_step(real, labels, carry)
        if phase == "generator":
            return self._generator_step(real, labels, carry)
        raise ValueError(f"unknown phase '{phase}'; a GAN trains in phases {', '.join(self.PHASES)}")

    def _augment(self, images: Tensor) -> Tensor:
        return diff_augment(images, self.augment_policy) if self.augment_policy else images

    def _discriminate(self, images: Tensor, labels: Tensor | None) -> tuple[Tensor, Tensor | None]:
        return self.discriminator.logits(self._augment(images), labels)

    def _class_loss(self, class_logits: Tensor | None, labels: Tensor | None) -> Tensor | float:
        """The auxiliary classifier's weighted cross-entropy (0 without one)."""
        if class_logits is None:
            return 0.0
        return self.cfg.aux_classifier * F.cross_entropy(class_logits.float(), labels)

    def _fakes(self, real: Tensor, labels: Tensor | None, carry: PhaseCarry) -> Tensor:
        """This batch's generated images, with the generator's graph while gradients are on: made by the
        first phase that needs them and handed to the other in `carry`."""
        fake = carry.values.get("fake")
        if fake is None or (torch.is_grad_enabled() and not fake.requires_grad):
            z = torch.randn(real.size(0), self.cfg.latent_dim, device=real.device)
            fake = carry.values["fake"] = self.generator(z, labels)
        return fake

    def _discriminator_step(self, real: Tensor, labels: Tensor | None, carry: PhaseCarry) -> Tensor:
        fake = self._fakes(real, labels, carry).detach()  # the discriminator never trains the generator
        if self.discriminator.batch_norm:
            # BatchNorm statistics of a mixed batch would tell real from fake: keep them apart
            (d_real, classes_real), (d_fake, _) = self._discriminate(real, labels), self._discriminate(fake, labels)
        else:
            both, classes = self._discriminate(torch.cat((real, fake)), None if labels is None else labels.repeat(2))
            d_real, d_fake = both.chunk(2)
            classes_real = None if classes is None else classes[: real.size(0)]
        # The classifier learns from real images only: fakes of the wrong class would teach it wrong
        loss = discriminator_loss(self.cfg.loss, d_real, d_fake) + self._class_loss(classes_real, labels)
        metrics = {"d_real": d_real.detach().mean(), "d_fake": d_fake.detach().mean()}
        if self.cfg.loss == "wgan-gp":
            gp = gradient_penalty(lambda x: self.discriminator(x, labels), self._augment(real), self._augment(fake))
            loss = loss + self.cfg.gp_weight * gp
            metrics["gp"] = gp.detach()
        carry.metrics.update(metrics)
        return loss

    def _generator_step(self, real: Tensor, labels: Tensor | None, carry: PhaseCarry) -> Tensor:
        fake = self._fakes(real, labels, carry)
        # The discriminator's weights get no gradient from the generator's loss: skip computing it
        with frozen(self.discriminator):
            d_fake, classes_fake = self._discriminate(fake, labels)
            return generator_loss(self.cfg.loss, d_fake) + self._class_loss(classes_fake, labels)

    # -- sampling ---------------------------------------------------------------------------------
    def noise(self, n: int, generator: torch.Generator | None = None, truncation: float = 1.0) -> Tensor:
        """z ~ N(0, I) scaled by `truncation` (0 = the mean latent, 1 = the full spread), [n, latent_dim].
        Drawn on the generator's device (the CPU by default), so a seed gives the same z everywhere."""
        if truncation < 0:
            raise ControlError(f"truncation must be 0 or more (0 = the average image), got {truncation}")
        where = generator.device if generator is not None else torch.device("cpu")
        z = torch.randn(n, self.cfg.latent_dim, generator=generator, device=where)
        return (z * truncation).to(self.device)

    def generate_from(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """Images [n, C, H, W] in [-1, 1] from latents [n, latent_dim], in eval mode (running BatchNorm
        statistics), leaving the module's mode as it was."""
        labels = resolve_labels(labels, z.size(0), self.cfg, self.device)
        with evaluating(self):
            return self.generator(z.to(self.device), labels).float().contiguous()

    def sample(self, n: int, labels: Tensor | None = None, truncation: float = 1.0,
               generator: torch.Generator | None = None) -> Tensor:
        """n images in [-1, 1]; the same generator seed gives the same images on the same machine.
        `labels` is one label for all or one per image (conditional models only)."""
        return self.generate_from(self.noise(n, generator, truncation), labels)
