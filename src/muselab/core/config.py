"""Configs are pydantic models: validated, documented, and settable from presets, TOML and `--set`.

Layering, later wins: the recipe's defaults (the CPU preset) <- a named preset <- a TOML file <-
`--set key=value` <- explicit CLI flags. Every layer is a nested dict checked against the schema, so
an unknown key or a bad value is refused with one line naming the key and what is allowed.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from muselab.core.errors import ConfigError


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class TrainConfig(Section):
    """Everything the one Trainer needs; shared by all recipes."""

    max_steps: int | None = Field(2000, ge=1, description="optimizer steps to run; null = until train.max_minutes "
                                  "ends (what a budget without explicit steps means)")
    batch_size: int = Field(32, ge=1, description="examples per micro-batch on each process")
    grad_accum: int = Field(1, ge=1, description="micro-batches accumulated per optimizer step")
    lr: float = Field(1e-3, gt=0, description="peak learning rate")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="final learning rate as a share of the peak")
    warmup_steps: int = Field(100, ge=0, description="linear warm-up steps before the cosine decay")
    weight_decay: float = Field(0.1, ge=0, description="AdamW weight decay (matrices only)")
    beta1: float = Field(0.9, ge=0, lt=1, description="AdamW beta1")
    beta2: float = Field(0.99, ge=0, lt=1, description="AdamW beta2")
    grad_clip: float = Field(1.0, ge=0, description="clip the gradient norm to this value; 0 = off")
    ema_decay: float = Field(0.0, ge=0, lt=1, description="EMA of the weights (0 = off); saved weights are the EMA")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="bf16 autocast for matmuls, or auto: bf16 where it trains faster here (GPUs with bf16; "
        "CPUs with AMX/AVX512-BF16 when a timed step of the model gains), else fp32")
    device: Literal["auto", "cpu", "cuda", "mps"] = Field("auto", description="where to train")
    compile: bool = Field(False, description="wrap the model in torch.compile")
    eval_every: int = Field(250, ge=0, description="validate every N steps (0 = only at the end)")
    eval_batches: int = Field(20, ge=0, description="batches per validation, during and at the end of training "
                              "(0 = all); the same batches each time, so validations compare")
    patience: int = Field(0, ge=0, description="stop after this many validations without a new best (0 = off)")
    checkpoint_every: int = Field(500, ge=0, description="write a checkpoint every N steps (0 = only at the end)")
    log_every: int = Field(10, ge=1, description="write a metrics.jsonl line every N steps")
    max_minutes: float | None = Field(None, gt=0, description="wall-clock budget, final validation included; the "
                                      "schedule fits itself to it")
    max_bad_steps: int = Field(5, ge=1, description="stop after this many non-finite steps in a row")
    tensorboard: bool = Field(False, description="also log to RUN/tensorboard")
    seed: int = Field(1337, description="seed for weights, data order and dropout")


    @model_validator(mode="after")
    def _has_an_end(self) -> TrainConfig:
        if self.max_steps is None and self.max_minutes is None:
            raise ValueError("train.max_steps is null and there is no train.max_minutes: give one of them")
        return self


def budget_layer(user_layers: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The config layer that makes a user's time budget mean "train for that long".

    When a layer the user wrote (a config file, `--set`, flags; not a preset) gives `train.max_minutes` and
    none gives `train.max_steps`, the preset's step count no longer ends training: `max_steps` becomes null
    and the schedule follows the clock. A budget from a preset, or steps the user set, keep both limits.
    """
    budget = steps = False
    for layer in user_layers:
        train = layer.get("train")
        if isinstance(train, Mapping):
            budget = budget or ("max_minutes" in train and train["max_minutes"] is not None)
            steps = steps or "max_steps" in train
            if "max_minutes" in train and train["max_minutes"] is None:
                budget = False
    return {"train": {"max_steps": None}} if budget and not steps else {}


def describe_validation_error(err: ValidationError, prefix: str = "") -> str:
    """The first problem of a config as one phrase naming its dotted key."""
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"])
    key = f"{prefix}{key}" if key else prefix.rstrip(".")
    if first["type"] == "extra_forbidden":
        return f"unknown config key '{key}'"
    if first["type"] == "value_error" and isinstance(first.get("input"), dict):
        # a check across fields (a model validator) already names the keys in its message
        return str(first["msg"]).removeprefix("Value error, ")
    value = first.get("input")
    return f"bad value for {key}: {value!r} ({first['msg'][0].lower()}{first['msg'][1:]})"


def _allowed_keys(model: type[BaseModel], path: list[str]) -> tuple[str, list[str]]:
    """Walk the schema along `path`; return the deepest section name reached and its keys."""
    current: type[BaseModel] = model
    walked: list[str] = []
    for part in path:
        field = current.model_fields.get(part)
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            break
        current, walked = annotation, walked + [part]
    return ".".join(walked), sorted(current.model_fields)


def build_config(model: type[BaseModel], layers: Iterable[Mapping[str, Any]]) -> BaseModel:
    """Merge nested dicts in order and validate them into `model`; one-line ConfigError otherwise."""
    # Start from the full defaults: a layer that sets one field of a section keeps the recipe's other
    # defaults for that section rather than falling back to the section class's own.
    merged: dict[str, Any] = model().model_dump()
    for layer in layers:
        _deep_merge(merged, layer)
    try:
        return model.model_validate(merged)
    except ValidationError as err:
        first = err.errors()[0]
        if first["type"] == "extra_forbidden":
            path = [str(p) for p in first["loc"]]
            section, keys = _allowed_keys(model, path[:-1])
            where = f"in '{section}'" if section else "at the top level"
            raise ConfigError(
                f"unknown config key '{'.'.join(path)}'; keys {where}: {', '.join(keys)}"
            ) from None
        raise ConfigError(describe_validation_error(err)) from None


def _deep_merge(into: dict[str, Any], layer: Mapping[str, Any]) -> None:
    for key, value in layer.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        elif isinstance(value, Mapping):
            into[key] = {}
            _deep_merge(into[key], value)
        else:
            into[key] = value


def parse_overrides(pairs: Iterable[str]) -> dict[str, Any]:
    """`["model.n_layer=6", "train.precision=bf16"]` -> nested dict. Values are JSON when they parse."""
    nested: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set expects key=value (for example model.n_layer=6), got '{pair}'")
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw  # a bare string such as bf16
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: '{part}' is a value, not a section")
        node[parts[-1]] = value
    return nested


def load_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file '{path}' does not exist") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config file '{path}' is not valid TOML: {err}") from None
