"""Training-curve plots and the self-contained HTML report."""

from __future__ import annotations

import base64
import math
import struct
import wave
from pathlib import Path

import pytest

from muselab.core.errors import DataError
from muselab.report.html import Section, write_report
from muselab.report.plots import plot_training_curves

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _records(n: int = 60) -> list[dict]:
    records: list[dict] = []
    for step in range(1, n + 1):
        record: dict = {
            "step": step,
            "loss": 4.0 / math.sqrt(step) + 0.1 * (step % 3),
            "lr": 1e-3 * min(1.0, step / 10),
        }
        if step % 10 == 0:
            record["val_loss"] = 4.2 / math.sqrt(step)
        records.append(record)
    return records


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    return struct.unpack(">II", data[16:24])  # IHDR width, height


def _write_wav(path: Path) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\x00\x01" * 800)


# ---------------------------------------------------------------- plots


def test_plot_training_curves_writes_png(tmp_path: Path) -> None:
    out = plot_training_curves(_records(), tmp_path / "plots" / "curves.png", title="LM run")
    assert out == tmp_path / "plots" / "curves.png"
    width, height = _png_size(out)
    assert width >= 400 and height >= 300
    assert out.stat().st_size > 10_000  # curves, axes and labels, not an empty canvas
    # Atomic write leaves no temporary files behind.
    assert [p.name for p in out.parent.iterdir()] == ["curves.png"]


def test_plot_without_lr_or_val_and_with_gaps(tmp_path: Path) -> None:
    records = [
        {"step": 1, "loss": 2.0},
        {"step": 2},
        {"step": 3, "loss": float("nan")},
        {"step": 4, "loss": 1.5},
    ]
    out = plot_training_curves(records, tmp_path / "a.png")
    assert out.read_bytes()[:8] == PNG_SIGNATURE


def test_plot_with_no_records_still_writes_png(tmp_path: Path) -> None:
    out = plot_training_curves([], tmp_path / "empty.png")
    assert out.read_bytes()[:8] == PNG_SIGNATURE


def test_plot_replaces_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "curves.png"
    target.write_bytes(b"old")
    plot_training_curves(_records(10), target)
    assert target.read_bytes()[:8] == PNG_SIGNATURE


# ---------------------------------------------------------------- HTML report


def test_report_is_self_contained_and_escaped(tmp_path: Path) -> None:
    png = plot_training_curves(_records(), tmp_path / "curves.png")
    wav = tmp_path / "clip.wav"
    _write_wav(wav)
    sections = [
        Section(
            title="Training <run>",
            text="Trained for 60 steps & stopped.",
            metrics={"val_loss": 1.234567, "steps": 60, "recipe": "text-lm", "big": 12345678.9},
            images=[(png, "loss & lr")],
        ),
        Section(
            title="Samples",
            samples=["<script>alert('x')</script>", "ROMEO:\n  line two"],
            audio=[(wav, "a clip")],
        ),
    ]
    out = write_report(tmp_path / "report", "My <report>", sections, footer="seed 0")
    assert out == tmp_path / "report" / "report.html"
    html = out.read_text(encoding="utf-8")

    # Model output is shown as text, never executed.
    assert "<script>alert" not in html
    assert "&lt;script&gt;alert(" in html
    assert "My &lt;report&gt;" in html and "Training &lt;run&gt;" in html
    assert "60 steps &amp; stopped" in html
    assert "ROMEO:\n  line two" in html  # preformatted: newlines and indentation kept

    # Metrics: floats to 4 significant digits, others verbatim.
    assert ">1.235<" in html and ">60<" in html and ">text-lm<" in html and ">1.235e+07<" in html

    # Media are embedded, not linked: the page works after the files are gone.
    png_uri = "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()
    assert png_uri in html
    assert "data:audio/wav;base64," in html and "<audio controls" in html
    assert str(tmp_path) not in html
    assert "seed 0" in html and "AI-generated" in html
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]


def test_report_omits_empty_parts(tmp_path: Path) -> None:
    html = write_report(tmp_path, "Bare", [Section(title="Only a title")]).read_text(encoding="utf-8")
    assert "Only a title" in html
    assert "<table" not in html and "<img" not in html and "<audio" not in html and "<pre" not in html


def test_report_missing_media_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="missing.png"):
        write_report(tmp_path, "x", [Section(title="s", images=[(tmp_path / "missing.png", "")])])
    bad = tmp_path / "notes.txt"
    bad.write_text("hi")
    with pytest.raises(DataError, match="unsupported"):
        write_report(tmp_path, "x", [Section(title="s", audio=[(bad, "")])])
    assert not (tmp_path / "report.html").exists()
