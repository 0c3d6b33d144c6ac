"""Atomic file writes: a crash never leaves a half-written file under its final name."""

from __future__ import annotations

import hashlib
import json
import math
import os
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Union


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_path)` and then rename the temporary file over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # not mkstemp: its 0600 mode would make reports unreadable to a web server or a colleague
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: Path, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def sha256_json(obj: Any) -> str:
    """Hash of a JSON value in canonical form (sorted keys, no spaces, real UTF-8): equal content, equal hash."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def read_json_file(path: Path, what: str) -> Any:
    """JSON from a file of a run directory; one-line CheckpointError naming `what` when it is unusable."""
    from muselab.core.errors import CheckpointError

    fix = "re-save the model or retrain it"
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{what} '{path}' is missing; pass a model directory saved by muselab") from None
    except OSError as e:
        raise CheckpointError(f"cannot read {what} '{path}': {e.strerror}; check its permissions") from e
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{what} '{path}' is not UTF-8 JSON (bad byte at offset {e.start}); {fix}") from e
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{what} '{path}' is not valid JSON ({e.msg} at line {e.lineno}); {fix}") from e


# What a field of a JSON file may hold: a kind name below ("int", "number", "str", "bool", "object",
# "list", "strings" = a list of strings, "objects" = an object of objects), "?" after it for "or null",
# or a nested Fields for an object whose own fields are checked.
Kind = Union[str, "Fields"]


class Fields:
    """The fields a JSON object must (`required`) or may (`optional`) hold, and their kinds; other keys pass."""

    def __init__(self, required: Mapping[str, Kind] | None = None, optional: Mapping[str, Kind] | None = None) -> None:
        self.required, self.optional = dict(required or {}), dict(optional or {})


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_KINDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "int": (_is_int, "a whole number"),
    "number": (lambda v: _is_int(v) or isinstance(v, float), "a number"),
    "finite": (lambda v: (_is_int(v) or isinstance(v, float)) and math.isfinite(v), "a finite number"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "object": (lambda v: isinstance(v, dict), "an object"),
    "list": (lambda v: isinstance(v, list), "a list"),
    "strings": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of strings"),
    "objects": (lambda v: isinstance(v, dict) and all(isinstance(x, dict) for x in v.values()),
                "an object of objects"),
}


def field_problem(data: Any, fields: Fields, where: str = "") -> str | None:
    """What is wrong with `data` against `fields` (e.g. "'train' is a string, not an object"), or None."""
    if not isinstance(data, dict):
        place = f"'{where}'" if where else "the top level"
        return f"{place} is {_describe(data)}, not a JSON object"
    for key, kind in [*fields.required.items(), *fields.optional.items()]:
        name = f"{where}.{key}" if where else key
        if key not in data:
            if key in fields.required:
                return f"it has no '{name}' entry"
            continue
        value = data[key]
        if isinstance(kind, Fields):
            problem = field_problem(value, kind, name)
            if problem:
                return problem
            continue
        if kind == "objects" and isinstance(value, dict):  # name the entry that is not an object
            bad = next((k for k, v in value.items() if not isinstance(v, dict)), None)
            if bad is not None:
                return f"'{name}.{bad}' is {_describe(value[bad])}, not an object"
            continue
        nullable = kind.endswith("?")
        check, wanted = _KINDS[kind.rstrip("?")]
        if not (check(value) or (nullable and value is None)):
            return f"'{name}' is {_describe(value)}, not {wanted}{' or null' if nullable else ''}"
    return None


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    names = {bool: "true/false", int: "a number", float: "a number", str: "a string", list: "a list",
             dict: "an object"}
    return names.get(type(value), type(value).__name__)


def read_json_object(path: Path, what: str, fields: Fields | None = None) -> dict[str, Any]:
    """A JSON object from a run's file, its fields checked; one-line CheckpointError when it is unusable."""
    from muselab.core.errors import CheckpointError

    data = read_json_file(path, what)
    problem = field_problem(data, fields or Fields())
    if problem:
        raise CheckpointError(f"{what} '{path}' is damaged ({problem}); restore it or retrain")
    return data
