"""Small helpers shared by test modules (importable because pytest puts tests/ on the path)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from muselab.core.trainer import PhaseCarry


def error_message(err: pytest.ExceptionInfo) -> str:
    """The message of a raised user error, checked to be one line (the CLI prints it as one)."""
    msg = str(err.value)
    assert msg and "\n" not in msg
    return msg


def write(path: Path, content: str | bytes) -> Path:
    """Write text (as UTF-8, newlines untouched) or bytes, creating folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8", newline="")
    return path


class HandWrittenLoop:
    """A plain training loop for a model with optimizer phases (a GAN): one Adam per phase at lr x the
    phase's scale, and each step runs the phases in order on the same batch, as the Trainer does."""

    def __init__(self, model: nn.Module, lr: float, betas: tuple[float, float]) -> None:
        self.model = model
        self.optimizers = {
            phase.name: torch.optim.Adam([p for n, p in model.named_parameters() if n.startswith(phase.prefixes)],
                                         lr=lr * phase.lr_scale, betas=betas)
            for phase in model.optimizer_phases()}

    def step(self, batch: dict[str, torch.Tensor]) -> None:
        carry = PhaseCarry()  # what the phases of this batch share (its generated images)
        for name, optimizer in self.optimizers.items():
            optimizer.zero_grad(set_to_none=True)
            self.model.training_step(batch, phase=name, carry=carry).backward()
            optimizer.step()


class Line(nn.Module):
    """y = a x + b fitted by squared error: the smallest model the Trainer can train."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(1, 1)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        return ((self.fc(x) - y) ** 2).mean()

    def eval_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, int]:
        x, y = batch
        return ((self.fc(x) - y) ** 2).sum(), y.numel()
