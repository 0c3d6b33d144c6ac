"""The generation pipeline's memorization guard: flag, redraw then flag, redraw then refuse, for any
recipe's measure (a fake one here: an item "copies" while it holds the letter x)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from muselab.core.registry import MemorizationGuard
from muselab.core.results import Refused, TextResult
from muselab.pipeline.generate import _guard_memorization


class LetterX(MemorizationGuard):
    def __init__(self, mode: str, redraws: dict[int, list[str]]) -> None:
        self.mode, self.redraws, self.calls = mode, redraws, []

    def measure(self, result: TextResult, indices: Sequence[int]) -> list[float]:
        return [float(result.texts[i].count("x")) for i in indices]

    def too_close(self, value: float) -> bool:
        return value > 0

    def redraw(self, result: TextResult, indices: Sequence[int], attempt: int) -> None:
        for i in indices:
            self.calls.append((i, attempt))
            result.texts[i] = self.redraws[i][attempt - 1]

    def note(self, value: float, redraws: int) -> dict[str, Any]:
        return {"memorization": {"x": value, "flagged": self.too_close(value), "resampled": redraws}}

    def describe(self, index: int, value: float) -> str:
        return f"item {index + 1} holds x"


def made(*texts: str) -> TextResult:
    return TextResult(texts=list(texts), prompts=[""] * len(texts), prompt_indices=[0] * len(texts))


def test_flag_keeps_every_item_and_says_which() -> None:
    result, refused = made("ax", "b"), []
    notes = _guard_memorization(LetterX("flag", {}), result, refused)
    assert [n["memorization"]["flagged"] for n in notes] == [True, False] and not refused
    assert result.texts == ["ax", "b"] and result.warnings == ["item 1 holds x"]


def test_resample_redraws_only_the_close_items_until_they_pass() -> None:
    guard = LetterX("resample", {0: ["xx", "ok"]})
    result, refused = made("ax", "b"), []
    notes = _guard_memorization(guard, result, refused)
    assert result.texts == ["ok", "b"] and guard.calls == [(0, 1), (0, 2)]
    assert notes[0]["memorization"] == {"x": 0.0, "flagged": False, "resampled": 2} and not result.warnings


def test_reject_refuses_what_stays_close_and_keeps_the_rest() -> None:
    result, refused = made("b", "ax"), []
    notes = _guard_memorization(LetterX("reject", {1: ["x", "x", "x"]}), result, refused)
    assert result.texts == ["b"] and len(notes) == 1
    assert refused == [Refused(1, "memorization", "memorization", "item 2 holds x")]


def test_no_guard_or_a_reason_is_recorded_per_item() -> None:
    result = made("a", "b")
    assert _guard_memorization(None, result, []) == [{"memorization": {"checked": False, "reason": "turned off"}}] * 2
    notes = _guard_memorization("the training data is not readable here", result, [])
    assert notes[0]["memorization"]["checked"] is False and result.warnings == ["the training data is not readable here"]
