"""Validation shared by every modality's generation controls (one pydantic model per modality).

`parse_controls` validates a plain dict against any controls model and turns the first problem into one
`ControlError` line that names the option as the CLI spells it (`--top-p`) and states the allowed range
taken from the field itself, so the range lives in one place.

Other names for a control live on its field too (`aliases(...)`): the CLI adds them as flags, validation
accepts them, and a deprecated one says what replaced it, so the CLI and a REST schema read one table.
"""

from __future__ import annotations

import difflib
import enum
import types
import warnings
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from pydantic import AliasChoices, BaseModel, ValidationError
from pydantic.fields import FieldInfo

from muselab.core.errors import ControlError

__all__ = ["parse_controls", "option_name", "aliases", "alias_names", "deprecated_aliases", "field_range",
           "field_choices"]

ModelT = TypeVar("ModelT", bound=BaseModel)


def option_name(field: str) -> str:
    """The CLI spelling of a control: `top_p` -> `--top-p`."""
    return "--" + field.replace("_", "-")


def aliases(name: str, *others: str, deprecated: tuple[str, ...] = ()) -> dict[str, Any]:
    """Field keywords giving control `name` other accepted names: `Field(1, **aliases("num_samples", "n"))`.
    Names in `deprecated` still work, with a note saying to use `name`."""
    return {"validation_alias": AliasChoices(name, *others, *deprecated),
            "json_schema_extra": {"deprecated_aliases": list(deprecated)} if deprecated else None}


def alias_names(info: FieldInfo, name: str) -> list[str]:
    """The other names a control field accepts (its own name excluded), deprecated ones included."""
    alias = info.validation_alias
    choices = alias.choices if isinstance(alias, AliasChoices) else [alias] if alias else []
    return [c for c in choices if isinstance(c, str) and c != name]


def deprecated_aliases(info: FieldInfo) -> list[str]:
    extra = info.json_schema_extra
    return list(extra.get("deprecated_aliases", [])) if isinstance(extra, dict) else []


def deprecation_note(old: str, new: str) -> str:
    """The one line a deprecated control name prints: `--copy-guard is deprecated; use --memorization`."""
    return f"{option_name(old)} is deprecated; use {option_name(new)}"


def parse_controls(cls: type[ModelT], values: dict[str, Any]) -> ModelT:
    """Validate `values` against the controls model `cls`; any problem becomes one `ControlError` line."""
    for name, info in cls.model_fields.items():
        for old in deprecated_aliases(info):
            if old in values:
                warnings.warn(deprecation_note(old, name), DeprecationWarning, stacklevel=2)
    try:
        return cls.model_validate(values)
    except ValidationError as exc:
        # Only the first problem is reported: the CLI prints one line and the user fixes one thing at a time.
        raise ControlError(_describe_error(cls, values, exc.errors()[0])) from exc


def _describe_error(cls: type[BaseModel], values: Any, error: Any) -> str:
    loc = error.get("loc", ())
    if not loc:
        return f"bad controls: {_one_line(error.get('msg', 'invalid'))}"
    key = str(loc[0])
    option = option_name(key)
    fields = _fields_by_key(cls)
    kind = error.get("type", "")

    if kind == "extra_forbidden":
        allowed = [option_name(name) for name in cls.model_fields]
        # A high cutoff suggests only for typos (top_q -> top-p), not for unrelated names (seed -> steps).
        close = difflib.get_close_matches(option, allowed, n=1, cutoff=0.75)
        hint = f" (did you mean {close[0]}?)" if close else ""
        return f"unknown control {option}{hint}; allowed: {', '.join(allowed)}"
    if kind == "missing":
        return f"missing control {option}; it is required"

    # Show the whole value the user gave for this control, not the inner item pydantic tripped on.
    given = values[key] if isinstance(values, dict) and key in values else error.get("input")
    shown = _short_repr(given)
    info = fields.get(key)
    if kind == "value_error":
        reason = str(error.get("ctx", {}).get("error", error.get("msg", "invalid")))
        return f"bad value for {option}: {shown}; {_one_line(reason)}"
    if info is None:
        return f"bad value for {option}: {shown}; {_one_line(error.get('msg', 'invalid'))}"

    bounds = _constraint_phrase(info)
    if kind in _CONSTRAINT_ERRORS and bounds:
        return f"bad value for {option}: {shown}; must be {bounds}"
    expected = _type_phrase(info.annotation)
    if kind == "finite_number":
        expected = "a finite number"
    return f"bad value for {option}: {shown}; must be {expected}{' ' + bounds if bounds else ''}"


# Error types that mean "right type, out of range": the message states the range alone.
_CONSTRAINT_ERRORS = {
    "greater_than",
    "greater_than_equal",
    "less_than",
    "less_than_equal",
    "multiple_of",
    "too_short",
    "too_long",
    "string_too_short",
    "string_too_long",
}


def _fields_by_key(cls: type[BaseModel]) -> dict[str, FieldInfo]:
    # Errors are located by alias when a field has one; accept every spelling.
    fields: dict[str, FieldInfo] = {}
    for name, info in cls.model_fields.items():
        fields[name] = info
        if info.alias:
            fields[info.alias] = info
        for other in alias_names(info, name):
            fields[other] = info
    return fields


def field_range(info: FieldInfo) -> str:
    """The allowed range of a control as words (`>= 0 and <= 1`); empty when it has none."""
    return _constraint_phrase(info)


def field_choices(info: FieldInfo) -> list[Any] | None:
    """The values a Literal (or enum) control allows, else None."""
    annotation = info.annotation
    if get_origin(annotation) in (Union, types.UnionType):
        options = [a for a in get_args(annotation) if a is not type(None)]
        annotation = options[0] if len(options) == 1 else annotation
    if get_origin(annotation) is Literal:
        return list(get_args(annotation))
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return [m.value for m in annotation]
    return None


def _constraint_phrase(info: FieldInfo) -> str:
    parts: list[str] = []
    for meta in info.metadata:
        for attr, template in (
            ("gt", "> {}"),
            ("ge", ">= {}"),
            ("lt", "< {}"),
            ("le", "<= {}"),
            ("multiple_of", "a multiple of {}"),
            ("min_length", "at least {} long"),
            ("max_length", "at most {} long"),
        ):
            bound = getattr(meta, attr, None)
            if bound is not None:
                parts.append(template.format(_format_number(bound)))
    return " and ".join(parts)


def _format_number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


_SIMPLE_TYPES: dict[Any, tuple[str, str]] = {
    bool: ("true or false", "booleans"),
    int: ("an integer", "integers"),
    float: ("a number", "numbers"),
    str: ("a string", "strings"),
}


def _type_phrase(annotation: Any) -> str:
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin in (Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        phrase = " or ".join(_type_phrase(a) for a in options)
        return phrase + " or empty" if len(options) < len(args) else phrase
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (list, tuple, set, frozenset):
        item = args[0] if args else Any
        return f"a list of {_SIMPLE_TYPES.get(item, ('', 'values'))[1]}"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "one of " + ", ".join(repr(m.value) for m in annotation)
    if annotation in _SIMPLE_TYPES:
        return _SIMPLE_TYPES[annotation][0]
    return getattr(annotation, "__name__", str(annotation))


def _short_repr(value: Any, limit: int = 60) -> str:
    # repr keeps quotes (so '0.5' reads as text) and escapes newlines, which keeps the message one line.
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _one_line(text: str) -> str:
    return " ".join(str(text).split())
