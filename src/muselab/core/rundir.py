"""A trained model is a directory (DESIGN.md): this module owns its layout and its safety checks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from muselab.core.errors import CheckpointError, RunExistsError
from muselab.core.io import atomic_write_json, atomic_write_text

CONFIG = "config.json"
MODEL = "model.safetensors"
TRAINER_STATE = "trainer_state.safetensors"
TRAINER_STATE_JSON = "trainer_state.json"
METRICS = "metrics.jsonl"
EVAL = "eval.json"
CARD = "MODEL_CARD.md"
SAMPLES = "samples"


class RunDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __str__(self) -> str:
        return str(self.path)

    # -- state of the directory -------------------------------------------------------------
    def holds_run(self) -> bool:
        return (self.path / CONFIG).is_file() or (self.path / MODEL).is_file()

    def has_checkpoint(self) -> bool:
        return (self.path / TRAINER_STATE).is_file()

    def claim(self, overwrite: bool) -> None:
        """Make the directory ready for a new run without ever deleting a user's other files."""
        if self.path.exists() and not self.path.is_dir():
            raise RunExistsError(f"--out '{self.path}' is a file; choose a directory path")
        if self.holds_run():
            if not overwrite:
                raise RunExistsError(
                    f"--out '{self.path}' already holds a run; pass --overwrite to replace it, "
                    "--resume to continue it, or choose another --out")
            shutil.rmtree(self.path)
        elif self.path.is_dir() and any(self.path.iterdir()):
            raise RunExistsError(f"--out '{self.path}' is a non-empty directory that is not a muselab run; "
                                 "choose an empty or new directory")
        self.path.mkdir(parents=True, exist_ok=True)

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
        return atomic_write_json(self.path / name, data)

    def append_metrics(self, record: dict[str, Any]) -> None:
        with (self.path / METRICS).open("a", encoding="utf-8") as handle:
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
        atomic_write_text(self.path / METRICS, "".join(json.dumps(r) + "\n" for r in kept))
