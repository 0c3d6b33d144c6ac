"""Recipes: a name bound to a config, its data, a model, a sampler and metrics.

The CLI, API, report and server only talk to this interface, so adding a model means adding a recipe.
Recipes are imported lazily by name: `muselab recipes` does not pay for every model's imports.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel
from torch import nn

from muselab.core.errors import ConfigError
from muselab.core.results import Result
from muselab.core.rundir import RunDir
from muselab.core.trainer import BatchSource

# name -> "module:Class"; one line per recipe
_RECIPES: dict[str, str] = {
    "text-lm": "muselab.text.lm_recipe:TextLMRecipe",
    "text-seq2seq": "muselab.text.seq2seq_recipe:TextSeq2SeqRecipe",
    "image-gan": "muselab.image.gan_recipe:ImageGANRecipe",
    "image-vae": "muselab.image.vae_recipe:ImageVAERecipe",
    "image-diffusion": "muselab.image.diffusion_recipe:ImageDiffusionRecipe",
    "audio-ddsp": "muselab.audio.ddsp_recipe:AudioDDSPRecipe",
    "audio-vocoder": "muselab.audio.vocoder_recipe:VocoderRecipe",
    "audio-tts": "muselab.audio.tts_recipe:TTSRecipe",
    "music-lm": "muselab.music.recipe:MusicLMRecipe",
}


NOT_MEASURED = "this recipe has no memorization measure"


@dataclass
class PreparedData:
    """What a recipe made of the user's data before anything is written to disk."""

    train: BatchSource
    val: BatchSource | None
    info: dict[str, Any]  # for config.json and the model card: source, fingerprint, sizes
    assets: dict[str, Any] = field(default_factory=dict)  # tokenizer and the like


@dataclass
class Sizing:
    """What a recipe's sizing rule chose for the default preset from the data and the budget.

    `layer` is a config layer that sits right above the preset: a config file, `--set` and the flags
    still override every field of it. `rule` names the row of the recipe's table (the README shows the
    tables) and `inputs` the numbers the rule read; both go into config.json."""

    rule: str
    inputs: dict[str, Any]
    layer: dict[str, Any]


def size_row(value: float, limits: Sequence[float]) -> int:
    """For sizing rules: the index of the first of the ascending `limits` that `value` is below (len(limits)
    when none), i.e. the row of a size table."""
    return next((i for i, limit in enumerate(limits) if value < limit), len(limits))


@dataclass(frozen=True)
class Capabilities:
    """What a recipe's generation is, declared once: the CLI, API, pipeline and server read it from here."""

    main_control: str  # the control `Run.generate(x)` sets from its positional argument
    writes_files: bool = False  # outputs are files (images, sound), not lines to print
    # control name -> how input moderation treats it by default: "steer" (a prompt that steers free
    # generation: blocked items are refused) or "transform" (text the model transforms, such as a word to
    # pronounce: the verdict is recorded as a warning, never blocked or masked); a policy's [inputs] can
    # change it
    inputs: dict[str, str] = field(default_factory=dict)
    text_outputs: bool = False  # outputs are text: moderated, and decode-time bans apply
    streams_text: bool = False  # can show its text as it grows (on_text)


@dataclass
class GenerationContext:
    """What the pipeline hands a recipe's generate: the safety settings it must decode under."""

    policy: Any  # muselab.safety.moderation.Policy (core knows no safety: typed loosely here)
    ban_words: list[str] = field(default_factory=list)  # words decoding must never write
    on_text: Callable[[str], None] | None = None  # the whole text of sample 0 so far, as it grows
    device: Any = None
    # opens another trained run by its path (the API's `load`), for recipes that use one as a part, e.g. a
    # G2P run that pronounces the words a speech model's dictionary lacks; None outside the API
    load_run: Callable[[str], Any] | None = None


@dataclass
class EvalAudio:
    """Sound an evaluation made, to be saved (with manifests and watermarks) as RUN/samples/NAME."""

    name: str
    clips: list[Any]  # float32 mono arrays
    sample_rate: int
    controls: dict[str, Any]


@dataclass
class Evaluation:
    """What `evaluate` returns: metrics for eval.json, and samples to save with their manifests."""

    metrics: dict[str, Any]
    samples: list[str] = field(default_factory=list)  # text samples -> RUN/samples/eval_samples.jsonl
    sample_controls: dict[str, Any] = field(default_factory=dict)
    sample_notes: list[dict[str, Any]] | None = None
    audio: list[EvalAudio] = field(default_factory=list)


@dataclass
class ExportSpec:
    """What `muselab export` turns into an ONNX or TorchScript file: a plain network with example inputs.

    `module` maps `example_inputs` (tensors, in `input_names` order) to one tensor per `output_names`;
    `dynamic_axes` names the axes that may vary (input or output name -> axis -> name), `axis_max` bounds
    them where the network has a limit (a context window); an example's size on a dynamic axis must be 2 or
    more, since torch.export fixes an axis whose example size is 0 or 1. `meaning` says in words what each input and
    output holds, `pair_with` what a user needs beside the file (sample rate, image size, vocabulary)."""

    module: nn.Module
    example_inputs: tuple[Any, ...]
    input_names: list[str]
    output_names: list[str]
    dynamic_axes: dict[str, dict[int, str]]
    description: str
    meaning: dict[str, str] = field(default_factory=dict)
    axis_max: dict[str, int] = field(default_factory=dict)
    pair_with: dict[str, Any] = field(default_factory=dict)


class MemorizationGuard(ABC):
    """A recipe's measure of how close each output is to its training data, for the pipeline's guard.

    The pipeline measures every item, and per `mode` keeps close ones flagged (`flag`), redraws them and
    flags those still close (`resample`), or redraws them and refuses those still close (`reject`).
    """

    mode: str = "flag"
    attempts: int = 3

    @abstractmethod
    def measure(self, result: Result, indices: Sequence[int]) -> list[float]:
        """The closeness value of each item `indices` names."""

    @abstractmethod
    def too_close(self, value: float) -> bool:
        """Whether a measured value is over the limit."""

    @abstractmethod
    def note(self, value: float, redraws: int) -> dict[str, Any]:
        """The item's manifest entry (`{"memorization": {...}}`)."""

    @abstractmethod
    def describe(self, index: int, value: float) -> str:
        """One line for the user about a flagged or refused item."""

    def redraw(self, result: Result, indices: Sequence[int], attempt: int) -> None:  # noqa: B027
        """Replace the items `indices` names with new draws (in place); recipes that cannot redraw keep
        this default, which leaves them as they are."""


class Recipe(ABC):
    """The contract every recipe keeps (a test runs each registered one through it)."""

    name: ClassVar[str]
    summary: ClassVar[str]
    config_class: ClassVar[type[BaseModel]]
    controls_class: ClassVar[type[BaseModel]]
    default_data: ClassVar[str]
    capabilities: ClassVar[Capabilities]
    # What `--data` accepts, for `muselab recipes NAME`: file formats in words, and builtin:NAME -> what it is
    data_formats: ClassVar[str] = ""
    builtin_data: ClassVar[dict[str, str]] = {}
    # The Hugging Face pipeline tag the model card gives this recipe's runs, where one fits
    pipeline_tag: ClassVar[str | None] = None
    # Presets are overrides on top of the config defaults, which are the CPU "default" preset
    presets: ClassVar[dict[str, dict[str, Any]]] = {"default": {}}

    @abstractmethod
    def prepare_data(self, cfg: BaseModel, data: str, assets: dict[str, Any] | None = None) -> PreparedData:
        """Load and check the data; raise DataError before anything is written. `assets` (a run's own, on
        resume, evaluation or --init-from) are reused instead of being made from the data."""

    @abstractmethod
    def build_model(self, cfg: BaseModel, assets: dict[str, Any]) -> nn.Module:
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
                 context: GenerationContext) -> Result:
        """Content for validated controls, as a typed result; the pipeline does every safety check."""

    def run_defaults(self, model: nn.Module, cfg: BaseModel, assets: dict[str, Any]) -> dict[str, Any]:
        """Controls whose default belongs to the run (a value measured for it, e.g. a diffusion model's
        calibrated guidance): the pipeline fills in those a request leaves unset (None), so the manifests
        record what was used."""
        return {}

    def memorization_guard(self, model: nn.Module, cfg: BaseModel, assets: dict[str, Any], controls: BaseModel,
                           context: GenerationContext) -> MemorizationGuard | str | None:
        """The guard for these controls; None when the user turned it off, or a one-line reason why the
        outputs cannot be checked (e.g. the training data is not readable here)."""
        return NOT_MEASURED

    def size_for_data(self, stats: dict[str, Any], budget_minutes: float | None) -> Sizing | None:
        """The default preset's sizing rule: model size, context, regularisation, batch and learning rate for
        data described by `stats` (what prepare_data put in `info`) and a time budget in minutes (None:
        train.max_steps ends training). None keeps the preset as it is (recipes without a rule)."""
        return None

    def resize_data(self, prepared: PreparedData, cfg: BaseModel) -> PreparedData:
        """The prepared data for a config the sizing rule changed (e.g. windows of a new context length); by
        default the same, for recipes whose batches do not depend on what the rule chooses."""
        return prepared

    def validation_hook(self, model: nn.Module, cfg: BaseModel, assets: dict[str, Any],
                        run: RunDir) -> Callable[[int, dict[str, Any]], None] | None:
        """Something to do after each validation with the step and the weights (e.g. a sample grid)."""
        return None

    def export_module(self, model: nn.Module, cfg: BaseModel, assets: dict[str, Any]) -> ExportSpec | None:
        """The plain network `muselab export` writes (e.g. a GAN's generator), or None: not exportable."""
        return None

    @abstractmethod
    def evaluate(self, model: nn.Module, cfg: BaseModel, assets: dict[str, Any], run: RunDir,
                 data: str | None) -> Evaluation:
        """Metrics for eval.json (and text samples to save)."""

    def shipped_run(self) -> Path | None:
        """A trained run that ships with muselab and serves when no run is named (`builtin:RECIPE`), if any."""
        return None


def register_recipe(name: str, target: str) -> None:
    """Make a recipe class known by name: `target` is "package.module:Class" (imported on first use)."""
    _RECIPES[name] = target


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
