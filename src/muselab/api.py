"""The Python API: train(), load(), generate(), evaluate(). The CLI is a thin layer over these."""

from __future__ import annotations

import fnmatch
import json
import logging
import platform
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from pydantic import BaseModel, ValidationError

from muselab import __version__, pipeline
from muselab.core import rundir as files
from muselab.core.checkpoint import load_into, load_tensors, weights_fingerprint
from muselab.core.config import (
    budget_layer,
    build_config,
    describe_validation_error,
    load_toml,
    parse_overrides,
)
from muselab.core.controls import parse_controls
from muselab.core.errors import CheckpointError, ConfigError, ControlError
from muselab.core.modelcard import write_model_card
from muselab.core.registry import PreparedData, Recipe, Sizing, get_recipe
from muselab.core.results import Provenance, Result
from muselab.core.rundir import RunDir
from muselab.core.runtime import init_distributed, resolve_device, shutdown_distributed
from muselab.core.trainer import Trainer, TrainResult
from muselab.pipeline.artifacts import ArtifactWriter
from muselab.pipeline.generate import OnRefused

if TYPE_CHECKING:
    from muselab.exporter import Exported

log = logging.getLogger(__name__)


@dataclass
class Run:
    """A trained model loaded from its run directory, ready to generate and evaluate."""

    path: Path
    recipe: Recipe
    config: BaseModel
    assets: dict[str, Any]
    model: torch.nn.Module
    saved: dict[str, Any]

    @property
    def run_id(self) -> str:
        return weights_fingerprint(self.model.state_dict())

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def controls(self, **values: Any) -> BaseModel:
        """The recipe's validated controls model for these values (one ControlError line when one is bad)."""
        return parse_controls(self.recipe.controls_class, values)

    def generate(self, main: Any = None, /, *, on_text: Callable[[str], None] | None = None,
                 on_refused: OnRefused = "skip", **controls: Any) -> Result:
        """Generate through the pipeline (moderation, guards, provenance) and return a typed result whose
        `save(path)` writes the files with their manifests; `main` is the recipe's main control (a prompt,
        a list of inputs, a number of images, notes)."""
        if main is not None:
            controls[self.recipe.capabilities.main_control] = main
        provenance = Provenance(self.recipe.name, self.run_id, str(self.path))
        return pipeline.generate(self.recipe, self.model, self.config, self.assets, provenance, controls,
                                 on_text=on_text, on_refused=on_refused, load_run=_load_part)

    def stream(self, prompt: str = "", **controls: Any) -> Iterator[str]:
        """The text of one sample piece by piece as it is generated (moderated as it grows)."""
        if not self.recipe.capabilities.streams_text:
            raise ControlError(f"a {self.recipe.name} run does not stream text; use generate()")
        pieces: queue.Queue[tuple[str, Any]] = queue.Queue()

        def work() -> None:
            try:
                result = self.generate(prompt, on_text=lambda piece: pieces.put(("text", piece)), stream=True,
                                       num_samples=1, **controls)
                pieces.put(("done", result))
            except BaseException as err:  # handed to the caller's thread
                pieces.put(("error", err))

        worker = threading.Thread(target=work, daemon=True)
        worker.start()
        while True:
            kind, value = pieces.get()
            if kind == "text":
                yield value
            elif kind == "error":
                raise value
            else:
                return

    def export(self, format: str = "onnx", out: str | Path | None = None, *, opset: int | None = None,
               overwrite: bool = False) -> Exported:
        """Write the recipe's plain network (text-lm's decoding step, a GAN's generator, a VAE's decoder, a
        vocoder) as an ONNX or TorchScript file with a JSON sidecar (default RUN/model.onnx, RUN/model.pt)."""
        from muselab.exporter import export_run

        return export_run(self, format, out, opset=opset, overwrite=overwrite)

    def evaluate(self, data: str | None = None, overrides: Sequence[str] | None = None) -> dict[str, Any]:
        """Metrics on `data` (default: the training data's held-out part); `overrides` ("eval.KEY=VALUE")
        change the recipe's evaluation settings for this call."""
        spec = data or self.saved.get("data", {}).get("spec")
        cfg = self.config
        if overrides:
            layer = parse_overrides(overrides)
            if set(layer) - {"eval"}:
                raise ConfigError("evaluate --set changes evaluation settings only (eval.KEY=VALUE); "
                                  f"{', '.join(sorted(set(layer) - {'eval'}))}.* are fixed by training")
            cfg = build_config(self.recipe.config_class, [self.config.model_dump(), layer])
        run = RunDir(self.path)
        run.reopen()  # what evaluation writes joins the run's record (runs from before the record stay as they are)
        with torch.no_grad():
            result = self.recipe.evaluate(self.model, cfg, self.assets, run, spec)
        run.write_json(files.EVAL, {**result.metrics, "data": spec})
        provenance = Provenance(self.recipe.name, self.run_id, str(self.path))
        if result.samples or result.audio:
            samples = run / files.SAMPLES  # recorded as the run's only when something is written there
        if result.samples:
            # evaluation samples are outputs too: moderated before they are written
            texts, notes = pipeline.moderate_texts(result.samples)
            writer = ArtifactWriter(provenance, samples / "eval_samples.jsonl", overwrite=True)
            writer.write_texts(texts, result.sample_controls, notes)
        for sound in result.audio:
            samples.mkdir(exist_ok=True)
            ArtifactWriter(provenance, samples / sound.name, overwrite=True).write_audio(
                sound.clips, sound.sample_rate, sound.controls)
        state = _read_state(run)
        write_model_card(run, self.saved, state, result.metrics, self.recipe.pipeline_tag)
        return result.metrics


def _load_part(path: str) -> Run:
    """A run another run's generation uses as a part (a speech model's G2P run), on the CPU."""
    return load(path, device="cpu")


def _read_state(run: RunDir) -> dict[str, Any]:
    try:
        return run.read_json(files.TRAINER_STATE_JSON)
    except CheckpointError:
        return {}


def _versions() -> dict[str, str]:
    return {"muselab": __version__, "torch": torch.__version__, "python": platform.python_version()}


def _config_layers(recipe: Recipe, preset: str, config_file: str | None,
                   overrides: Sequence[str] | dict[str, Any] | None) -> list[dict[str, Any]]:
    if preset not in recipe.presets:
        raise ConfigError(f"unknown preset '{preset}' for {recipe.name}; choose one of: {', '.join(recipe.presets)}")
    layers = [recipe.presets[preset]]
    if config_file:
        loaded = load_toml(config_file) if not str(config_file).endswith(".json") else _run_config(config_file)
        layers.append(loaded)
    if overrides:
        layers.append(overrides if isinstance(overrides, dict) else parse_overrides(overrides))
    return layers


def _flag_layer(seed: int | None, max_steps: int | None, max_minutes: float | None) -> dict[str, Any]:
    """The explicit train flags (--seed, --max-steps, --max-minutes) as the last config layer."""
    given = {"seed": seed, "max_steps": max_steps, "max_minutes": max_minutes}
    return {"train": {key: value for key, value in given.items() if value is not None}}


def resolve_config(recipe: str, *, preset: str = "default", config_file: str | None = None,
                   overrides: Sequence[str] | dict[str, Any] | None = None, seed: int | None = None,
                   max_steps: int | None = None, max_minutes: float | None = None) -> BaseModel:
    """The config `train()` would run with these arguments, without touching data or disk."""
    the_recipe = get_recipe(recipe)
    layers = _config_layers(the_recipe, preset, config_file, overrides)
    return build_config(the_recipe.config_class, [*layers, _flag_layer(seed, max_steps, max_minutes)])


def _run_config(path: str) -> dict[str, Any]:
    """A run's config.json as a config layer: reproduces that run's settings."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file '{path}' does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file '{path}' is not valid JSON: {err}") from None
    config = data.get("config", data)
    config.get("model", {}).pop("vocab_size", None)
    return config


def _resolve_new_run(recipe: str, data: str | None, preset: str, config_file: str | None,
                     overrides: Sequence[str] | dict[str, Any] | None, flags: dict[str, Any],
                     source: Run | None) -> tuple[Recipe, BaseModel, PreparedData, Sizing | None]:
    """The config, prepared data and sizing choice of a new run. Layers, later wins: the preset, the recipe's
    sizing rule (default preset only, not when starting from another run's weights), a config file, --set,
    the flags, and the budget layer (a user's budget without steps: train for that long)."""
    the_recipe = get_recipe(recipe)
    layers = [*_config_layers(the_recipe, preset, config_file, overrides), flags]
    cfg = build_config(the_recipe.config_class, [*layers, budget_layer(layers[1:])])
    data = data or the_recipe.default_data
    prepared = the_recipe.prepare_data(cfg, data, source.assets if source else None)
    sizing = None
    if preset == "default" and source is None:
        sizing = the_recipe.size_for_data(prepared.info, cfg.train.max_minutes)
    if sizing is not None:
        layers.insert(1, sizing.layer)
        cfg = build_config(the_recipe.config_class, [*layers, budget_layer(layers[2:])])
        prepared = the_recipe.resize_data(prepared, cfg)
    return the_recipe, cfg, prepared, sizing


def prepare_run(recipe: str, data: str | None = None, *, preset: str = "default", config_file: str | None = None,
                overrides: Sequence[str] | dict[str, Any] | None = None, seed: int | None = None,
                max_steps: int | None = None, max_minutes: float | None = None
                ) -> tuple[Recipe, BaseModel, PreparedData, Sizing | None]:
    """What a new run starts from, without writing anything: the recipe, the config (the sizing rule applied),
    the prepared data and the rule's choice (for benchmarks and tools that drive the Trainer themselves)."""
    return _resolve_new_run(recipe, data, preset, config_file, overrides, _flag_layer(seed, max_steps, max_minutes),
                            None)


def sizing_record(sizing: Sizing | None, cfg: BaseModel) -> dict[str, Any] | None:
    """What config.json says about the sizing rule: its row, the numbers it read, what it chose, and which of
    its choices a config file, --set or a flag replaced (the value that ran is in the config)."""
    if sizing is None:
        return None
    chose = _flatten(sizing.layer)
    ran = _flatten(cfg.model_dump(mode="json"))
    return {"rule": sizing.rule, "inputs": sizing.inputs, "chose": chose,
            "overridden": sorted(key for key, value in chose.items() if ran.get(key) != value)}


def _flatten(nested: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in nested.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _freeze(model: torch.nn.Module, patterns: Sequence[str]) -> list[str]:
    frozen = []
    for pattern in patterns:
        hits = [n for n, p in model.named_parameters() if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            names = ", ".join(n for n, _ in list(model.named_parameters())[:8])
            raise ConfigError(f"--freeze '{pattern}' matches no parameter; names look like: {names}, ...")
        for name, param in model.named_parameters():
            if name in hits:
                param.requires_grad_(False)
                frozen.append(name)
    return frozen


def train(
    recipe: str | None,
    data: str | None,
    out: str | Path,
    *,
    preset: str = "default",
    config_file: str | None = None,
    overrides: Sequence[str] | dict[str, Any] | None = None,
    seed: int | None = None,
    max_steps: int | None = None,
    max_minutes: float | None = None,
    resume: bool = False,
    overwrite: bool = False,
    init_from: str | Path | None = None,
    freeze: Sequence[str] = (),
    quiet: bool = False,
) -> TrainResult:
    """Train a recipe on data into the run directory `out` (or continue it with resume=True).

    A time budget (`max_minutes`, or train.max_minutes in a config file or override) without steps the user
    set means "train for that long": the preset's max_steps no longer ends training, and the budget covers
    everything from here on (data preparation, training, the final validation and checkpoint)."""
    clock_start = time.monotonic()
    run = RunDir(out)
    flags = _flag_layer(seed, max_steps, max_minutes)

    if resume:
        saved = run.read_config()
        if not run.has_checkpoint():
            raise CheckpointError(f"'{run}' has no checkpoint to resume; start it again with --overwrite")
        the_recipe = get_recipe(saved["recipe"])
        if recipe and recipe != the_recipe.name:
            raise ConfigError(f"'{run}' is a {the_recipe.name} run, not {recipe}")
        cfg = build_config(the_recipe.config_class, [saved["config"], flags, budget_layer([flags])])
        data = data or saved["data"]["spec"]
        assets = the_recipe.load_assets(cfg, run)
        prepared = the_recipe.prepare_data(cfg, data, assets)
        if prepared.info["fingerprint"] != saved["data"]["fingerprint"]:
            raise ConfigError(f"the data at '{data}' changed since '{run}' started; resume with the same data "
                              "or start a new run")
        init_from = saved.get("init_from")
    else:
        if not recipe:
            raise ConfigError("name a recipe to train, e.g. `muselab train text-lm` (see `muselab recipes`)")
        source = load(init_from) if init_from else None
        the_recipe, cfg, prepared, sizing = _resolve_new_run(recipe, data, preset, config_file, overrides, flags,
                                                             source)
        data = data or the_recipe.default_data
        if cfg.train.max_steps is None:
            log.info("a time budget without train.max_steps: training runs for %g minutes, the final "
                     "validation included", cfg.train.max_minutes)
        if source:
            the_recipe.check_transfer(cfg, source.config, prepared, source.path)
        assets = prepared.assets

    dist = init_distributed(resolve_device(cfg.train.device).type)
    try:
        device = resolve_device(cfg.train.device, dist.local_rank)
        torch.manual_seed(cfg.train.seed)  # initial weights: same seed, same model, on every rank
        model = the_recipe.build_model(cfg, assets)
        if init_from and not resume:
            load_into(model, load_tensors(Path(init_from) / files.MODEL), Path(init_from), strict=False)
        frozen = _freeze(model, freeze) if freeze else []
        if resume and saved.get("freeze"):
            frozen = _freeze(model, saved["freeze"])
        trainer = Trainer(model, cfg.train, run, prepared.train, prepared.val, device=device, dist=dist, quiet=quiet,
                          clock_start=clock_start)
        requested_precision = cfg.train.precision
        cfg.train.precision = trainer.precision  # config.json records what ran; a resume keeps it
        if not resume:
            if dist.is_main:
                run.claim(overwrite)
                with run.writing():  # recipes save assets through their own writers (tokenizer, vocabularies)
                    the_recipe.save_assets(assets, run)
                run.write_json(files.CONFIG, {
                    "recipe": the_recipe.name, "preset": preset, "config": json.loads(cfg.model_dump_json()),
                    "data": prepared.info, "init_from": str(init_from) if init_from else None,
                    "freeze": list(freeze), "frozen_parameters": len(frozen),
                    "precision": {"requested": requested_precision, "resolved": trainer.precision,
                                  "reason": trainer.precision_choice.reason},
                    "sizing": sizing_record(sizing, cfg),
                    "parameters": sum(p.numel() for p in model.parameters()),
                    "versions": _versions(), "created": datetime.now(UTC).isoformat(timespec="seconds"),
                })
            dist.barrier()
        elif dist.is_main:
            run.reopen()
            saved["config"] = json.loads(cfg.model_dump_json())
            run.write_json(files.CONFIG, saved)
        trainer.on_validate = the_recipe.validation_hook(model, cfg, assets, run) if dist.is_main else None
        result = trainer.fit(resume=resume)
        if dist.is_main:
            _finish_run(run, result)
        # every rank leaves the group together: a rank that tears gloo down while another still works on the
        # run aborts now and then at exit ("terminate called without an active exception")
        dist.barrier()
        return result
    finally:
        shutdown_distributed()


@dataclass
class TrainingPlan:
    """What `train()` would do with these arguments: the config (the sizing rule applied), the rule's record,
    the data's statistics, the precision chosen, and the optimizer steps estimated from timed steps."""

    recipe: str
    config: BaseModel
    sizing: dict[str, Any] | None
    data: dict[str, Any]
    precision: str
    parameters: int
    step_s: float
    estimated_steps: int | None


def plan(recipe: str, data: str | None = None, *, preset: str = "default", config_file: str | None = None,
         overrides: Sequence[str] | dict[str, Any] | None = None, seed: int | None = None,
         max_steps: int | None = None, max_minutes: float | None = None, probe_steps: int = 3) -> TrainingPlan:
    """A dry run: prepare the data, apply the sizing rule, build the model and time `probe_steps` training
    steps on a copy of nothing that is kept; writes nothing (`muselab train ... --dry-run`)."""
    clock_start = time.monotonic()
    flags = _flag_layer(seed, max_steps, max_minutes)
    the_recipe, cfg, prepared, sizing = _resolve_new_run(recipe, data, preset, config_file, overrides, flags, None)
    device = resolve_device(cfg.train.device)
    torch.manual_seed(cfg.train.seed)
    model = the_recipe.build_model(cfg, prepared.assets)
    trainer = Trainer(model, cfg.train, RunDir(Path(".")), prepared.train, prepared.val, device=device, quiet=True)
    cfg.train.precision = trainer.precision
    steps, step_s = trainer.estimate_steps(time.monotonic() - clock_start, probe_steps)
    return TrainingPlan(the_recipe.name, cfg, sizing_record(sizing, cfg), prepared.info, trainer.precision,
                        sum(p.numel() for p in model.parameters()), step_s, steps)


def _finish_run(run: RunDir, result: TrainResult) -> None:
    from muselab.report.plots import plot_training_curves

    state = _read_state(run)
    state.update({"best_val_loss": result.best_val_loss, "best_step": result.best_step,
                  "final_val_loss": result.final_val_loss, "weights": result.kept, "stopped_by": result.stopped_by})
    run.write_json(files.TRAINER_STATE_JSON, state)
    records = run.read_metrics()
    if records:
        plot_training_curves(records, run / "loss.png", title=run.path.name)
    saved = run.read_config()
    write_model_card(run, saved, state, None, get_recipe(saved["recipe"]).pipeline_tag)


def load(path: str | Path, device: str = "auto") -> Run:
    """Load a run directory: safetensors and JSON only, checked before use. `device`: "auto" (a GPU when
    there is one), "cpu", "cuda", "cuda:1", "mps". `builtin:RECIPE` loads the run a recipe ships, if
    it ships one (`builtin:audio-vocoder`)."""
    path = shipped_run(str(path)) if str(path).startswith("builtin:") else path
    run = RunDir(path)
    saved = run.read_config()
    recipe = get_recipe(saved["recipe"])
    try:
        cfg = recipe.config_class.model_validate(saved["config"])
    except ValidationError as err:
        raise CheckpointError(f"'{run / files.CONFIG}' does not match this muselab version's {recipe.name} "
                              f"config ({describe_validation_error(err)})") from None
    assets = recipe.load_assets(cfg, run)
    model = recipe.build_model(cfg, assets)
    load_into(model, load_tensors(run / files.MODEL), run / files.MODEL)
    model.to(resolve_device(device)).eval()
    return Run(Path(path), recipe, cfg, assets, model, saved)


def shipped_run(name: str) -> Path:
    """The folder of `builtin:RECIPE`, the trained run a recipe ships with muselab."""
    recipe = get_recipe(name.removeprefix("builtin:"))
    folder = recipe.shipped_run()
    if folder is None:
        raise CheckpointError(f"no trained {recipe.name} run ships with this muselab installation; train one with "
                              f"`muselab train {recipe.name}` and name its folder")
    return folder


def generate(path: str | Path, main: Any = None, /, *, device: str = "auto", **controls: Any) -> Result:
    return load(path, device).generate(main, **controls)


def export(path: str | Path, format: str = "onnx", out: str | Path | None = None, *, opset: int | None = None,
           overwrite: bool = False) -> Exported:
    """`load(path, "cpu").export(...)`, refusing a recipe that does not export before any weights are read."""
    from muselab.exporter import check_exportable, check_format

    check_exportable(get_recipe(RunDir(path).read_config()["recipe"]))
    check_format(format, opset)
    return load(path, "cpu").export(format, out, opset=opset, overwrite=overwrite)


def evaluate(path: str | Path, data: str | None = None, device: str = "auto",
             overrides: Sequence[str] | None = None) -> dict[str, Any]:
    return load(path, device).evaluate(data, overrides)
