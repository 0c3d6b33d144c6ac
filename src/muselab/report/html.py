"""The HTML report: one self-contained page, generic over modalities.

A report is a list of :class:`Section` s, each with any mix of a paragraph, a metrics table,
images, text samples and audio clips. Images and audio are embedded as base64 data URIs so the
single ``report.html`` can be mailed, moved or archived without its run directory.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import jinja2

from muselab import __version__
from muselab.core.errors import DataError
from muselab.core.io import atomic_write_text

__all__ = ["Section", "write_report"]

# By suffix rather than by sniffing bytes: the files come from our own writers, named by format.
_IMAGE_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".svg": "image/svg+xml",
}
_AUDIO_TYPES = {
    ".wav": "audio/wav",
    ".mp3": "audio/mpeg",
    ".ogg": "audio/ogg",
    ".flac": "audio/flac",
}


@dataclass
class Section:
    """One titled block of the report; every part is optional and shown only when non-empty."""

    title: str
    text: str = ""
    metrics: dict[str, float | int | str] = field(default_factory=dict)
    images: list[tuple[Path, str]] = field(default_factory=list)
    samples: list[str] = field(default_factory=list)
    audio: list[tuple[Path, str]] = field(default_factory=list)


def _format_metric(value: float | int | str) -> str:
    """Floats to 4 significant digits; ints and strings as they are."""
    if isinstance(value, bool):  # bool is an int subclass; "True" reads better than "1"
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.4g}"
    return str(value)


def _data_uri(path: Path, types: dict[str, str], kind: str) -> str:
    path = Path(path)
    mime = types.get(path.suffix.lower())
    if mime is None:
        raise DataError(
            f"cannot embed {kind} {path}: unsupported file type {path.suffix!r}; "
            f"use one of {', '.join(sorted(types))}"
        )
    try:
        payload = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot embed {kind} {path}: {exc.strerror or exc}; check the file exists") from exc
    return f"data:{mime};base64,{base64.b64encode(payload).decode('ascii')}"


def _template() -> jinja2.Template:
    source = resources.files("muselab.report").joinpath("templates/report.html").read_text(encoding="utf-8")
    # Autoescape everything: samples are model output and may contain markup (or a <script>).
    env = jinja2.Environment(
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True
    )
    return env.from_string(source)


def write_report(out_dir: Path, title: str, sections: Sequence[Section], footer: str = "") -> Path:
    """Write ``out_dir/report.html``, a single self-contained page, and return its path.

    Images and audio are read now and embedded, so the files they came from may be deleted
    afterwards. Raises :class:`~muselab.core.errors.DataError` when one of them is missing or of
    a type a browser cannot show. The file is replaced atomically.
    """
    rendered_sections = [
        {
            "title": section.title,
            "text": section.text,
            "metrics": [(name, _format_metric(value)) for name, value in section.metrics.items()],
            "images": [(_data_uri(p, _IMAGE_TYPES, "image"), caption) for p, caption in section.images],
            "samples": list(section.samples),
            "audio": [(_data_uri(p, _AUDIO_TYPES, "audio"), caption) for p, caption in section.audio],
        }
        for section in sections
    ]
    html = _template().render(title=title, sections=rendered_sections, footer=footer, version=__version__)

    # Atomic: a browser or a mail client never sees half a page.
    return atomic_write_text(Path(out_dir) / "report.html", html)
