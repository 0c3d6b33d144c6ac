"""Safety on the one path every text output takes: the policy, decode-time bans and the copy guard.

A text recipe calls, in this order:
1. `check_inputs`: prompts / inputs are moderated before anything is generated (block raises
   PolicyViolation, redact masks what is echoed back, warn is recorded);
2. `ban_words`: the words of the policy's block and redact categories plus the user's `--ban` words,
   which the recipe turns into a BannedWordsProcessor at the head of its decoding chain (built per
   generate call: about 1 ms for a character vocabulary and 6 ms for 2,000 BPE tokens with the default
   policy's 138 words, so it is not cached);
3. `guard_copies`: each sample's longest verbatim copy of the training text is measured; above
   `max_copy_chars` it is flagged, or re-sampled and finally refused;
4. `moderate_outputs`: the final texts are moderated (the post-filter still runs after the bans).

Each step returns per-item notes (`{"moderation": ...}`, `{"memorization": ...}`) that the artifact writer
adds to the manifests. Notes name categories, actions and counts, never the matched words.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from muselab.core.errors import MuselabError
from muselab.safety.moderation import Policy, Verdict, moderate, raise_if_blocked
from muselab.text.metrics import CopyIndex

__all__ = [
    "CopyGuardError",
    "ModeratedStream",
    "ban_words",
    "check_inputs",
    "combine_notes",
    "guard_copies",
    "merge_notes",
    "moderate_outputs",
    "moderation_note",
    "moderation_summary",
    "sum_summaries",
]

RESAMPLE_ATTEMPTS = 3  # re-samples of a copying sample before `reject` gives up


class CopyGuardError(MuselabError):
    """A sample kept copying the training text after every re-sample allowed."""


def _policy_label(policy: Policy) -> str:
    return "default" if policy.source == "the default policy" else policy.source


# ------------------------------------------------------------------------------------------ moderation

def moderation_summary(verdict: Verdict) -> list[dict[str, Any]]:
    """What matched, without the words: one {category, action, count} per category, in order of first match."""
    counts: dict[str, int] = {}
    actions: dict[str, str] = {}
    for match in verdict.matches:
        counts[match.category] = counts.get(match.category, 0) + 1
        actions[match.category] = match.action
    return [{"category": name, "action": actions[name], "count": count} for name, count in counts.items()]


def check_inputs(texts: Sequence[str], policy: Policy, what: str = "prompt") -> tuple[list[str], list[list[dict]]]:
    """Moderate inputs before generating: PolicyViolation on a blocked one (naming it and the category),
    otherwise the texts with redactions applied and each one's summary."""
    redacted, summaries = [], []
    for index, text in enumerate(texts):
        verdict = moderate(text, policy)
        where = what if len(texts) == 1 else f"{what} {index + 1} of {len(texts)}"
        raise_if_blocked(verdict, where)
        redacted.append(verdict.redacted)
        summaries.append(moderation_summary(verdict))
    return redacted, summaries


def moderate_outputs(texts: Sequence[str], policy: Policy, what: str = "sample") -> tuple[list[str], list[list[dict]]]:
    """Moderate finished outputs: PolicyViolation on a blocked one, else the redacted texts and summaries."""
    redacted, summaries = [], []
    for index, text in enumerate(texts):
        verdict = moderate(text, policy)
        where = what if len(texts) == 1 else f"{what} {index + 1} of {len(texts)}"
        raise_if_blocked(verdict, f"generated {where}", advice="try another --seed or --ban the word")
        redacted.append(verdict.redacted)
        summaries.append(moderation_summary(verdict))
    return redacted, summaries


def moderation_note(policy: Policy, **parts: list[dict]) -> dict[str, Any]:
    """A manifest's `moderation` entry: the policy and, per part (prompt, sample, input, output), what matched."""
    return {"moderation": {"policy": _policy_label(policy), **parts}}


def merge_notes(*per_item: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-item notes from several steps, merged item by item (each step adds its own keys)."""
    merged: list[dict[str, Any]] = []
    for notes in per_item:
        for index, note in enumerate(notes):
            if index == len(merged):
                merged.append({})
            merged[index].update(note)
    return merged


def sum_summaries(summaries: Sequence[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Summaries of many texts as one: counts added per category (first-match order kept)."""
    total: dict[str, dict[str, Any]] = {}
    for summary in summaries:
        for entry in summary:
            if entry["category"] in total:
                total[entry["category"]]["count"] += entry["count"]
            else:
                total[entry["category"]] = dict(entry)
    return list(total.values())


def combine_notes(notes: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The notes of the items of one file (a .jsonl of samples) as the file's own: moderation counts added
    per part (a part every item shares, such as the one prompt, is counted once), memorization as the
    number of samples flagged and the longest copy."""
    combined: dict[str, Any] = {}
    moderation = [n["moderation"] for n in notes if "moderation" in n]
    if moderation:
        entry: dict[str, Any] = {"policy": moderation[0]["policy"]}
        for part in [k for k in moderation[0] if k != "policy"]:
            values = [m.get(part, []) for m in moderation]
            entry[part] = values[0] if all(v == values[0] for v in values) else sum_summaries(values)
        combined["moderation"] = entry
    checked = [n["memorization"] for n in notes if n.get("memorization", {}).get("checked")]
    if checked:
        combined["memorization"] = {
            "checked": True, "max_copy_chars": checked[0]["max_copy_chars"],
            "longest_copy_chars": max(c["longest_copy_chars"] for c in checked),
            "flagged_samples": sum(c["flagged"] for c in checked), "resampled": sum(c["resampled"] for c in checked)}
    elif notes and "memorization" in notes[0]:
        combined["memorization"] = notes[0]["memorization"]
    return combined


# -------------------------------------------------------------------------------------- decode-time bans

_LETTER = re.compile(r"[^\W_]")


def ban_words(policy: Policy, extra: Sequence[str] = ()) -> list[str]:
    """The words of the enabled block and redact categories, then `extra` (the user's bans).

    Regex patterns are not words and stay with the post-filter. A wildcard entry (`shit*`, `*fuck*`) is
    banned as its bare stem, so the processor stops the word itself; its longer forms are left to the
    post-filter. Entries that do not start and end with a letter after that cannot be banned and are
    skipped (the post-filter still sees them).
    """
    words: list[str] = []
    for category in policy.categories.values():
        if not category.enabled or category.action == "warn":
            continue
        for entry in category.words:
            stem = entry.strip("*").strip()
            if stem and _LETTER.match(stem[0]) and _LETTER.match(stem[-1]):
                words.append(stem)
    return list(dict.fromkeys([*words, *(w.strip() for w in extra)]))


# ----------------------------------------------------------------------------------- streaming output

def _after_last_blank(text: str, end: int) -> int:
    """Offset just past the last space or newline before `end` (0 when there is none)."""
    return max(text.rfind(" ", 0, max(0, end)), text.rfind("\n", 0, max(0, end))) + 1


class ModeratedStream:
    """Shows a growing text as the policy lets it be seen: whole words only, with redactions applied.

    `feed(text)` gets the whole text so far (prompt included). What is shown ends at a blank at least
    HOLDBACK characters before the end of the text (a word, an address or a phone number may still be
    growing there) and before any redacted span that reaches past it. Each check moderates a window that
    starts CONTEXT characters before what was shown, so phrases across the last blank are seen and the
    cost per word stays flat. Once the text is blocked nothing more is shown (the final check raises).
    `finish(final)` adds whatever of the final, moderated text is not on screen yet.
    """

    HOLDBACK = 32
    CONTEXT = 200

    def __init__(self, policy: Policy, on_text: Callable[[str], None]) -> None:
        self.policy, self.on_text = policy, on_text
        self.raw_end = 0  # how much of the raw text is on screen
        self.shown = ""
        self.stopped = False
        self._patterns = {(c.name, p.name) for c in policy.categories.values() for p in c.patterns}

    def feed(self, text: str) -> None:
        if self.stopped:
            return
        cut = _after_last_blank(text, len(text) - self.HOLDBACK)
        if cut <= self.raw_end:
            return
        start = _after_last_blank(text, self.raw_end - self.CONTEXT) if self.raw_end > self.CONTEXT else 0
        window = text[start:]
        verdict = moderate(window, self.policy)
        if not verdict.allowed:
            self.stopped = True
            return
        redact = sorted((m.start + start, m.end + start, m) for m in verdict.matches if m.action == "redact")
        for begin, end, _ in redact:
            if begin < cut < end:
                cut = begin  # never show part of a span that will be masked as a whole
        if cut <= self.raw_end:
            return
        piece, last = [], self.raw_end
        for begin, end, match in redact:
            if end <= last or begin >= cut:
                continue
            whole = (match.category, match.rule) in self._patterns and begin >= last
            begin = max(begin, last)
            piece.append(text[last:begin])
            piece.append(f"[{match.rule}]" if whole else re.sub(r"\S", "*", text[begin:end]))
            last = end
        piece.append(text[last:cut])
        self._show("".join(piece))
        self.raw_end = cut

    def _show(self, piece: str) -> None:
        if piece:
            self.on_text(piece)
            self.shown += piece

    def finish(self, final: str) -> None:
        """Show the rest of the final text; a redaction that changed what is on screen leaves it as it is."""
        if not self.stopped and final.startswith(self.shown):
            self._show(final[len(self.shown):])


# ------------------------------------------------------------------------------------ memorization guard

@dataclass(frozen=True)
class CopyReport:
    """The copy guard's result: the texts to keep, a note per text and lines for the user."""

    texts: list[str]
    notes: list[dict[str, Any]]
    messages: list[str]


def guard_copies(continuations: Sequence[str], index: CopyIndex | None, max_copy_chars: int, mode: str,
                 resample: Callable[[int, int], str]) -> CopyReport:
    """Measure each generated continuation's longest verbatim copy of the training text.

    Over `max_copy_chars`: `flag` keeps it and says so; `reject` calls `resample(i, attempt)` for a new
    continuation up to RESAMPLE_ATTEMPTS times and raises CopyGuardError if every one still copies.
    `index` None (a run trained without one) or `max_copy_chars` 0 turns the guard off.
    """
    texts = list(continuations)
    if index is None or max_copy_chars == 0:
        reason = "turned off (max_copy_chars 0)" if index is not None else "the run has no copy index"
        return CopyReport(texts, [{"memorization": {"checked": False, "reason": reason}} for _ in texts], [])
    notes, messages = [], []
    for i, text in enumerate(texts):
        longest = index.longest_copy(text)[0]
        attempts = 0
        while mode == "reject" and longest > max_copy_chars and attempts < RESAMPLE_ATTEMPTS:
            attempts += 1
            text = resample(i, attempts)
            longest = index.longest_copy(text)[0]
        if longest > max_copy_chars and mode == "reject":
            raise CopyGuardError(f"sample {i + 1} still copies {longest} characters of the training text after "
                                 f"{RESAMPLE_ATTEMPTS} re-samples; raise --max-copy-chars, lower the prompt's share "
                                 "of training text, or use --copy-guard flag")
        flagged = longest > max_copy_chars
        if flagged:
            messages.append(f"sample {i + 1} copies {longest} characters of the training text "
                            f"(over --max-copy-chars {max_copy_chars})")
        texts[i] = text
        notes.append({"memorization": {"checked": True, "longest_copy_chars": longest,
                                       "max_copy_chars": max_copy_chars, "flagged": flagged, "resampled": attempts}})
    return CopyReport(texts, notes, messages)
