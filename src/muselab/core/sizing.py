"""The two shapes of sizing rule the recipes share (README: "Defaults that fit the data").

- `TransformerRows`: a table of GPT sizes picked by training tokens and capped by the budget (text-lm,
  music-lm): the model grows with the data, a short budget cannot train a large one.
- `PresetRows`: three rows around a preset tuned on the recipe's built-in data (the image and audio
  recipes): less data takes smaller batches (more steps per pass) and the recipe's small-data settings,
  much more data with an hour or more (or no budget) twice the widths."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from muselab.core.registry import Sizing, size_row


@dataclass(frozen=True)
class TransformerRows:
    """Rows of (name, n_layer, n_head, n_embd, block_size, batch_size, lr), smallest first. The data picks a
    row by training tokens (`data_limits`: tokens below which row 0, 1, ... fits), the budget caps it
    (`budget_limits`: minutes below which row 0, 1, ... is the largest it trains). Dropout follows the
    data's row, and is off when the budget capped the model: a model smaller than its data, trained
    briefly, underfits."""

    sizes: list[tuple[str, int, int, int, int, int, float]]
    data_limits: list[int]
    budget_limits: list[float]
    dropout: list[float]
    weight_decay: float

    def size(self, tokens: int, budget_minutes: float | None, inputs: dict[str, Any]) -> Sizing:
        data_row = size_row(tokens, self.data_limits)
        row = data_row if budget_minutes is None else min(data_row, size_row(budget_minutes, self.budget_limits))
        name, n_layer, n_head, n_embd, block, batch, lr = self.sizes[row]
        layer = {
            "model": {"n_layer": n_layer, "n_head": n_head, "n_embd": n_embd, "block_size": block,
                      "dropout": self.dropout[data_row] if row == data_row else 0.0},
            "train": {"batch_size": batch, "lr": lr, "weight_decay": self.weight_decay},
        }
        capped = " (capped by the budget)" if row < data_row else ""
        return Sizing(rule=f"{name}{capped}", inputs={**inputs, "budget_minutes": budget_minutes}, layer=layer)


PRESET_ROW_NAMES = ("small", "medium", "large")


@dataclass(frozen=True)
class PresetRows:
    """Three rows by `measure` (a number prepare_data puts in `info`): below `limits[0]`, batches of at most
    `small_batch` and `small_layer`; between the limits, the preset as tuned; above `limits[1]` with at
    least `wide_minutes` of budget (or none), the fields named in `widen` ("section.field") doubled.
    `limits[0] = 0` leaves out the small row (where smaller batches measured no better)."""

    measure: str
    limits: tuple[float, float]
    widen: tuple[str, ...]
    small_batch: int | None = None
    small_layer: dict[str, dict[str, Any]] = field(default_factory=dict)
    wide_minutes: float = 60.0

    def size(self, preset: BaseModel, stats: dict[str, Any], budget_minutes: float | None) -> Sizing:
        amount = stats[self.measure]
        row = size_row(amount, self.limits)
        if row == 2 and budget_minutes is not None and budget_minutes < self.wide_minutes:
            row = 1
        layer: dict[str, dict[str, Any]] = {}
        for path in self.widen:
            section, name = path.split(".")
            value = getattr(getattr(preset, section), name)
            layer.setdefault(section, {})[name] = 2 * value if row == 2 else value
        batch = preset.train.batch_size
        layer.setdefault("train", {})["batch_size"] = min(batch, self.small_batch or batch) if row == 0 else batch
        if row == 0:
            for section, values in self.small_layer.items():
                layer.setdefault(section, {}).update(values)
        return Sizing(rule=PRESET_ROW_NAMES[row], inputs={self.measure: amount, "budget_minutes": budget_minutes},
                      layer=layer)
