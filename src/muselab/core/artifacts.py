"""Provenance manifests: what every generated file says about where it came from (the writer that puts
them inside and beside files lives in `muselab.pipeline.artifacts`)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from muselab import __version__
from muselab.core.results import Provenance

DIGITAL_SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
MANIFEST_SUFFIX = ".json"

__all__ = ["DIGITAL_SOURCE_TYPE", "MANIFEST_SUFFIX", "Provenance", "manifest", "manifest_path"]


def manifest(provenance: Provenance, controls: dict[str, Any], index: int, file_name: str) -> dict[str, Any]:
    """The manifest of one file: the run, the controls and seed, and that it is AI-generated."""
    return {
        "ai_generated": True,
        "digital_source_type": DIGITAL_SOURCE_TYPE,
        "generator": f"muselab {__version__}",
        "muselab_version": __version__,
        "recipe": provenance.recipe,
        "run_id": provenance.run_id,
        "run_dir": provenance.run_dir,
        "seed": controls.get("seed"),
        "sample_index": index,
        "controls": controls,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "file": file_name,
    }


def manifest_path(file: Path) -> Path:
    return file.with_name(file.name + MANIFEST_SUFFIX)
