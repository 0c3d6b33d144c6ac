"""Weights on disk: safetensors only, written atomically, checked before they are trusted.

A run directory may come from a stranger, so nothing here ever unpickles: a file that is not a
valid safetensors file is refused with a message that says what it looks like instead.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

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
    head = path.read_bytes()[:8] if path.stat().st_size else b""
    if head[:2] == b"PK":
        return "a zip archive (a PyTorch .pt/.pth checkpoint?)"
    if head[:1] == b"\x80":
        return "a Python pickle"
    if not head:
        return "empty"
    return None


def read_metadata(path: Path) -> dict[str, str]:
    """The JSON metadata block of a safetensors file, without loading tensors."""
    check_safetensors(path)
    with Path(path).open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    return header.get("__metadata__", {}) or {}


def check_safetensors(path: Path) -> None:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"'{path}' is missing; the run directory is incomplete (train it again or --resume)")
    size = path.stat().st_size
    with path.open("rb") as handle:
        raw = handle.read(8)
        length = struct.unpack("<Q", raw)[0] if len(raw) == 8 else None
        header_ok = length is not None and 2 <= length <= size - 8
        if header_ok:
            try:
                header = json.loads(handle.read(length))
            except (UnicodeDecodeError, json.JSONDecodeError):
                header_ok = False
    if not header_ok:
        looks = _sniff(path)
        what = f"it is {looks}" if looks else "its header is unreadable"
        raise CheckpointError(f"'{path}' is not a safetensors file ({what}); {_PICKLE_HINT}")
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + length + end > size:
        raise CheckpointError(f"'{path}' is truncated ({size} bytes, header promises {8 + length + end}); "
                              "restore it or retrain")


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    check_safetensors(path)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"'{path}' is corrupt ({err}); restore it or retrain") from None


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
