"""Small helpers shared by test modules (importable because pytest puts tests/ on the path)."""

from __future__ import annotations

from pathlib import Path

import pytest


def error_message(err: pytest.ExceptionInfo) -> str:
    """The message of a raised user error, checked to be one line (the CLI prints it as one)."""
    msg = str(err.value)
    assert msg and "\n" not in msg
    return msg


def write(path: Path, content: str | bytes) -> Path:
    """Write text (as UTF-8, newlines untouched) or bytes, creating folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8", newline="")
    return path
