"""The layers of DESIGN.md hold: the modalities never import each other, and core/ knows no modality and
no safety. Read from every module's imports (ast, so lazy imports inside functions count too)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import muselab

ROOT = Path(muselab.__file__).resolve().parent
MODALITIES = ("text", "image", "audio", "music")
ABOVE_CORE = (*MODALITIES, "safety", "data", "report", "serve", "api", "cli", "demo", "pipeline", "exporter")
# the generation pipeline calls the recipes; a recipe never calls it back (it cannot skip its checks)
ABOVE_MODALITIES = ("pipeline", "api", "cli", "serve", "demo", "exporter")

# Imports that break a rule for a reason written here; an exception that no longer happens fails a test.
KNOWN_EXCEPTIONS: set[tuple[str, str]] = set()


def _package(path: Path) -> str:
    """The top-level part of muselab a file belongs to: "core", "audio", "cli", ..."""
    return path.relative_to(ROOT).parts[0].removesuffix(".py")


def imported_parts(path: Path) -> set[str]:
    """The top-level parts of muselab that the module at `path` imports (absolute or relative)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    module_parts = ("muselab", *path.relative_to(ROOT).with_suffix("").parts)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = module_parts[: len(module_parts) - node.level]
                names = [".".join((*base, node.module)) if node.module else ".".join(base)]
                if not node.module:
                    names = [f"{names[0]}.{alias.name}" for alias in node.names]
            else:
                names = [node.module or ""]
                if node.module == "muselab":  # from muselab import audio
                    names = [f"muselab.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "muselab" and len(parts) > 1:
                found.add(parts[1])
    return found


def forbidden(part: str) -> tuple[str, ...]:
    if part in MODALITIES:
        return (*(m for m in MODALITIES if m != part), *ABOVE_MODALITIES)
    if part == "core":
        return ABOVE_CORE
    return ()


def violations() -> list[str]:
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        part, where = _package(path), path.relative_to(ROOT).as_posix()
        for target in sorted(imported_parts(path) & set(forbidden(part))):
            if (where, target) not in KNOWN_EXCEPTIONS:
                found.append(f"{where} imports muselab.{target}")
    return found


def test_modalities_do_not_import_each_other_and_core_knows_none() -> None:
    assert violations() == []


def test_the_known_exceptions_still_exist() -> None:
    # An exception that no longer happens must be removed, so the list cannot hide a new import.
    for where, target in KNOWN_EXCEPTIONS:
        assert target in imported_parts(ROOT / where), f"{where} no longer imports {target}: drop the exception"


@pytest.mark.parametrize(("source", "expected"), [
    ("from muselab.image.gan import frozen", {"image"}),
    ("import muselab.image.gan as g", {"image"}),
    ("from muselab import image", {"image"}),
    ("def f():\n    from ..image import gan", {"image"}),
    ("from . import dsp", {"audio"}),
    ("from .. import nn", {"nn"}),
    ("import torch\nfrom torch import nn", set()),
])
def test_imports_are_read_in_every_form(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str,
                                        expected: set[str]) -> None:
    fake_root = tmp_path / "muselab"
    module = fake_root / "audio" / "mod.py"
    module.parent.mkdir(parents=True)
    module.write_text(source, encoding="utf-8")
    monkeypatch.setitem(globals(), "ROOT", fake_root)
    assert imported_parts(module) == expected
    if "image" in expected:
        monkeypatch.setitem(globals(), "KNOWN_EXCEPTIONS", set())
        assert violations() == ["audio/mod.py imports muselab.image"]
