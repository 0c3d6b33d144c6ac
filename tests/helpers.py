"""Small helpers shared by test modules (importable because pytest puts tests/ on the path)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from muselab.core.errors import DataError
from muselab.core.trainer import PhaseCarry
from muselab.data.scores import Score
from muselab.data.soundfont import find_soundfont
from muselab.music.midi import score_to_midi


def error_message(err: pytest.ExceptionInfo) -> str:
    """The message of a raised user error, checked to be one line (the CLI prints it as one)."""
    msg = str(err.value)
    assert msg and "\n" not in msg
    return msg


def take_steps(model: nn.Module, batch: Any, optimizer: torch.optim.Optimizer, steps: int) -> list[float]:
    """`steps` optimizer steps of `model.training_step` on one batch; the loss of each."""
    losses = []
    for _ in range(steps):
        loss = model.training_step(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


def write(path: Path, content: str | bytes) -> Path:
    """Write text (as UTF-8, newlines untouched) or bytes, creating folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8", newline="")
    return path


def front_matter(card: str) -> dict[str, Any]:
    """The YAML front matter of a MODEL_CARD.md, parsed with PyYAML where it is installed, else by a strict
    reader of the subset the card uses (mappings, lists, JSON-quoted strings, numbers), which refuses
    anything else."""
    assert card.startswith("---\n"), "the card must open with a --- line"
    block = card[4:card.index("\n---\n", 4)]
    try:
        import yaml
    except ImportError:
        return _strict_yaml([line for line in block.split("\n") if line], 0)[0]
    data = yaml.safe_load(block)
    assert isinstance(data, dict)
    return data


_SCALAR = re.compile(r'^(?:"(?:[^"\\]|\\.)*"|-?\d+(?:\.\d+)?(?:e[-+]?\d+)?|true|false|\[\]|\{\})$')


def _scalar(text: str) -> Any:
    assert _SCALAR.match(text), f"not a scalar the card may hold: {text!r}"
    if text in ("[]", "{}"):
        return [] if text == "[]" else {}
    return json.loads(text)


def _strict_yaml(lines: list[str], indent: int) -> tuple[Any, list[str]]:
    """Parse the lines at `indent` into a dict or list; returns it and the lines left over."""
    result: Any = None
    while lines:
        line = lines[0]
        depth = len(line) - len(line.lstrip(" "))
        if depth < indent:
            break
        assert depth == indent, f"bad indentation: {line!r}"
        body = line.strip()
        if body.startswith("- "):
            result = [] if result is None else result
            assert isinstance(result, list), f"a list item inside a mapping: {line!r}"
            item = body[2:]
            if re.match(r"^[\w-]+:( |$)", item):  # "- key: ..." opens a mapping
                value, lines = _strict_yaml([" " * (indent + 2) + item, *lines[1:]], indent + 2)
            else:
                value, lines = _scalar(item), lines[1:]
            result.append(value)
            continue
        match = re.match(r"^([\w-]+):(?: (.*))?$", body)
        assert match, f"not a key: {line!r}"
        result = {} if result is None else result
        assert isinstance(result, dict), f"a key inside a list: {line!r}"
        key, rest = match.groups()
        assert key not in result, f"duplicate key {key}"
        if rest is None:
            result[key], lines = _strict_yaml(lines[1:], indent + 2)
        else:
            result[key], lines = _scalar(rest), lines[1:]
    return result, lines


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


# Four voices of a C major cadence, I-IV-V-I, one chord per beat (quarter notes)
CHORDS = [(72, 67, 64, 48), (72, 69, 65, 53), (71, 67, 62, 55), (72, 67, 64, 48)]


def chorale(name: str, shift: int = 0, bars: int = 2) -> Score:
    voices: list[list] = [[], [], [], []]
    rng = np.random.default_rng(len(name))
    for beat in range(4 * bars):
        chord = CHORDS[beat % 4] if beat % 8 < 4 else CHORDS[int(rng.integers(0, 4))]
        for v in range(4):
            voices[v].append((chord[v] + shift, float(beat), 1.0))
    return Score(name, voices, 4.0, 0.0, shift % 12, "major", 90.0)


def midi_folder(root: Path, count: int = 8) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (root / f"piece{i:02d}.mid").write_bytes(score_to_midi(chorale(f"piece{i}", shift=i % 5 - 2)))
    return root


def _has_soundfont() -> bool:
    try:
        find_soundfont()
    except DataError:
        return False
    return True


needs_synth = pytest.mark.skipif(shutil.which("fluidsynth") is None or not _has_soundfont(),
                                 reason="fluidsynth or a General MIDI SoundFont is not installed")
