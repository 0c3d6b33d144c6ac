"""Weights on disk: safetensors only, written atomically, checked before they are trusted.

A run directory may come from a stranger, so nothing here ever unpickles: a file that is not a
valid safetensors file is refused with a message that says what it looks like instead.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from muselab.core.errors import CheckpointError
from muselab.core.io import atomic_write

_PICKLE_HINT = "muselab never loads pickles; convert it with safetensors.torch.save_file"


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    # safetensors refuses shared or non-contiguous storage (tied weights): store private copies
    plain = {name: t.detach().to("cpu").contiguous().clone() for name, t in tensors.items()}
    return atomic_write(Path(path), lambda tmp: save_file(plain, str(tmp), metadata=metadata))


def _sniff(path: Path) -> str | None:
    """Name what a file that is not safetensors looks like, for the error message."""
    with path.open("rb") as handle:
        head = handle.read(8)
    if head[:2] == b"PK":
        return "a zip archive (a PyTorch .pt/.pth checkpoint?)"
    if head[:1] == b"\x80":
        return "a Python pickle"
    if not head:
        return "empty"
    return None


# Bytes per element of each safetensors dtype (those torch can hold)
_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
                "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def _header_problem(header: Any, data_size: int) -> str | None:
    """What makes a parsed header unsafe to hand to the library, or None. Checked here so that every way a
    header can be wrong (not an object, bad dtype or shape, offsets overlapping or past the end) is one
    clear error rather than whatever the library or torch raises."""
    if not isinstance(header, dict):
        return f"its header is a JSON {type(header).__name__}, not an object"
    meta = header.get("__metadata__")
    if meta is not None and not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
        return "its __metadata__ is not an object of strings"
    spans = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict):
            return f"the entry of tensor '{name}' is not an object"
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in _DTYPE_BYTES:
            return f"tensor '{name}' has an unknown dtype {dtype!r}"
        if not (isinstance(shape, list) and all(_is_count(d) for d in shape)):
            return f"tensor '{name}' has a bad shape {shape!r}"
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)
                and offsets[0] <= offsets[1]):
            return f"tensor '{name}' has bad data offsets {offsets!r}"
        if offsets[1] - offsets[0] != math.prod(shape) * _DTYPE_BYTES[dtype]:
            return f"tensor '{name}' takes {offsets[1] - offsets[0]} bytes, but its shape {shape} needs " \
                   f"{math.prod(shape) * _DTYPE_BYTES[dtype]}"
        spans.append((offsets[0], offsets[1], name))
    position = 0
    for begin, end, name in sorted(spans):
        if begin < position:
            return f"tensor '{name}' overlaps another"
        position = end
    if position > data_size:
        return f"truncated: the tensors need {position} bytes of data, it holds {data_size}"
    return None


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _read_header(path: Path) -> dict[str, Any]:
    """The checked JSON header of a safetensors file; CheckpointError naming what is wrong otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"'{path}' is missing; the run directory is incomplete (train it again or --resume)")
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            raw = handle.read(8)
            length = struct.unpack("<Q", raw)[0] if len(raw) == 8 else None
            header: Any = None
            if length is not None and 2 <= length <= size - 8:
                try:
                    header = json.loads(handle.read(length).decode("utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError):
                    header = None
    except OSError as err:
        raise CheckpointError(f"cannot read '{path}' ({err.strerror}); check its permissions") from None
    if header is None:
        looks = _sniff(path)
        what = f"it is {looks}" if looks else "its header is unreadable"
        raise CheckpointError(f"'{path}' is not a safetensors file ({what}); {_PICKLE_HINT}")
    problem = _header_problem(header, size - 8 - length)
    if problem:
        raise CheckpointError(f"'{path}' is damaged ({problem}); restore it or retrain")
    return header


def read_metadata(path: Path) -> dict[str, str]:
    """The JSON metadata block of a safetensors file, without loading tensors."""
    return _read_header(path).get("__metadata__") or {}


def check_safetensors(path: Path) -> None:
    _read_header(path)


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    check_safetensors(path)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"'{path}' is corrupt ({reason}); restore it or retrain") from None


def load_into(module: torch.nn.Module, tensors: dict[str, torch.Tensor], source: Path, strict: bool = True) -> None:
    """Copy tensors into a module, reporting missing, unexpected and mismatched names in one line."""
    own = module.state_dict()
    mismatched = [f"{k} {tuple(tensors[k].shape)} vs {tuple(v.shape)}"
                  for k, v in own.items() if k in tensors and tensors[k].shape != v.shape]
    missing = [k for k in own if k not in tensors]
    unexpected = [k for k in tensors if k not in own]
    problems = []
    if mismatched:
        problems.append("shape mismatch: " + ", ".join(mismatched[:5]))
    if strict and missing:
        problems.append("missing: " + ", ".join(missing[:5]))
    if strict and unexpected:
        problems.append("unexpected: " + ", ".join(unexpected[:5]))
    if problems:
        raise CheckpointError(f"weights in '{source}' do not fit this model ({'; '.join(problems)})")
    module.load_state_dict({k: v for k, v in tensors.items() if k in own}, strict=strict)


def weights_fingerprint(tensors: dict[str, torch.Tensor]) -> str:
    """A short id of the exact weights (run id for provenance, equality checks across ranks)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        digest.update(name.encode())
        digest.update(str(t.dtype).encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()[:16]
