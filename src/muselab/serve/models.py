"""The models a server holds: each run's request schema (derived from its recipe's controls model), the
limits applied at the edge, and the one-at-a-time worker with a bounded queue and a time limit.

A request body is the recipe's own controls model (`Recipe.controls_class`, the model the CLI's options
come from) with three changes a server needs: controls that name a file take an artifact id instead (an
upload or an earlier output; requests never name a path), controls the server decides (the moderation
policy file, where to write a plot, whether to print as it goes) are left out, and counts are capped by the
server's limits. Every field keeps its description, gains its range in words, and the recipe's controls
model validates the values once more in the generation pipeline.
"""

from __future__ import annotations

import math
import threading
import time
import types as pytypes
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, create_model
from pydantic.fields import FieldInfo

from muselab.core.controls import field_choices, field_range
from muselab.core.errors import ControlError, MuselabError

__all__ = ["FILE_CONTROLS", "HIDDEN_CONTROLS", "MODEL_CONTROLS", "TEXT_CONTROLS", "TEXT_OR_FILE_CONTROLS", "GenerationStopped",
           "Limits", "ServedModel", "request_model"]

ARTIFACT_ID = r"^[0-9a-f]{24}$"
# Controls that name a file on the machine: in a request they take an artifact id, and the kind of file
FILE_CONTROLS: dict[str, str] = {"wav": "audio", "timbre": "audio", "mel": "array", "init_image": "image",
                                 "mask": "image"}
# Controls that name another run: in a request they take the name of a model this server holds
MODEL_CONTROLS: dict[str, str] = {"vocoder": "audio-vocoder", "g2p": "text-seq2seq", "ddsp": "audio-ddsp"}
# Controls the server decides: a policy file and an output path are the server's, and streaming is the
# `stream` endpoint's business
HIDDEN_CONTROLS = frozenset({"policy", "attention_plot", "stream"})
# Controls that take either text (notes) or a file: in a request, the text or an artifact id, never a path
TEXT_OR_FILE_CONTROLS = frozenset({"primer", "melody"})
# String controls that are plain text (a test checks every registered recipe's string controls are in
# one of these tables, so a new control that names a file cannot slip through as text)
TEXT_CONTROLS = frozenset({"prompt", "stop", "ban", "input", "notes", "text", "speaker", "label", "memorization",
                           "sampler", "interpolate", "seed_text", "key", "input_key", "style", "instrument", "mode",
                           "scale"})
SEED_OR_ID = r"^([0-9]{1,19}|[0-9a-f]{24})$"


class GenerationStopped(MuselabError):
    """A generation stopped before it finished: the time limit passed, or the client went away."""


@dataclass(frozen=True)
class Limits:
    """What one request may ask for, and what the server accepts at its door."""

    max_body_bytes: int = 1_000_000
    max_upload_bytes: int = 20_000_000
    max_tokens: int = 1024  # new tokens per text sample (and symbols per seq2seq output)
    max_samples: int = 16  # text samples per request
    max_images: int = 64  # images per request (samples or interpolation frames)
    max_audio_seconds: float = 60.0  # seconds of sound per request, asked for or uploaded
    max_items: int = 256  # inputs or prompts in one request
    max_text_chars: int = 20_000  # characters in one text control (a prompt, a text to speak, notes)
    max_item_chars: int = 1_000  # characters in one item of a list control (an input, a stop string)
    time_limit_s: float = 120.0  # a generation running longer is stopped
    queue: int = 8  # requests waiting per model (beyond the one running) before 429

    def cap(self, name: str, writes_files: bool) -> int | None:
        if name in ("max_new_tokens", "max_length", "min_length"):
            return self.max_tokens
        if name == "num_samples":
            return self.max_images if writes_files else self.max_samples
        if name == "frames" or (name == "steps" and not writes_files):
            return self.max_images
        return None


def _optional(annotation: Any) -> tuple[Any, bool]:
    if get_origin(annotation) in (Union, pytypes.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) < len(get_args(annotation)):
            return (args[0] if len(args) == 1 else Union[tuple(args)]), True  # noqa: UP007
    return annotation, False


def _with_range(description: str | None, info: FieldInfo, extra: str = "") -> str:
    text = (description or "").strip()
    facts = []
    if field_range(info):
        facts.append(f"range: {field_range(info)}")
    choices = field_choices(info)
    if choices:
        facts.append("one of: " + ", ".join(str(c) for c in choices))
    if extra:
        facts.append(extra)
    if not facts:
        facts.append("no range: any value of its type")
    return f"{text} ({'; '.join(facts)})"


# names and choices, not text: a short string is plenty
SHORT_CONTROLS = frozenset({"label", "speaker", "sampler", "memorization", "key", "scale", "mode", "instrument"})


def _string_caps(annotation: Any, max_chars: int, item_chars: int, max_items: int) -> Any:
    """str -> str of at most max_chars; list[str] -> at most max_items strings of at most item_chars each."""
    if annotation is str:
        return Annotated[str, StringConstraints(max_length=max_chars)]
    if get_origin(annotation) is list and get_args(annotation) == (str,):
        return Annotated[list[Annotated[str, StringConstraints(max_length=item_chars)]], Field(max_length=max_items)]
    if get_origin(annotation) in (Union, pytypes.UnionType):
        args = tuple(_string_caps(a, max_chars, item_chars, max_items) for a in get_args(annotation))
        return Union[args]  # noqa: UP007
    return annotation


def _capped(info: FieldInfo, limit: int) -> FieldInfo:
    """The field with its upper bound lowered to `limit` (kept when it is lower already)."""
    bounds = [getattr(m, "le", None) for m in info.metadata] + [getattr(m, "lt", None) for m in info.metadata]
    current = min((b for b in bounds if b is not None), default=None)
    if current is not None and current <= limit:
        return info
    extra: dict[str, Any] = {"le": limit}
    if isinstance(info.default, int) and info.default > limit:
        extra["default"] = limit  # a default over the cap would pass unchecked
    lowered = FieldInfo.merge_field_infos(info, Field(**extra))
    lowered.metadata = [m for m in lowered.metadata if getattr(m, "le", limit) == limit
                        and getattr(m, "lt", None) is None]
    return lowered


def request_model(controls: type[BaseModel], name: str, limits: Limits, writes_files: bool,
                  held: dict[str, list[str]]) -> type[BaseModel]:
    """The request body of one served model: its controls model as a server takes it (module docstring)."""
    fields: dict[str, Any] = {}
    for key, info in controls.model_fields.items():
        if key in HIDDEN_CONTROLS:
            continue
        annotation, optional = _optional(info.annotation)
        if key in FILE_CONTROLS:
            fields[key] = (Annotated[str, StringConstraints(pattern=ARTIFACT_ID)] | None, Field(
                None, description=_with_range(info.description, info, "an artifact id: upload the file with POST "
                                              "/v1/uploads, or name an earlier output"),
                json_schema_extra={"x-muselab-file": FILE_CONTROLS[key]}))
            continue
        if key in MODEL_CONTROLS:
            names = held.get(MODEL_CONTROLS[key], [])
            fields[key] = (Literal[tuple(names)] | None if names else None, Field(  # type: ignore[misc]
                None, description=_with_range(info.description, info, "the name of a loaded "
                                              f"{MODEL_CONTROLS[key]} model" + ("" if names else
                                                                                 "; none is loaded here")),
                json_schema_extra={"x-muselab-model": MODEL_CONTROLS[key]}))
            continue
        if key == "interpolate":  # seeds, or (VAE) two pictures: artifact ids, never paths
            item = Annotated[str, StringConstraints(pattern=SEED_OR_ID)]
            fields[key] = (list[item] | None, Field(None, min_length=2, max_length=2, description=_with_range(
                info.description, info, "two seeds, or two artifact ids of pictures"),
                json_schema_extra={"x-muselab-file": "image-or-seed"}))
            continue
        limit = limits.cap(key, writes_files)
        capped = _capped(info, limit) if limit is not None else info
        note = "capped by this server" if capped is not info else ""
        # one name per control in the REST schema (its own): other spellings are the CLI's
        new = FieldInfo.merge_field_infos(capped, Field(description=_with_range(info.description, capped, note),
                                                        validation_alias=key))
        chars = 100 if key in SHORT_CONTROLS else limits.max_text_chars
        annotation = _string_caps(info.annotation, chars, limits.max_item_chars, limits.max_items)
        fields[key] = (annotation, new)
        del optional
    title = "".join(part.capitalize() for part in name.replace("_", "-").split("-") if part) + "Request"
    return create_model(title, __config__=ConfigDict(extra="forbid", title=title),
                        __doc__=f"What to generate with {name}: {controls.__doc__ or ''}".strip(), **fields)


def _audio_seconds(path: Path) -> float | None:
    try:
        import soundfile

        info = soundfile.info(str(path))
        return info.frames / max(info.samplerate, 1)
    except Exception:  # not audio (or not readable): the recipe says so
        return None


def check_audio_length(recipe_name: str, values: dict[str, Any], files: dict[str, Path], limits: Limits) -> None:
    """Refuse a request whose sound would be longer than the server's limit, before generating it."""
    seconds = 0.0
    for key, path in files.items():
        if FILE_CONTROLS.get(key) == "audio" and key != "timbre":
            seconds = max(seconds, _audio_seconds(path) or 0.0)
    if values.get("notes"):
        beats = 0.0
        for token in str(values["notes"]).replace(",", " ").split():
            try:
                beats += float(token.partition(":")[2] or 1.0)
            except ValueError:
                beats += 1.0  # unreadable beats: the recipe names the note
        seconds = max(seconds, beats * 60.0 / float(values.get("tempo") or 120.0))
    if recipe_name.endswith("tts") and values.get("text"):
        # about 15 characters a second at speed 1 (plain English read aloud); slower speeds last longer
        seconds = max(seconds, len(str(values["text"])) / 15.0 / max(float(values.get("speed") or 1.0), 0.25))
    if seconds > limits.max_audio_seconds:
        raise LimitExceeded(f"the sound asked for would last about {seconds:.0f} s; this server makes at most "
                            f"{limits.max_audio_seconds:g} s per request", field="notes" if values.get("notes")
                            else "text" if values.get("text") else next(iter(files), None))


class LimitExceeded(ControlError):
    """A request asks for more than the server's limits allow (422, naming the control)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class QueueFull(Exception):
    def __init__(self, retry_after: int) -> None:
        super().__init__(f"retry after {retry_after} s")
        self.retry_after = retry_after


@dataclass
class _Job:
    deadline: float
    cancelled: threading.Event = field(default_factory=threading.Event)
    timed_out: bool = False


class ServedModel:
    """One loaded run: its request schema, and a single worker with a bounded queue in front of it.

    One generation runs at a time per model (the model's memory and the cores are shared by all
    requests). The time limit and a client that goes away stop a generation at the next module call of
    the model (a forward pre-hook on each submodule), so nothing half-made is saved."""

    def __init__(self, name: str, run: Any, limits: Limits, held: dict[str, list[str]]) -> None:
        self.name, self.run, self.limits = name, run, limits
        self.recipe = run.recipe
        self.request_class = request_model(run.recipe.controls_class, name, limits,
                                           run.recipe.capabilities.writes_files, held)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"muselab-{name}")
        self._lock = threading.Lock()
        self.pending = 0  # running + waiting
        self.mean_seconds = 1.0
        self._job: _Job | None = None
        for module in run.model.modules():
            module.register_forward_pre_hook(self._check_job)

    def _check_job(self, module: Any, args: Any) -> None:
        job = self._job
        if job is None:
            return
        if job.cancelled.is_set():
            raise GenerationStopped("the client went away; generation stopped")
        if time.monotonic() > job.deadline:
            job.timed_out = True
            raise GenerationStopped(f"the generation took longer than this server's limit of "
                                    f"{self.limits.time_limit_s:g} s and was stopped; ask for less (fewer "
                                    "tokens, samples, images or steps)")

    def admit(self) -> None:
        """Take a place in the queue, or raise QueueFull with a Retry-After estimate."""
        with self._lock:
            if self.pending >= 1 + self.limits.queue:
                raise QueueFull(max(1, math.ceil(self.mean_seconds * self.pending)))
            self.pending += 1

    def release(self) -> None:
        with self._lock:
            self.pending -= 1

    def submit(self, work: Callable[[], Any], cancelled: threading.Event | None = None) -> Any:
        """Run `work` on the model's worker under the time limit (the place in the queue is already taken)."""
        def job() -> Any:
            current = _Job(time.monotonic() + self.limits.time_limit_s, cancelled or threading.Event())
            self._job = current
            start = time.monotonic()
            try:
                return work()
            finally:
                self._job = None
                self.mean_seconds = 0.8 * self.mean_seconds + 0.2 * (time.monotonic() - start)

        return self._executor.submit(job)

    def info(self) -> dict[str, Any]:
        from muselab.core import rundir as files

        saved, path = self.run.saved, Path(self.run.path)
        training = _read_json(path / files.TRAINER_STATE_JSON)
        summary = {key: training.get(key) for key in ("step", "elapsed_s", "best_val_loss", "best_step",
                                                      "final_val_loss", "stopped_by") if key in training}
        data = saved.get("data", {})
        return {
            "name": self.name, "recipe": self.recipe.name, "summary": self.recipe.summary,
            "run_id": self.run.run_id, "preset": saved.get("preset"), "parameters": saved.get("parameters"),
            "created": saved.get("created"),
            "data": _public(data),
            "training": summary, "eval": _read_json(path / files.EVAL),
            "capabilities": {"main_control": self.recipe.capabilities.main_control,
                             "writes_files": self.recipe.capabilities.writes_files,
                             "text_outputs": self.recipe.capabilities.text_outputs,
                             "streams_text": self.recipe.capabilities.streams_text},
            "controls_schema": self.request_class.model_json_schema(),
            "generate_url": f"/v1/models/{self.name}/generate",
            "stream_url": f"/v1/models/{self.name}/stream" if self.recipe.capabilities.streams_text else None,
            "queue": {"pending": self.pending, "limit": 1 + self.limits.queue},
        }

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _public(data: dict[str, Any]) -> dict[str, Any]:
    """The training data's description without the server's file paths."""
    def shows_path(value: Any) -> bool:
        return isinstance(value, str) and not value.startswith("builtin:") and ("/" in value or "\\" in value)

    return {key: value for key, value in data.items() if not shows_path(value)}


def _read_json(path: Path) -> dict[str, Any]:
    import json

    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}
