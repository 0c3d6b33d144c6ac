"""Every file `muselab generate` writes carries its manifest, and `muselab detect` finds it; a picture
whose manifest was stripped is still recognised by its watermark."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli
from muselab import api


@pytest.fixture(scope="module")
def picture_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny GAN making 64x64 pictures: big enough to carry a watermark."""
    root = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / f"{i}.png")
    out = tmp_path_factory.mktemp("runs") / "gan64"
    api.train("image-gan", str(root), out, preset="tiny", max_steps=2, overrides=["data.size=64"], quiet=True)
    return out


def _detect(*files: Path) -> list[dict]:
    result = run_cli("detect", *map(str, files))
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


@pytest.mark.slow
def test_generated_pictures_carry_manifest_and_watermark(picture_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run_cli("generate", str(picture_run), "--n", "2", "--seed", "1", "--out", str(out)).returncode == 0
    reports = _detect(out / "image_000.png", out / "grid.png")
    for report in reports:
        assert report["watermark"] and report["confidence"] > 0.99
        assert report["manifest"]["ai_generated"] and report["manifest"]["recipe"] == "image-gan"

    stripped = tmp_path / "stripped.png"  # pixels only: no chunks, no sidecar
    Image.open(out / "image_000.png").convert("RGB").save(stripped)
    (report,) = _detect(stripped)
    assert report["manifest"] is None and report["watermark"]


def test_generated_text_files_carry_manifests(tiny_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "texts"
    result = run_cli("generate", str(tiny_run), "--num-samples", "2", "--max-new-tokens", "20", "--seed", "1",
                     "--out", str(out))
    assert result.returncode == 0, result.stderr
    files = sorted(out.glob("*.txt"))
    assert len(files) == 2
    for report in _detect(*files):
        assert report["watermark"] is False and report["manifest"]["ai_generated"]
