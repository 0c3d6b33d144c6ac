"""Provenance inside PNG and WAV files: written atomically, read back, and harmless to other readers."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image, PngImagePlugin

from helpers import error_message, write
from muselab.core.artifacts import DIGITAL_SOURCE_TYPE
from muselab.core.errors import DataError
from muselab.safety.embed import PNG_KEY, read_manifest, write_png, write_wav

MANIFEST = {"ai_generated": True, "digital_source_type": DIGITAL_SOURCE_TYPE, "recipe": "image-gan",
            "seed": 7, "controls": {"prompt": "café \u2603 <&>"}, "created": "2026-11-28T22:00:00+00:00"}


def _image(shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)


def _riff(path: Path) -> list[tuple[bytes, bytes]]:
    """Top-level chunks of a WAV file, checking every size field against the bytes on disk."""
    blob = path.read_bytes()
    assert blob[:4] == b"RIFF" and blob[8:12] == b"WAVE"
    assert struct.unpack("<I", blob[4:8])[0] == len(blob) - 8
    chunks, pos = [], 12
    while pos < len(blob):
        chunk_id, size = blob[pos : pos + 4], struct.unpack("<I", blob[pos + 4 : pos + 8])[0]
        chunks.append((chunk_id, blob[pos + 8 : pos + 8 + size]))
        pos += 8 + size + (size & 1)
    assert pos == len(blob)  # the chunks tile the file exactly, pad bytes included
    return chunks


@pytest.mark.parametrize("shape", [(70, 90), (64, 64, 3), (40, 50, 4)])
def test_png_keeps_pixels_and_carries_the_manifest(tmp_path, shape):
    image = _image(shape)
    path = write_png(tmp_path / "out.png", image, MANIFEST)
    with Image.open(path) as img:
        assert np.array_equal(np.asarray(img), image)
        text = img.text
    assert read_manifest(path) == MANIFEST
    assert text["Software"].startswith("muselab ") and "AI-generated" in text["Comment"]
    xmp = text["XML:com.adobe.xmp"]
    assert f"<Iptc4xmpExt:DigitalSourceType>{DIGITAL_SOURCE_TYPE}</Iptc4xmpExt:DigitalSourceType>" in xmp
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]  # no temporary file left behind


@pytest.mark.parametrize("extra", ["", "x"])  # even and odd JSON lengths: the pad byte must be right
def test_wav_keeps_samples_carries_the_manifest_and_valid_riff_sizes(tmp_path, extra):
    audio = (0.5 * np.sin(np.arange(1001) * 0.05)).astype(np.float32)
    manifest = {**MANIFEST, "note": extra}
    path = write_wav(tmp_path / "out.wav", audio, 16_000, manifest)
    chunks = dict(_riff(path))
    assert json.loads(chunks[b"mslb"]) == manifest == read_manifest(path)
    info = chunks[b"LIST"]
    assert info.startswith(b"INFO") and b"ICMT" in info and b"ISFT" in info and b"AI-generated" in info
    samples, sr = sf.read(path, dtype="float32")
    assert sr == 16_000 and samples.shape == audio.shape
    assert np.max(np.abs(samples - audio)) < 1e-4  # 16-bit PCM
    assert sf.info(str(path)).subtype == "PCM_16"
    assert [p.name for p in tmp_path.iterdir()] == ["out.wav"]


def test_wav_clips_loud_samples_instead_of_wrapping(tmp_path):
    path = write_wav(tmp_path / "loud.wav", np.array([1.7, -2.0, 0.25], dtype=np.float32), 8_000, MANIFEST)
    samples, _ = sf.read(path, dtype="float32")
    assert samples[0] > 0.99 and samples[1] < -0.99


def test_rewriting_replaces_the_file_and_its_manifest(tmp_path):
    path = tmp_path / "out.png"
    write_png(path, _image((64, 64)), {"seed": 1})
    write_png(path, _image((64, 64)), {"seed": 2})
    assert read_manifest(path) == {"seed": 2}


def test_files_without_a_manifest_read_as_none(tmp_path):
    plain_png = tmp_path / "plain.png"
    Image.fromarray(_image((8, 8))).save(plain_png)
    plain_wav = tmp_path / "plain.wav"
    sf.write(plain_wav, np.zeros(100, dtype=np.float32), 8_000)
    jpeg = tmp_path / "photo.jpg"
    Image.fromarray(_image((8, 8, 3))).save(jpeg)
    for path in (plain_png, plain_wav, jpeg, write(tmp_path / "notes.txt", "hello"), write(tmp_path / "empty", b"")):
        assert read_manifest(path) is None


def test_stripping_the_chunks_removes_the_manifest(tmp_path):
    path = write_png(tmp_path / "out.png", _image((64, 64, 3)), MANIFEST)
    with Image.open(path) as img:
        img.save(tmp_path / "stripped.png")  # Pillow does not copy text chunks unless asked
    assert read_manifest(tmp_path / "stripped.png") is None


def test_unreadable_files_and_broken_manifests_raise_one_line_errors(tmp_path):
    with pytest.raises(DataError) as err:
        read_manifest(tmp_path / "missing.png")
    assert "does not exist" in error_message(err)
    info = PngImagePlugin.PngInfo()
    info.add_itxt(PNG_KEY, "{not json")
    Image.fromarray(_image((8, 8))).save(tmp_path / "bad.png", pnginfo=info)
    with pytest.raises(DataError) as err:
        read_manifest(tmp_path / "bad.png")
    assert "not valid JSON" in error_message(err)
    good = write_png(tmp_path / "good.png", _image((64, 64)), MANIFEST).read_bytes()
    write(tmp_path / "cut.png", good[: len(good) // 2])
    with pytest.raises(DataError) as err:
        read_manifest(tmp_path / "cut.png")
    assert "damaged PNG" in error_message(err)
