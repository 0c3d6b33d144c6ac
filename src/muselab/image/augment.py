"""Differentiable augmentation (DiffAugment, Zhao et al. 2020) for training GANs on little data.

The same random transformations are applied to real and generated images before the discriminator
sees them, and gradients flow through them to the generator, so the discriminator cannot memorise the
few real images while the generator still learns the un-augmented distribution. Every transform draws
one set of random numbers per image from torch's global RNG (which the Trainer seeds per step) and
works on the whole batch at once. Images are [B, C, H, W] in [-1, 1].
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

TRANSLATION_RATIO = 1 / 8  # largest shift, as a share of the image size
CUTOUT_RATIO = 1 / 2  # side of the erased square, as a share of the image size


def _rand(x: Tensor, *shape: int) -> Tensor:
    """Uniform [0, 1) numbers from the global RNG, one row per image."""
    return torch.rand(x.size(0), *shape, device=x.device, dtype=x.dtype)


def color(x: Tensor) -> Tensor:
    """Brightness shift in [-0.5, 0.5), saturation factor in [0, 2), contrast factor in [0.5, 1.5)."""
    x = x + (_rand(x, 1, 1, 1) - 0.5)
    grey = x.mean(dim=1, keepdim=True)
    x = (x - grey) * (_rand(x, 1, 1, 1) * 2) + grey
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_rand(x, 1, 1, 1) + 0.5) + mean


def translation(x: Tensor, ratio: float = TRANSLATION_RATIO) -> Tensor:
    """Shift each image by up to `ratio` of its size in each direction, filling with zeros."""
    B, _, H, W = x.shape
    max_y, max_x = int(H * ratio + 0.5), int(W * ratio + 0.5)
    shift_y = torch.randint(-max_y, max_y + 1, (B, 1, 1), device=x.device)
    shift_x = torch.randint(-max_x, max_x + 1, (B, 1, 1), device=x.device)
    # Read each output pixel from (row - shift) of a zero-padded copy: one gather for the whole batch
    rows = torch.arange(H, device=x.device).view(1, H, 1) - shift_y + max_y
    cols = torch.arange(W, device=x.device).view(1, 1, W) - shift_x + max_x
    padded = torch.nn.functional.pad(x, (max_x, max_x, max_y, max_y))
    batch = torch.arange(B, device=x.device).view(B, 1, 1)
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


def cutout(x: Tensor, ratio: float = CUTOUT_RATIO) -> Tensor:
    """Zero a square of `ratio` x the size, centred anywhere in the image (so it may stick out)."""
    B, _, H, W = x.shape
    size_y, size_x = int(H * ratio + 0.5), int(W * ratio + 0.5)
    top = torch.randint(0, H + (1 - size_y % 2), (B, 1, 1), device=x.device) - size_y // 2
    left = torch.randint(0, W + (1 - size_x % 2), (B, 1, 1), device=x.device) - size_x // 2
    rows = torch.arange(H, device=x.device).view(1, H, 1)
    cols = torch.arange(W, device=x.device).view(1, 1, W)
    inside = (rows >= top) & (rows < top + size_y) & (cols >= left) & (cols < left + size_x)
    return x * (~inside).unsqueeze(1).to(x.dtype)


# In the order they are applied, whatever order a policy names them in (the paper's order)
TRANSFORMS: dict[str, Callable[[Tensor], Tensor]] = {"color": color, "translation": translation, "cutout": cutout}


def parse_policy(policy: str | Sequence[str]) -> tuple[str, ...]:
    """"translation,cutout" -> ("translation", "cutout"); "" -> (). Unknown names raise ValueError."""
    names = policy.split(",") if isinstance(policy, str) else list(policy)
    chosen = {name.strip() for name in names if name.strip()}
    for name in sorted(chosen):
        if name not in TRANSFORMS:
            raise ValueError(f"unknown DiffAugment transform '{name}'; choose from {', '.join(TRANSFORMS)}")
    return tuple(name for name in TRANSFORMS if name in chosen)


def diff_augment(x: Tensor, policy: str | Sequence[str]) -> Tensor:
    """Apply the policy's transforms to a batch of images; differentiable with respect to x."""
    for name in parse_policy(policy):
        x = TRANSFORMS[name](x)
    return x
