"""Safety pieces the generation pipeline (`muselab.pipeline`) puts on every text output's path: what
matched as a manifest note (never the words), the policy's words as decode-time bans, notes of many items
combined for one file, and a live stream that shows only what the final, moderated text will show.

`ban_words` gives the words of the policy's block and redact categories plus the user's `--ban` words,
which a recipe turns into a BannedWordsProcessor at the head of its decoding chain (built per generate
call: about 1 ms for a character vocabulary and 6 ms for 2,000 BPE tokens with the default policy's 138
words, so it is not cached).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from muselab.safety.moderation import Policy, Verdict, moderate

__all__ = ["ModeratedStream", "ban_words", "combine_notes", "moderation_summary", "sum_summaries"]


# ------------------------------------------------------------------------------------------ moderation

def moderation_summary(verdict: Verdict) -> list[dict[str, Any]]:
    """What matched, without the words: one {category, action, count} per category, in order of first match."""
    counts: dict[str, int] = {}
    actions: dict[str, str] = {}
    for match in verdict.matches:
        counts[match.category] = counts.get(match.category, 0) + 1
        actions[match.category] = match.action
    return [{"category": name, "action": actions[name], "count": count} for name, count in counts.items()]


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
