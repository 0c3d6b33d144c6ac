"""What a recipe offers, in words for the CLI: config fields (with each preset's values), data, controls.

`muselab recipes NAME` prints `describe_recipe`; `muselab generate --help` ends each option's help with
`field_facts` (default, range, choices), so both read the same pydantic fields the values are checked by.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from muselab.core.config import build_config
from muselab.core.controls import alias_names, deprecated_aliases, field_choices, field_range, option_name
from muselab.core.registry import Recipe

__all__ = ["describe_recipe", "field_facts", "show_value"]


def show_value(value: Any) -> str:
    """A default as a person reads it: unset, on/off, a list joined by commas, quotes only when needed."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return ", ".join(show_value(v) for v in value) if value else "none"
    if isinstance(value, str):
        return repr(value) if value == "" or " " in value else value
    return str(value)


def field_facts(field: FieldInfo, default: bool = True) -> str:
    """"default: 0.8; range: >= 0" for a pydantic field: its default, range and choices."""
    facts = []
    if default:
        facts.append("required" if field.is_required() else
                     f"default: {show_value(field.get_default(call_default_factory=True))}")
    if field_range(field):
        facts.append(f"range: {field_range(field)}")
    choices = field_choices(field)
    if choices:
        facts.append("choices: " + ", ".join(str(c) for c in choices))
    return "; ".join(facts)


def _leaves(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, FieldInfo]]:
    """(dotted name, field) for every value field of a config, sections walked in order."""
    for name, field in model.model_fields.items():
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            yield from _leaves(kind, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", field


def _lookup(values: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        values = values[part]
    return values


def describe_recipe(recipe: Recipe) -> str:
    """Everything a person needs to choose before training and generating with `recipe`."""
    resolved = {preset: build_config(recipe.config_class, [overrides]).model_dump()
                for preset, overrides in recipe.presets.items()}
    base = resolved.get("default") or build_config(recipe.config_class, []).model_dump()
    lines = [f"{recipe.name}: {recipe.summary}", "", "data (--data):"]
    lines.append(f"  default: {recipe.default_data}")
    if recipe.data_formats:
        lines.append(f"  your own: {recipe.data_formats}")
    for spec, about in recipe.builtin_data.items():
        lines.append(f"  {spec}: {about}")
    lines += ["", f"presets (--preset): {', '.join(recipe.presets)}", "",
              "config fields (--set KEY=VALUE, or a TOML file for --config; value of the default preset, then "
              "other presets where they differ):"]
    for dotted, field in _leaves(recipe.config_class):
        value = _lookup(base, dotted)
        others = [f"{preset}: {show_value(_lookup(v, dotted))}" for preset, v in resolved.items()
                  if preset != "default" and _lookup(v, dotted) != value]
        facts = "; ".join(part for part in (", ".join(others), field_facts(field, default=False)) if part)
        line = f"  {dotted} = {show_value(value)}"
        if facts:
            line += f" ({facts})"
        if field.description:
            line += f"  {field.description}"
        lines.append(line)
    lines += ["", f"generation controls (muselab generate RUN ...; also `muselab generate --recipe {recipe.name} "
              "--help`):"]
    for name, field in recipe.controls_class.model_fields.items():
        old = deprecated_aliases(field)
        spelled = ", ".join(option_name(n) for n in [name, *alias_names(field, name)] if n not in old)
        lines.append(f"  {spelled} ({field_facts(field)})  {field.description or ''}".rstrip())
    return "\n".join(lines)
