"""Library code logs its notes (logging, never print); the CLI shows them as `muselab: note: ...` lines."""

from __future__ import annotations

import argparse
import logging

import pytest

from muselab import cli


def test_library_notes_reach_stderr_through_the_cli_only(monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    def command(args: argparse.Namespace) -> int:
        logging.getLogger("muselab.audio.vocoder_recipe").info("resampled 2 of 3 files to 22050 Hz")
        logging.getLogger("muselab.audio.ddsp_recipe").warning("left out 1 clip(s) with no pitched sound")
        return 0

    monkeypatch.setattr(cli, "_cmd_recipes", command)
    handlers = list(logging.getLogger("muselab").handlers)
    assert cli.main(["recipes"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err == ["muselab: note: resampled 2 of 3 files to 22050 Hz",
                   "muselab: note: left out 1 clip(s) with no pitched sound"]
    # The handler lives for one command: a program that imports muselab decides where its notes go
    assert logging.getLogger("muselab").handlers == handlers
    logging.getLogger("muselab.audio.vocoder_recipe").info("after the command")
    assert "after the command" not in capsys.readouterr().err


def test_library_modules_do_not_print() -> None:
    import ast
    from pathlib import Path

    import muselab

    root = Path(muselab.__file__).resolve().parent
    printing = []
    for path in sorted(root.rglob("*.py")):
        if path.relative_to(root).as_posix() in ("cli.py", "demo.py", "__main__.py"):  # the programs print
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                printing.append(f"{path.relative_to(root)}:{node.lineno}")
    assert printing == [], "log notes with logging.getLogger(__name__) instead of printing"
