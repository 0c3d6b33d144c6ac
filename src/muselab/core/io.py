"""Atomic file writes: a crash never leaves a half-written file under its final name."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any


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
