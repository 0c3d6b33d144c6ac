"""detect_file: one result per file for the CLI, whatever the file is."""

from __future__ import annotations

import json

import numpy as np
import pytest
import skimage.data
import soundfile as sf
from PIL import Image

from helpers import write
from muselab.core.artifacts import manifest_path
from muselab.safety import watermark as wm
from muselab.safety.detect import TOO_SMALL_NOTE, detect_file
from muselab.safety.embed import write_png, write_wav

MANIFEST = {"ai_generated": True, "recipe": "image-gan", "seed": 3}


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return np.asarray(Image.fromarray(skimage.data.astronaut()).resize((160, 128), Image.Resampling.LANCZOS))


def _no_error(entry: dict) -> dict:
    assert "error" not in entry, entry
    json.dumps(entry)  # the CLI prints it as one JSON line
    return entry


def test_marked_png_with_its_manifest(tmp_path, photo):
    marked, _ = wm.embed_image(photo)
    path = write_png(tmp_path / "a.png", marked, MANIFEST)
    entry = _no_error(detect_file(path))
    assert entry["file"] == str(path) and entry["kind"] == "image"
    assert entry["watermark"] is True and entry["confidence"] > 0.99
    assert entry["manifest"] == MANIFEST and entry["manifest_source"] == "embedded"


def test_stripped_and_recompressed_images_keep_the_watermark(tmp_path, photo):
    marked, _ = wm.embed_image(photo)
    path = write_png(tmp_path / "a.png", marked, MANIFEST)
    with Image.open(path) as img:
        img.save(tmp_path / "stripped.png")
        img.save(tmp_path / "shared.jpg", quality=75)
    stripped = _no_error(detect_file(tmp_path / "stripped.png"))
    assert stripped["watermark"] is True and stripped["manifest"] is None and stripped["manifest_source"] is None
    write(manifest_path(tmp_path / "shared.jpg"), json.dumps(MANIFEST))
    shared = _no_error(detect_file(tmp_path / "shared.jpg"))
    assert shared["watermark"] is True and shared["manifest"] == MANIFEST and shared["manifest_source"] == "sidecar"


def test_unmarked_image_and_another_key(tmp_path, photo):
    Image.fromarray(photo).save(tmp_path / "photo.png")
    entry = _no_error(detect_file(tmp_path / "photo.png"))
    assert entry["kind"] == "image" and entry["watermark"] is False and entry["manifest"] is None
    marked, _ = wm.embed_image(photo, key="studio")
    path = write_png(tmp_path / "studio.png", marked, MANIFEST)
    assert detect_file(path)["watermark"] is False
    assert detect_file(path, key="studio")["watermark"] is True


def test_tiny_png_reports_manifest_only(tmp_path, photo):
    path = write_png(tmp_path / "icon.png", photo[:32, :32], MANIFEST)
    entry = _no_error(detect_file(path))
    assert entry["kind"] == "image" and entry["watermark"] is False and entry["confidence"] == 0.0
    assert entry["note"] == TOO_SMALL_NOTE and entry["manifest"] == MANIFEST


def test_marked_wav_and_flac(tmp_path):
    t = np.arange(3 * 16_000) / 16_000
    clip = (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 2 * t)) / 2).astype(np.float32)
    marked = wm.embed_audio(clip, 16_000)
    entry = _no_error(detect_file(write_wav(tmp_path / "a.wav", marked, 16_000, MANIFEST)))
    assert entry["kind"] == "audio" and entry["watermark"] is True and entry["manifest"] == MANIFEST
    sf.write(tmp_path / "b.flac", np.stack([marked, marked], axis=1), 16_000)  # stereo, no manifest
    entry = _no_error(detect_file(tmp_path / "b.flac"))
    assert entry["kind"] == "audio" and entry["watermark"] is True and entry["manifest"] is None


def test_other_files_get_their_sidecar_manifest(tmp_path):
    text = write(tmp_path / "sample_000.txt", "a generated poem\n")
    write(manifest_path(text), json.dumps(MANIFEST))
    entry = _no_error(detect_file(text))
    assert entry["kind"] == "other" and entry["watermark"] is False and entry["manifest"] == MANIFEST
    bare = _no_error(detect_file(write(tmp_path / "data.bin", b"\x00\x01\x02")))
    assert bare["manifest"] is None and "not an image or audio file" in bare["note"]
    write(manifest_path(tmp_path / "data.bin"), "{broken")
    assert "not readable JSON" in _no_error(detect_file(tmp_path / "data.bin"))["note"]


def test_missing_folders_and_damaged_files_give_one_line_errors(tmp_path, photo):
    good = write_png(tmp_path / "good.png", photo, MANIFEST).read_bytes()
    damaged = write(tmp_path / "cut.png", good[: len(good) // 2])
    for path in (tmp_path / "missing.png", tmp_path, damaged):
        entry = detect_file(path)
        assert set(entry) == {"file", "error"} and entry["error"] and "\n" not in entry["error"]
