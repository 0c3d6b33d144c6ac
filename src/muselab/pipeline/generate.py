"""The one path every generation takes (DESIGN.md), whoever asks: the CLI, the Python API or the server.

    controls validated -> inputs moderated, item by item -> the recipe makes content (decoding under the
    policy's bans) -> outputs moderated, item by item -> memorization guard -> a typed result whose save()
    writes every file with its manifest and watermark

A recipe only turns controls into content (`Recipe.generate`); it cannot skip a check, because the checks
are here. A refused item (a blocked input or output, a memorised sample under `reject`) becomes a
`Refused` entry and the other items go on; only when every item is refused, or the caller asked for
all-or-nothing (`on_refused="fail"`), does the request end with the refusal as an error.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from pydantic import BaseModel

from muselab.core.controls import parse_controls
from muselab.core.registry import NOT_MEASURED, GenerationContext, MemorizationGuard, Recipe
from muselab.core.results import Provenance, Refused, Result, SequenceResult, TextResult
from muselab.pipeline.artifacts import save_result
from muselab.safety.guard import ModeratedStream, ban_words, moderation_summary
from muselab.safety.moderation import (
    Policy,
    PolicyViolation,
    Verdict,
    load_policy,
    moderate,
    raise_if_blocked,
)

__all__ = ["OnRefused", "RefusedError", "generate", "moderate_texts"]

OnRefused = Literal["skip", "fail"]


class RefusedError(PolicyViolation):
    """Every item of a request was refused by a safety check (or one was, under on_refused="fail")."""


def _blocked_categories(verdict: Verdict) -> str:
    return ", ".join(dict.fromkeys(m.category for m in verdict.matches if m.action == "block"))


def _input_action(recipe: Recipe, policy: Policy, name: str) -> str:
    """'steer' inputs are moderated as the policy says; 'transform' ones are only recorded, unless the
    policy's [inputs] section says otherwise."""
    configured = policy.inputs_action
    if configured:
        return "steer" if configured == "block" else "transform"
    return recipe.capabilities.inputs.get(name, "steer")


def _as_warning(verdict: Verdict) -> list[dict[str, Any]]:
    """A verdict recorded without acting on it: every match becomes a warning entry."""
    return [{**entry, "action": "warn"} for entry in moderation_summary(verdict)]


class _Inputs:
    """The request's user texts, moderated item by item before anything is generated."""

    def __init__(self, recipe: Recipe, controls: BaseModel, policy: Policy) -> None:
        self.summaries: dict[str, list[list[dict[str, Any]]]] = {}
        self.shown: dict[str, Any] = {}
        self.refused: list[Refused] = []
        self.kept: dict[str, list[int]] = {}
        for name in recipe.capabilities.inputs:
            value = getattr(controls, name, None)
            if value is None:
                continue
            texts = [value] if isinstance(value, str) else list(value)
            action = _input_action(recipe, policy, name)
            shown, summaries, kept = [], [], []
            for index, text in enumerate(texts):
                verdict = moderate(text, policy)
                if action == "transform":
                    # transformed, not continued: the text is used as given and the verdict recorded
                    shown.append(text)
                    summaries.append(_as_warning(verdict))
                    kept.append(index)
                    continue
                if not verdict.allowed:
                    if isinstance(value, str):
                        raise_if_blocked(verdict, name)  # one prompt: the request itself is refused
                    self.refused.append(Refused(index, "input moderation", _blocked_categories(verdict),
                                                f"the {name} was blocked by the moderation policy"))
                    shown.append(text)  # echoed as given, so a file of results lines up with the inputs
                    summaries.append(moderation_summary(verdict))
                    continue
                shown.append(verdict.redacted)
                summaries.append(moderation_summary(verdict))
                kept.append(index)
            self.shown[name] = shown[0] if isinstance(value, str) else shown
            self.summaries[name] = summaries
            self.kept[name] = kept

    def allowed_controls(self, controls: BaseModel) -> BaseModel:
        """The controls with list inputs cut to the allowed items (the model reads them as given)."""
        update = {name: [getattr(controls, name)[i] for i in kept] for name, kept in self.kept.items()
                  if isinstance(getattr(controls, name), list)}
        return controls.model_copy(update=update) if update else controls


def _fill_seed(controls: BaseModel) -> BaseModel:
    """An unset seed becomes a drawn one, so the manifest can say how to make the output again."""
    if "seed" in type(controls).model_fields and controls.seed is None:
        return controls.model_copy(update={"seed": secrets.randbelow(2**31)})
    return controls


def _moderate_outputs(result: Result, policy: Policy, refused: list[Refused]) -> list[list[dict[str, Any]]]:
    """Text outputs moderated item by item: redactions applied, blocked items refused (and removed)."""
    summaries: list[list[dict[str, Any]]] = []
    if isinstance(result, TextResult):
        blocked_items = []
        for index, text in enumerate(result.texts):
            verdict = moderate(text, policy)
            if not verdict.allowed:
                refused.append(Refused(index, "output moderation", _blocked_categories(verdict),
                                       f"generated sample {index + 1} was blocked by the moderation policy; try "
                                       "another --seed or --ban the word"))
                blocked_items.append(index)
                continue
            result.texts[index] = verdict.redacted
            summaries.append(moderation_summary(verdict))
        _drop_items(result, blocked_items)
    elif isinstance(result, SequenceResult):
        blocked_items = []
        for i, outputs in enumerate(result.nbest):
            item_summaries, blocked = [], None
            for j, output in enumerate(outputs):
                text = " ".join(output) if isinstance(output, list) else output
                verdict = moderate(text, policy)
                if not verdict.allowed:
                    blocked = verdict
                    break
                if verdict.redacted != text:
                    outputs[j] = verdict.redacted.split() if isinstance(output, list) else verdict.redacted
                item_summaries.extend(moderation_summary(verdict))
            if blocked is not None:
                refused.append(Refused(result.input_indices[i], "output moderation", _blocked_categories(blocked),
                                       "the output was blocked by the moderation policy"))
                blocked_items.append(i)
                continue
            summaries.append(item_summaries)
        _drop_items(result, blocked_items)
    return summaries


def _guard_memorization(guard: MemorizationGuard | str | None, result: Result, refused: list[Refused]
                        ) -> list[dict[str, Any]]:
    """Measure every item; redraw, flag or refuse the close ones as the guard's mode says."""
    count = len(result.items)
    if guard is None:
        return [{"memorization": {"checked": False, "reason": "turned off"}} for _ in range(count)]
    if isinstance(guard, str):
        if guard != NOT_MEASURED:
            result.warnings.append(guard)
        return [{"memorization": {"checked": False, "reason": guard}} for _ in range(count)]
    values = guard.measure(result, range(count))
    redraws = [0] * count
    if guard.mode in ("resample", "reject"):
        for attempt in range(1, guard.attempts + 1):
            close = [i for i, v in enumerate(values) if guard.too_close(v)]
            if not close:
                break
            guard.redraw(result, close, attempt)
            for i, value in zip(close, guard.measure(result, close), strict=True):
                values[i] = value
                redraws[i] += 1
    notes = [guard.note(v, r) for v, r in zip(values, redraws, strict=True)]
    for i, value in enumerate(values):
        if guard.too_close(value):
            result.warnings.append(guard.describe(i, value))
    if guard.mode == "reject":
        rejected = [i for i, v in enumerate(values) if guard.too_close(v)]
        for i in rejected:
            refused.append(Refused(i, "memorization", "memorization", guard.describe(i, values[i])))
        if rejected:
            _drop_items(result, rejected)
            notes = [n for i, n in enumerate(notes) if i not in set(rejected)]
    return notes


def _drop_items(result: Result, indices: Sequence[int]) -> None:
    """Take refused items out of every per-item field of a result (the recipe's own notes too)."""
    drop = set(indices)
    for name in ("texts", "prompts", "prompt_indices", "arrays", "clips", "timing", "labels", "inputs", "nbest",
                 "scores", "attention", "input_indices", "midi", "rolls", "notes"):
        values = getattr(result, name, None)
        if values:
            setattr(result, name, [v for i, v in enumerate(values) if i not in drop])


def _merge(*per_item: Sequence[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    merged: list[dict[str, Any]] = [{} for _ in range(count)]
    for notes in per_item:
        for index, note in enumerate(notes[:count]):
            merged[index].update(note)
    return merged


def moderate_texts(texts: Sequence[str], policy: Policy | None = None) -> tuple[list[str], list[dict[str, Any]]]:
    """Texts made outside a request (evaluation samples) moderated for saving: redacted, a blocked one
    withheld, and each one's manifest note."""
    policy = policy or load_policy(None)
    shown, notes = [], []
    for text in texts:
        verdict = moderate(text, policy)
        shown.append(verdict.redacted if verdict.allowed else "[withheld: blocked by the moderation policy]")
        notes.append({"moderation": {"policy": _policy_label(policy), "sample": moderation_summary(verdict)}})
    return shown, notes


def _policy_label(policy: Policy) -> str:
    return "default" if policy.source == "the default policy" else policy.source


def generate(recipe: Recipe, model: torch.nn.Module, cfg: BaseModel, assets: dict[str, Any],
             provenance: Provenance, values: dict[str, Any] | BaseModel, *,
             on_text: Callable[[str], None] | None = None, on_refused: OnRefused = "skip",
             load_run: Callable[[str], Any] | None = None) -> Result:
    """Run one request through every check and return its typed result (saveable, with provenance);
    `load_run` opens another run a recipe may use as a part (GenerationContext.load_run)."""
    controls = values if isinstance(values, BaseModel) else parse_controls(recipe.controls_class, values)
    controls = _fill_seed(controls)
    unset = {key: value for key, value in recipe.run_defaults(model, cfg, assets).items()
             if getattr(controls, key, None) is None}
    controls = controls.model_copy(update=unset) if unset else controls
    policy = load_policy(getattr(controls, "policy", None))
    inputs = _Inputs(recipe, controls, policy)
    if inputs.refused and (on_refused == "fail" or not any(inputs.kept.values())):
        first = inputs.refused[0]
        raise PolicyViolation(f"input {first.index + 1} was blocked by the moderation policy (category: "
                              f"{first.category}); change it, leave it out, or pass --policy FILE.toml")
    words = ban_words(policy, getattr(controls, "ban", ())) if recipe.capabilities.text_outputs else []
    stream = ModeratedStream(policy, on_text) if on_text and recipe.capabilities.streams_text else None
    device = next(model.parameters()).device
    context = GenerationContext(policy=policy, ban_words=words, on_text=stream.feed if stream else None,
                                device=device, load_run=load_run)
    model.eval()
    allowed = inputs.allowed_controls(controls)
    with torch.no_grad():
        result = recipe.generate(model, cfg, assets, allowed, context)
        refused = list(inputs.refused)
        # the memorization guard sees the raw outputs (a redaction must not hide a copy)
        guard = recipe.memorization_guard(model, cfg, assets, allowed, context)
        memorization = _guard_memorization(guard, result, refused)
    # per-item notes live on the result from here on, so every later drop keeps them aligned
    result.notes = _merge(memorization, result.notes, count=len(result.items))
    if isinstance(result, SequenceResult) and inputs.kept.get("input") is not None:
        # positions of the outputs in the request, across inputs the moderation refused
        kept, shown = inputs.kept["input"], inputs.shown["input"]
        result.input_indices = [kept[i] for i in (result.input_indices or range(len(result.nbest)))]
        result.inputs = [shown[i] for i in result.input_indices]  # echoed as moderated
    if isinstance(result, TextResult) and isinstance(getattr(controls, "prompt", None), list):
        kept, shown = inputs.kept["prompt"], inputs.shown["prompt"]
        result.prompt_indices = [kept[i] for i in result.prompt_indices]
        result.prompts = [shown[i] for i in result.prompt_indices]  # the texts are moderated as a whole below
    output_summaries = _moderate_outputs(result, policy, refused) if recipe.capabilities.text_outputs else []
    if stream is not None and result.texts:
        stream.finish(result.texts[0])
    count = len(result.items)
    moderation = []
    for i in range(count):
        entry: dict[str, Any] = {"policy": _policy_label(policy)}
        for name, summaries in inputs.summaries.items():
            part = "prompt" if name == "prompt" else name
            index = 0
            if isinstance(result, SequenceResult) and result.input_indices:
                index = result.input_indices[i]
            elif isinstance(result, TextResult) and result.prompt_indices:
                index = result.prompt_indices[i]
            entry[part] = summaries[index] if len(summaries) > index else []
        if recipe.capabilities.text_outputs:
            entry["output" if isinstance(result, SequenceResult) else "sample"] = (
                output_summaries[i] if i < len(output_summaries) else [])
        moderation.append({"moderation": entry})
    result.notes = _merge(moderation, result.notes, count=count)
    result.refused = sorted(refused, key=lambda r: r.index)
    result.requested = count + len(result.refused)
    if result.refused and (on_refused == "fail" or count == 0):
        first = result.refused[0]
        category = "" if first.check == "memorization" else f" (category: {first.category})"
        raise RefusedError(first.reason + category)
    result.controls = {**controls.model_dump(), **inputs.shown}  # the manifests hold the moderated inputs
    result.provenance = provenance
    result._writer = save_result
    return result
