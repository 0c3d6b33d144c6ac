"""Check a file for muselab's watermark and provenance: one JSON-ready dict per file, never a crash.

Images (anything Pillow reads: PNG, JPEG, WebP, ...) and audio (anything soundfile reads: WAV, FLAC,
OGG, ...) are checked for the watermark; every file gets its manifest from inside the file (PNG, WAV, MIDI)
or else from the sidecar `<file>.json` that muselab writes next to each output.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from PIL import Image, UnidentifiedImageError

from muselab.core.artifacts import manifest_path
from muselab.core.errors import MuselabError
from muselab.safety import watermark
from muselab.safety.embed import read_manifest

TOO_SMALL_NOTE = f"too small to carry a watermark (under {watermark.MIN_IMAGE_SIDE} px); manifest only"


def _sidecar(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """The sidecar manifest and, when it exists but is unusable, a note saying so."""
    side = manifest_path(path)
    if not side.is_file():
        return None, None
    try:
        manifest = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None, f"sidecar '{side.name}' is not readable JSON"
    if not isinstance(manifest, dict):
        return None, f"sidecar '{side.name}' is not a JSON object"
    return manifest, None


def _open_image(path: Path) -> np.ndarray | None:
    """Pixels as uint8 [H,W] or [H,W,3]; None when Pillow does not recognise the file."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. Pillow's notes on odd palettes; not the user's concern
            with Image.open(path) as img:
                img.load()
                mode = "L" if img.mode in ("1", "L", "LA", "I", "I;16", "F") else "RGB"
                return np.asarray(img.convert(mode))
    except UnidentifiedImageError:
        return None


def _open_audio(path: Path) -> tuple[np.ndarray, int] | None:
    """Mono float samples and rate; None when soundfile does not recognise the file."""
    try:
        audio, sr = sf.read(path, dtype="float32", always_2d=True)
    except sf.LibsndfileError:
        return None
    return audio.mean(axis=1), sr


def _starts_with(path: Path, magic: bytes) -> bool:
    with path.open("rb") as f:
        return f.read(len(magic)) == magic


def _check(path: Path, key: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"kind": "other", "watermark": False, "confidence": 0.0}
    notes = []
    image = _open_image(path)
    if image is not None:
        entry["kind"] = "image"
        if min(image.shape[:2]) < watermark.MIN_IMAGE_SIDE:
            notes.append(TOO_SMALL_NOTE)
        else:
            result = watermark.detect_image(image, key)
            entry.update(watermark=result.found, confidence=round(result.confidence, 6))
    else:
        sound = _open_audio(path)
        if sound is not None:
            entry["kind"] = "audio"
            result = watermark.detect_audio(*sound, key)
            entry.update(watermark=result.found, confidence=round(result.confidence, 6))
        elif _starts_with(path, b"MThd"):
            entry["kind"] = "midi"
            notes.append("MIDI holds no watermark; manifest only")
        else:
            notes.append("not an image or audio file; manifest only")
    manifest, source = read_manifest(path), "embedded"
    if manifest is None:
        manifest, problem = _sidecar(path)
        source = "sidecar" if manifest is not None else None
        if problem:
            notes.append(problem)
    entry.update(manifest=manifest, manifest_source=source)
    if notes:
        entry["note"] = "; ".join(notes)
    return entry


def detect_file(path: str | Path, key: str = watermark.DEFAULT_KEY) -> dict[str, Any]:
    """{"file", "kind": image|audio|midi|other, "watermark", "confidence", "manifest", "manifest_source"
    (embedded|sidecar|None), "note"?}, or {"file", "error"} (one line) when the file cannot be read."""
    path = Path(path)
    if not path.exists():
        return {"file": str(path), "error": "file not found; check the path"}
    if path.is_dir():
        return {"file": str(path), "error": "is a folder; pass the files in it"}
    try:
        return {"file": str(path), **_check(path, key)}
    except MuselabError as e:
        return {"file": str(path), "error": str(e)}
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        message = " ".join(str(e).split()) or type(e).__name__
        return {"file": str(path), "error": f"cannot read it ({message}); is the file complete?"}
