"""A trained model is a directory (DESIGN.md): this module owns its layout and its safety checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from muselab.core.errors import CheckpointError
from muselab.core.io import atomic_write_json, atomic_write_text
from muselab.core.owned import OwnedFolder

CONFIG = "config.json"
MODEL = "model.safetensors"
TRAINER_STATE = "trainer_state.safetensors"
TRAINER_STATE_JSON = "trainer_state.json"
METRICS = "metrics.jsonl"
EVAL = "eval.json"
CARD = "MODEL_CARD.md"
SAMPLES = "samples"
MARKER = ".muselab-run.json"


class RunDir(OwnedFolder):
    """A run directory. While it records (after `claim`, or `reopen` to resume or evaluate), every name taken
    with `run / name` or written by the methods below is listed in `.muselab-run.json`; loading a run to
    generate records nothing, and needs no marker."""

    MARKER = MARKER
    WHAT = "run"
    KEEP_HINT = "pass --overwrite to replace it, --resume to continue it, or choose another --out"
    LEGACY_HINT = "--resume still continues it; to start afresh delete or move it by hand, or choose another --out"

    # -- state of the directory -------------------------------------------------------------
    def looks_legacy(self) -> bool:
        """A run from before the marker: muselab's three main files, and a config.json muselab wrote."""
        if not all((self.path / n).is_file() for n in (CONFIG, MODEL, TRAINER_STATE_JSON)):
            return False
        try:
            saved = json.loads((self.path / CONFIG).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return False
        return isinstance(saved, dict) and "recipe" in saved and "config" in saved

    def has_checkpoint(self) -> bool:
        return (self.path / TRAINER_STATE).is_file()

    # -- files --------------------------------------------------------------------------------
    def read_json(self, name: str) -> dict[str, Any]:
        file = self.path / name
        if not file.is_file():
            raise CheckpointError(f"'{file}' is missing; is '{self.path}' a muselab run directory?")
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CheckpointError(f"'{file}' is not valid JSON ({err}); the run directory is damaged") from None
        if not isinstance(data, dict):
            raise CheckpointError(f"'{file}' should hold a JSON object; the run directory is damaged")
        return data

    def read_config(self) -> dict[str, Any]:
        if not self.path.is_dir():
            raise CheckpointError(f"run directory '{self.path}' does not exist; train one with `muselab train`")
        data = self.read_json(CONFIG)
        for key in ("recipe", "config"):
            if key not in data:
                raise CheckpointError(f"'{self.path / CONFIG}' has no '{key}' entry; the run directory is damaged")
        return data

    def write_json(self, name: str, data: Any) -> Path:
        return atomic_write_json(self / name, data)

    def append_metrics(self, record: dict[str, Any]) -> None:
        with (self / METRICS).open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        file = self.path / METRICS
        if not file.is_file():
            return []
        records = []
        for line in file.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
        return records

    def truncate_metrics(self, last_step: int) -> None:
        """On resume, drop log lines written after the checkpoint we continue from."""
        kept = [r for r in self.read_metrics() if r.get("step", 0) <= last_step]
        atomic_write_text(self / METRICS, "".join(json.dumps(r) + "\n" for r in kept))
