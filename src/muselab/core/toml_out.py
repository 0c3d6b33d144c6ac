"""Write a config (nested dicts of plain values) as TOML that `load_toml` reads back to the same values.

Configs hold strings, numbers, booleans, lists of those and sections, so a small writer is enough (the
standard library reads TOML but does not write it). TOML has no null: a field that is unset is written
as a comment, and reading the file leaves it at its default.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["dumps_toml"]

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(name: str) -> str:
    return name if _BARE_KEY.match(name) else json.dumps(name)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)  # shortest text that reads back as the same float; always has '.' or 'e'
    if isinstance(value, str):
        # JSON's string escapes are a subset of TOML's basic-string escapes
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as a TOML value")


def dumps_toml(data: Mapping[str, Any], header: str = "") -> str:
    """`data` as TOML text: plain values first, then one `[section]` table per nested mapping."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    _table(data, [], lines)
    return "\n".join(lines).lstrip("\n") + "\n"


def _table(data: Mapping[str, Any], path: list[str], lines: list[str]) -> None:
    plain = [(k, v) for k, v in data.items() if not isinstance(v, Mapping)]
    sections = [(k, v) for k, v in data.items() if isinstance(v, Mapping)]
    if path and (plain or not sections):
        lines += ["", "[" + ".".join(_key(p) for p in path) + "]"]
    for key, value in plain:
        if value is None:
            lines.append(f"# {_key(key)} = (unset)")
        else:
            lines.append(f"{_key(key)} = {_value(value)}")
    for key, value in sections:
        _table(value, [*path, key], lines)
