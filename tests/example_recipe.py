"""The smallest complete recipe: a character unigram model ("which letters does this text use, how often?").

It is the example of the README's "Adding a recipe" section, and the contract tests register it to prove
that a recipe with no safety code of its own still gets every check: it only turns controls into content.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from muselab.core.config import Section, TrainConfig
from muselab.core.errors import DataError
from muselab.core.registry import Capabilities, Evaluation, GenerationContext, PreparedData, Recipe
from muselab.core.results import TextResult
from muselab.core.rundir import RunDir


class UnigramConfig(Section):
    train: TrainConfig = TrainConfig(max_steps=20, batch_size=64, lr=0.1, warmup_steps=0, eval_every=10,
                                     checkpoint_every=10, precision="fp32")


class UnigramControls(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field("", description="Text the sample starts with.")
    length: int = Field(20, ge=1, le=10_000, description="Characters to add.")
    num_samples: int = Field(1, ge=1, le=64, description="How many samples.")
    seed: int | None = Field(None, ge=0, description="Random seed.")


class Unigram(nn.Module):
    """One learned logit per character."""

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(vocab_size))

    def training_step(self, batch: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(self.logits.expand(len(batch), -1), batch)

    def eval_step(self, batch: torch.Tensor) -> tuple[torch.Tensor, int]:
        return self.training_step(batch) * len(batch), len(batch)


class Characters:
    """The text's characters as the Trainer's batch source."""

    def __init__(self, ids: torch.Tensor) -> None:
        self.ids = ids

    def sample(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        return self.ids[torch.randint(0, len(self.ids), (batch_size,), generator=generator)]

    def eval_batches(self, batch_size: int, limit: int = 0) -> Iterator[torch.Tensor]:
        yield from self.ids.split(batch_size)[: limit or None]


class UnigramRecipe(Recipe):
    name = "text-unigram"
    summary = "character unigram model (the example recipe)"
    config_class = UnigramConfig
    controls_class = UnigramControls
    default_data = "builtin:words"
    capabilities = Capabilities(main_control="prompt", inputs={"prompt": "steer"}, text_outputs=True)
    presets = {"tiny": {}, "default": {}}

    def prepare_data(self, cfg: UnigramConfig, data: str, assets: dict[str, Any] | None = None) -> PreparedData:
        path = Path(data)
        if not path.is_file():
            raise DataError(f"'{data}' is not a text file")
        text = path.read_text(encoding="utf-8")
        alphabet = assets["alphabet"] if assets else sorted(set(text))
        ids = torch.tensor([alphabet.index(c) for c in text if c in alphabet])
        split = max(1, len(ids) // 10)
        info = {"spec": data, "fingerprint": str(hash(text) & 0xFFFFFFFF), "chars": len(text)}
        return PreparedData(Characters(ids[split:]), Characters(ids[:split]), info, {"alphabet": alphabet})

    def build_model(self, cfg: UnigramConfig, assets: dict[str, Any]) -> Unigram:
        return Unigram(len(assets["alphabet"]))

    def save_assets(self, assets: dict[str, Any], run: RunDir) -> None:
        run.write_json("alphabet.json", {"alphabet": assets["alphabet"]})

    def load_assets(self, cfg: UnigramConfig, run: RunDir) -> dict[str, Any]:
        return {"alphabet": run.read_json("alphabet.json")["alphabet"]}

    def check_transfer(self, cfg: UnigramConfig, source_cfg: UnigramConfig, prepared: PreparedData,
                       source: Path) -> None:
        pass

    def generate(self, model: Unigram, cfg: UnigramConfig, assets: dict[str, Any], controls: UnigramControls,
                 context: GenerationContext) -> TextResult:
        generator = torch.Generator().manual_seed(controls.seed)
        probs = model.logits.softmax(-1).expand(controls.num_samples, -1)
        picks = torch.multinomial(probs, controls.length, replacement=True, generator=generator)
        texts = [controls.prompt + "".join(assets["alphabet"][i] for i in row) for row in picks.tolist()]
        return TextResult(texts=texts, prompts=[controls.prompt] * len(texts))

    def evaluate(self, model: Unigram, cfg: UnigramConfig, assets: dict[str, Any], run: RunDir,
                 data: str | None) -> Evaluation:
        from muselab.core.trainer import mean_loss

        prepared = self.prepare_data(cfg, data, assets)
        return Evaluation({"val_loss": mean_loss(model, prepared.val, 256, torch.device("cpu"))})
