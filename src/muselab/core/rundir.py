"""A trained model is a directory (DESIGN.md): this module owns its layout and its safety checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from muselab.core.errors import CheckpointError
from muselab.core.io import Fields, atomic_write_json, atomic_write_text, field_problem
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

# What the commands rely on in the run's own JSON files; a file that breaks this is refused in one line
# (a stranger's or a damaged run must not end in a traceback deep inside `info` or `--resume`).
SCHEMAS: dict[str, Fields] = {
    CONFIG: Fields(
        required={"recipe": "str", "config": "objects", "data": Fields({"spec": "str", "fingerprint": "str"})},
        optional={"preset": "str?", "parameters": "int?", "init_from": "str?", "freeze": "strings",
                  "frozen_parameters": "int", "versions": "object", "created": "str"}),
    TRAINER_STATE_JSON: Fields(optional={"step": "int", "elapsed_s": "number", "bad_steps": "int",
                                         "bad_in_row": "int", "final_val_loss": "number?", "stopped_by": "str",
                                         "rank_fingerprints": "list"}),
}


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
    def read_json(self, name: str, fields: Fields | None = None) -> dict[str, Any]:
        """A JSON object from the run, checked against `fields` (by default the schema of a known file)."""
        file = self.path / name
        if not file.is_file():
            raise CheckpointError(f"'{file}' is missing; is '{self.path}' a muselab run directory?")
        try:
            data = json.loads(file.read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CheckpointError(f"'{file}' is not valid JSON ({err}); the run directory is damaged") from None
        except OSError as err:
            raise CheckpointError(f"cannot read '{file}' ({err.strerror}); check its permissions") from None
        problem = field_problem(data, fields or SCHEMAS.get(name) or Fields())
        if problem:
            raise CheckpointError(f"'{file}' is damaged ({problem}); restore the file or train the run again")
        return data

    def read_config(self) -> dict[str, Any]:
        if not self.path.is_dir():
            raise CheckpointError(f"run directory '{self.path}' does not exist; train one with `muselab train`")
        return self.read_json(CONFIG)

    def write_json(self, name: str, data: Any) -> Path:
        return atomic_write_json(self / name, data)

    def append_metrics(self, record: dict[str, Any]) -> None:
        with (self / METRICS).open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        """The training log's records; a line that is cut short (a crash) or damaged is left out."""
        file = self.path / METRICS
        if not file.is_file():
            return []
        records = []
        for line in file.read_bytes().splitlines():
            try:
                record = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                continue
            if _is_log_record(record):
                records.append(record)
        return records

    def truncate_metrics(self, last_step: int) -> None:
        """On resume, drop log lines written after the checkpoint we continue from."""
        kept = [r for r in self.read_metrics() if r["step"] <= last_step]
        atomic_write_text(self / METRICS, "".join(json.dumps(r) + "\n" for r in kept))


def _is_log_record(record: Any) -> bool:
    """A line the Trainer writes: a step number and plain values (numbers, flags, null)."""
    if not isinstance(record, dict) or isinstance(record.get("step"), bool) or not isinstance(record.get("step"), int):
        return False
    return all(isinstance(v, (int, float, bool)) or v is None for v in record.values())
