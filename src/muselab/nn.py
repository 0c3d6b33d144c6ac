"""Module helpers shared by the models of every modality (below text/, image/ and audio/, which never
import each other): switching a module to evaluation for a block, and freezing its parameters."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def evaluating(module: nn.Module) -> Iterator[None]:
    """Eval mode (running BatchNorm statistics) and no gradients inside the block; the module's mode is
    restored afterwards."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        module.train(was_training)


@contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Compute no parameter gradients for `module` inside the block (inputs still get theirs): a GAN's
    generator phase scores its output with the discriminator without training the discriminator."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
