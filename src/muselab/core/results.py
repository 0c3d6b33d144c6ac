"""Typed results of a generation: what a recipe made, what the safety checks said of it, and how to save it.

A recipe fills the content fields (`texts`, `outputs`, `images`, `clips`, ...). The generation pipeline
(`muselab.pipeline`) adds the rest: each item's manifest `notes` (moderation and memorization verdicts),
`refused` entries for the items a check turned away, `warnings` for the user, the `provenance` of the
run, and the writer behind `save()`. Only results that came through the pipeline can be saved, so every
file muselab writes carries its manifest and, where the medium allows, its watermark.

Results behave like lists of their items: `len(result)`, `result[0]`, `for item in result`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from muselab.core.errors import MuselabError

__all__ = ["AudioResult", "ImageResult", "MusicResult", "Refused", "Result", "SequenceResult", "TextResult"]


@dataclass(frozen=True)
class Refused:
    """An item a safety check turned away: its position in the request, the check, the category, and why."""

    index: int
    check: str  # "input moderation", "output moderation" or "memorization"
    category: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "check": self.check, "category": self.category, "reason": self.reason}


@dataclass(frozen=True)
class Provenance:
    """Which run made a result: written into every manifest."""

    recipe: str
    run_id: str  # fingerprint of the weights
    run_dir: str


Writer = Callable[["Result", Path, bool], list[Path]]


@dataclass
class Result:
    """What every result has. `items` are the generated outputs in request order (refused ones left out)."""

    controls: dict[str, Any] = field(default_factory=dict)  # as validated and recorded (moderated inputs)
    notes: list[dict[str, Any]] = field(default_factory=list)  # per item: its manifest entries
    warnings: list[str] = field(default_factory=list)
    refused: list[Refused] = field(default_factory=list)
    provenance: Provenance | None = None
    requested: int = 0  # how many items were asked for (items + refused)
    _writer: Writer | None = field(default=None, repr=False, compare=False)

    kind = "result"

    @property
    def items(self) -> list[Any]:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.items)

    def __getitem__(self, index: int) -> Any:
        return self.items[index]

    @property
    def partly_refused(self) -> bool:
        return bool(self.refused)

    def save(self, path: str | Path, overwrite: bool = False) -> list[Path]:
        """Write the outputs under `path` (a folder, or a file name), each with its manifest beside it and,
        where the format allows, inside it; returns the files written."""
        if self._writer is None:
            raise MuselabError("this result did not come through muselab's generation pipeline, so it carries no "
                               "provenance; generate with muselab.load(RUN).generate(...) to save it")
        return self._writer(self, Path(path), overwrite)

    def _content_json(self) -> dict[str, Any]:
        return {}

    def to_json(self) -> dict[str, Any]:
        """Everything but large arrays, as plain JSON values."""
        return {
            "kind": self.kind,
            **self._content_json(),
            "controls": self.controls,
            "notes": self.notes,
            "warnings": self.warnings,
            "refused": [r.to_json() for r in self.refused],
            "provenance": None if self.provenance is None else vars(self.provenance),
        }

    def to_json_string(self) -> str:
        return json.dumps(self.to_json(), ensure_ascii=False)


@dataclass
class TextResult(Result):
    """Samples of free text (text-lm): `texts[i]` is the prompt plus its continuation, as moderated."""

    texts: list[str] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)  # per text, the prompt it continues (moderated)
    prompt_indices: list[int] = field(default_factory=list)  # per text, its prompt's position in the request

    kind = "text"

    @property
    def items(self) -> list[str]:
        return self.texts

    def _content_json(self) -> dict[str, Any]:
        return {"texts": self.texts, "prompts": self.prompts, "prompt_indices": self.prompt_indices}


@dataclass
class SequenceResult(Result):
    """Transductions (text-seq2seq): for each allowed input, its n best outputs with their scores.

    An output is a list of symbols when the targets are symbols (phonemes), else a string. `items` holds
    the best output of each input; `nbest[i]` all of them, best first; `attention[i]` the best output's
    attention matrix [target, source] when beam search made it."""

    inputs: list[str] = field(default_factory=list)  # as moderated (what the lines echo)
    nbest: list[list[Any]] = field(default_factory=list)
    scores: list[list[float]] = field(default_factory=list)
    attention: list[np.ndarray | None] = field(default_factory=list, repr=False)
    input_indices: list[int] = field(default_factory=list)  # each input's position in the request

    kind = "sequence"

    @property
    def items(self) -> list[Any]:
        return [outputs[0] for outputs in self.nbest]

    def lines(self, with_scores: bool = False) -> list[str]:
        """One `input<TAB>output[<TAB>score]` line per output, in request order; a refused input gets a line
        with an empty output, so a file of results lines up with the file of inputs."""
        done = dict(zip(self.input_indices, range(len(self.inputs)), strict=True))
        refused = {r.index: r for r in self.refused}
        lines = []
        for index in sorted([*done, *refused]):
            if index in refused:
                lines.append(f"{self.controls.get('input', [''] * (index + 1))[index]}\t")
                continue
            i = done[index]
            for output, score in zip(self.nbest[i], self.scores[i], strict=True):
                shown = " ".join(output) if isinstance(output, list) else output
                lines.append(f"{self.inputs[i]}\t{shown}" + (f"\t{score:.4f}" if with_scores else ""))
        return lines

    def _content_json(self) -> dict[str, Any]:
        return {"inputs": self.inputs, "nbest": self.nbest, "scores": self.scores,
                "input_indices": self.input_indices}


@dataclass
class ImageResult(Result):
    """Pictures: `arrays[i]` uint8 [H, W] or [H, W, 3]; `labels` the class of each (None when unconditional),
    `seeds` the seed the batch was drawn with; `grid` an overview picture; `animation` for a walk."""

    arrays: list[np.ndarray] = field(default_factory=list, repr=False)
    labels: list[str] | None = None
    seed: int | None = None
    grid: np.ndarray | None = field(default=None, repr=False)
    animation: bool = False

    kind = "image"

    @property
    def items(self) -> list[np.ndarray]:
        return self.arrays

    @property
    def images(self) -> list[Any]:
        """The pictures as PIL images."""
        from PIL import Image

        return [Image.fromarray(a) for a in self.arrays]

    @property
    def memorization_distances(self) -> list[float | None]:
        return [n.get("memorization", {}).get("nearest_training_distance") for n in self.notes]

    def _content_json(self) -> dict[str, Any]:
        return {"count": len(self.arrays), "shape": list(self.arrays[0].shape) if self.arrays else None,
                "labels": self.labels, "seed": self.seed, "animation": self.animation}


@dataclass
class AudioResult(Result):
    """Sound: `clips[i]` float32 mono in [-1, 1] at `sample_rate`; `timing[i]` what the clip follows in time
    (e.g. the pitch curve per frame, note or word timings) for plots and sidecar files."""

    clips: list[np.ndarray] = field(default_factory=list, repr=False)
    sample_rate: int = 0
    timing: list[dict[str, Any]] = field(default_factory=list, repr=False)

    kind = "audio"

    @property
    def items(self) -> list[np.ndarray]:
        return self.clips

    @property
    def durations(self) -> list[float]:
        return [len(c) / self.sample_rate for c in self.clips]

    def _content_json(self) -> dict[str, Any]:
        return {"count": len(self.clips), "sample_rate": self.sample_rate,
                "seconds": [round(d, 3) for d in self.durations]}


@dataclass
class MusicResult(Result):
    """Pieces of music: `scores[i]` the notes as JSON (`muselab.data.scores.Score.to_json`: four voices of
    [pitch, start, length] in quarter notes), `midi[i]` the piece as a Standard MIDI file, `rolls[i]` its
    piano-roll picture (uint8 RGB), and `clips[i]` its sound at `sample_rate` when it was rendered."""

    scores: list[dict[str, Any]] = field(default_factory=list)
    midi: list[bytes] = field(default_factory=list, repr=False)
    rolls: list[np.ndarray] = field(default_factory=list, repr=False)
    clips: list[np.ndarray] = field(default_factory=list, repr=False)
    sample_rate: int = 0

    kind = "music"

    @property
    def items(self) -> list[dict[str, Any]]:
        return self.scores

    def _content_json(self) -> dict[str, Any]:
        return {"count": len(self.scores), "keys": [f"{s.get('key_name', '')}" for s in self.scores],
                "notes": [sum(len(v) for v in s["voices"]) for s in self.scores],
                "quarters": [max((n[1] + n[2] for v in s["voices"] for n in v), default=0) for s in self.scores],
                "audio": bool(self.clips), "sample_rate": self.sample_rate or None}
