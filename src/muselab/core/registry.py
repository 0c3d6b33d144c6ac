"""Recipes: a name bound to a config, its data, a model, a sampler and metrics.

The CLI, API, report and server only talk to this interface, so adding a model means adding a recipe.
Recipes are imported lazily by name: `muselab recipes` does not pay for every model's imports.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel
from torch import nn

from muselab.core.errors import ConfigError
from muselab.core.rundir import RunDir
from muselab.core.trainer import BatchSource

# name -> "module:Class"; one line per recipe
_RECIPES: dict[str, str] = {
    "text-lm": "muselab.text.lm_recipe:TextLMRecipe",
    "text-seq2seq": "muselab.text.seq2seq_recipe:TextSeq2SeqRecipe",
    "image-gan": "muselab.image.gan_recipe:ImageGANRecipe",
    "image-vae": "muselab.image.vae_recipe:ImageVAERecipe",
    "audio-ddsp": "muselab.audio.ddsp_recipe:AudioDDSPRecipe",
    "audio-vocoder": "muselab.audio.vocoder_recipe:VocoderRecipe",
}


@dataclass
class PreparedData:
    """What a recipe made of the user's data before anything is written to disk."""

    train: BatchSource
    val: BatchSource | None
    info: dict[str, Any]  # for config.json and the model card: source, fingerprint, sizes
    assets: dict[str, Any] = field(default_factory=dict)  # tokenizer and the like


@dataclass
class Generated:
    """Outputs of one generate call, ready for the artifact writer."""

    items: list[Any]
    kind: str  # "text" (samples), "pairs" (one output line per input), "image", "audio"
    extra: dict[str, Any] = field(default_factory=dict)


class Recipe(ABC):
    name: ClassVar[str]
    summary: ClassVar[str]
    config_class: ClassVar[type[BaseModel]]
    controls_class: ClassVar[type[BaseModel]]
    default_data: ClassVar[str]
    main_control: ClassVar[str]  # the control `Run.generate(x)` sets from its positional argument
    needs_out: ClassVar[bool] = False  # outputs are files (images, sound), not lines to print
    # Presets are overrides on top of the config defaults, which are the CPU "default" preset
    presets: ClassVar[dict[str, dict[str, Any]]] = {"default": {}}

    @abstractmethod
    def prepare_data(self, cfg: BaseModel, data: str) -> PreparedData:
        """Load and check the data; raise DataError before anything is written."""

    @abstractmethod
    def build_model(self, cfg: BaseModel, prepared_assets: dict[str, Any]) -> nn.Module:
        """A fresh model for this config and these assets (vocabulary sizes etc.)."""

    @abstractmethod
    def save_assets(self, assets: dict[str, Any], run: RunDir) -> None:
        """Write tokenizer files and the like into the run directory."""

    @abstractmethod
    def load_assets(self, cfg: BaseModel, run: RunDir) -> dict[str, Any]:
        """Read back what save_assets wrote."""

    @abstractmethod
    def check_transfer(self, cfg: BaseModel, source_cfg: BaseModel, prepared: PreparedData, source: Path) -> None:
        """For --init-from: refuse a start whose assets (tokenizer...) cannot serve the new data."""

    @abstractmethod
    def generate(self, model: nn.Module, cfg: BaseModel, assets: dict[str, Any], controls: BaseModel,
                 on_text: Any = None) -> Generated:
        """Generate outputs for validated controls."""

    def validation_hook(self, model: nn.Module, cfg: BaseModel, assets: dict[str, Any],
                        run: RunDir) -> Callable[[int, dict[str, Any]], None] | None:
        """Something to do after each validation with the step and the weights (e.g. a sample grid)."""
        return None

    @abstractmethod
    def evaluate(self, model: nn.Module, cfg: BaseModel, assets: dict[str, Any], run: RunDir,
                 data: str | None) -> dict[str, float]:
        """Metrics for eval.json."""


def recipe_names() -> list[str]:
    return sorted(_RECIPES)


def get_recipe(name: str) -> Recipe:
    target = _RECIPES.get(name)
    if target is None:
        raise ConfigError(f"unknown recipe '{name}'; available: {', '.join(recipe_names())} (see `muselab recipes`)")
    module_name, class_name = target.split(":")
    return getattr(importlib.import_module(module_name), class_name)()


def iter_recipes() -> Iterator[Recipe]:
    for name in recipe_names():
        yield get_recipe(name)
