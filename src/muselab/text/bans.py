"""Decode-time word bans: a logits processor after which the model cannot write a banned word.

The rule: a banned word may not be written as a whole word, i.e. starting after a non-letter (or at the
start of the text) and followed by a non-letter. Letters and digits count as letters. So banning "ass"
forbids "ass", "Ass!" and "ASS " but not "class" (no boundary before) nor "assassin" (the word goes on);
matching ignores case (casefold), so every capitalisation is covered, not just lower/Capitalised/UPPER.
Phrases ("kill you") work the same way, spaces included.

How: the bans are a trie over characters. At each step the processor decodes the tail of every row
(prompt included: a prompt ending in "zorble" counts) and finds the live partial matches: trie nodes
reached by a suffix of the tail that starts after a word boundary. A candidate token is banned when its
decoded string, appended there, completes a banned word *and* the character after it. Per-token strings
are decoded once; for each trie node the banned tokens are computed on first use (only tokens whose first
character continues that node, or is a non-letter after a complete word, are walked) and cached, so a
step costs one short decode per row plus a few cached index lists. Tokens that hold a whole banned word
between two boundaries on their own ("x, ass. y") are banned always. While a row ends with a complete
banned word, `eos_id` is banned too, so the model cannot stop right after it.

Working on decoded characters makes one design correct for every tokenizer: a BPE vocabulary can spell
a word with many token sequences, and this never needs to list them. Byte-level BPE tokens that hold
only part of a multi-byte character decode to U+FFFD and count as non-letters: a word glued to such a
character may be over-banned, never let through. (The ByteLevel pre-tokenizer never puts part of a letter
and a following boundary in one token, so a word ending in a non-ASCII letter is still caught on the
next step.)

Limits: the processor sees one step ahead, so a row that `max_new_tokens` cuts right after the banned
word's last letter ends with it (the model was about to continue it, or would have been stopped):
`trim_trailing` removes such an ending, so callers pass each finished text through it. A row whose
every token is banned is left with none, as `generate_tokens` and `beam_search` expect of bans (the row
ends): unlike the sampling warpers, a safety ban is never lifted to keep a row alive. Put this processor first in a
chain, before top-k/top-p, so the warpers choose among the allowed tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from muselab.core.errors import ControlError
from muselab.text.decoding import LogitsProcessor
from muselab.text.tokenizers import Tokenizer

__all__ = ["BannedWordsProcessor", "build_ban_processor"]

_NEG_INF = float("-inf")
_MARGIN = 4  # extra decoded characters: a window may start with a few U+FFFD of a cut character


def _is_letter(ch: str) -> bool:
    return ch.isalnum()


class _CharTrie:
    """Banned words (casefolded) as a character trie; node 0 is the root."""

    def __init__(self, words: Sequence[str]) -> None:
        self.children: list[dict[str, int]] = [{}]
        self.terminal: list[bool] = [False]
        for word in words:
            node = 0
            for ch in word:
                nxt = self.children[node].get(ch)
                if nxt is None:
                    nxt = len(self.children)
                    self.children[node][ch] = nxt
                    self.children.append({})
                    self.terminal.append(False)
                node = nxt
            self.terminal[node] = True

    def walk(self, node: int, text: str) -> int | None:
        for ch in text:
            nxt = self.children[node].get(ch)
            if nxt is None:
                return None
            node = nxt
        return node

    def completes(self, node: int, text: str) -> bool:
        """Whether `text` read from `node` passes a complete word and then a non-letter."""
        for ch in text:
            if self.terminal[node] and not _is_letter(ch):
                return True
            nxt = self.children[node].get(ch)
            if nxt is None:
                return False
            node = nxt
        return False


class BannedWordsProcessor(LogitsProcessor):
    """Sets to -inf every token that would complete a banned word followed by a word boundary."""

    def __init__(self, words: Sequence[str], tokenizer: Tokenizer, eos_id: int | None = None) -> None:
        cleaned = []
        for word in words:
            if not isinstance(word, str) or not word.strip():
                raise ControlError(f"bad banned word {word!r}: it is empty; remove it from the list")
            word = word.strip()
            if not (_is_letter(word[0]) and _is_letter(word[-1])):
                raise ControlError(f"bad banned word {word!r}: it must start and end with a letter or digit")
            cleaned.append(word.casefold())
        self.words = tuple(dict.fromkeys(cleaned))
        self.tokenizer = tokenizer
        self.eos_id = eos_id
        self._trie = _CharTrie(self.words)
        self._longest = max((len(w) for w in self.words), default=0)
        self._strings = [tokenizer.decode([i]).casefold() for i in range(tokenizer.vocab_size)]
        # Tokens by their first character: only those can continue a live match.
        self._by_first: dict[str, list[int]] = {}
        self._non_letter_first: list[int] = []
        for i, s in enumerate(self._strings):
            if s:
                self._by_first.setdefault(s[0], []).append(i)
                if not _is_letter(s[0]):
                    self._non_letter_first.append(i)
        self._node_bans: dict[int, list[int]] = {}
        self._always = self._inner_bans()

    def _inner_bans(self) -> list[int]:
        """Tokens holding a whole banned word that starts after a boundary inside the token itself."""
        first = self._trie.children[0]
        banned = []
        for i, s in enumerate(self._strings):
            for k in range(1, len(s)):
                if s[k] in first and not _is_letter(s[k - 1]) and self._trie.completes(0, s[k:]):
                    banned.append(i)
                    break
        return banned

    def _bans_from(self, node: int) -> list[int]:
        """Tokens that, read from trie `node`, complete a banned word and the boundary after it (cached)."""
        cached = self._node_bans.get(node)
        if cached is None:
            candidates = [i for ch in self._trie.children[node] for i in self._by_first.get(ch, ())]
            if self._trie.terminal[node]:
                candidates += self._non_letter_first
            cached = sorted({i for i in candidates if self._trie.completes(node, self._strings[i])})
            self._node_bans[node] = cached
        return cached

    def _tail(self, row: torch.Tensor) -> tuple[str, bool]:
        """Enough decoded text at the end of `row` to hold a partial match and the character before it;
        the flag says whether it is the whole row (so its start is a word boundary)."""
        need = self._longest + 1 + _MARGIN
        width = need
        while True:
            width = min(width, row.shape[0])
            text = self.tokenizer.decode(row[-width:].tolist()) if width else ""
            if len(text) >= need or width == row.shape[0]:
                return text.casefold(), width == row.shape[0]
            width *= 2

    def live_nodes(self, row: torch.Tensor) -> list[int]:
        """Trie nodes reached by suffixes of `row`'s text that start at a word boundary."""
        if not self.words:
            return []
        text, whole = self._tail(row)
        nodes = []
        for j in range(max(0, len(text) - self._longest), len(text) + 1):
            at_boundary = whole if j == 0 else not _is_letter(text[j - 1])
            if at_boundary:
                node = self._trie.walk(0, text[j:])
                if node is not None:
                    nodes.append(node)
        return nodes

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        rows, cols = [], []
        for r in range(input_ids.shape[0]):
            banned: set[int] = set(self._always)
            for node in self.live_nodes(input_ids[r]):
                banned.update(self._bans_from(node))
                if self.eos_id is not None and self._trie.terminal[node]:
                    banned.add(self.eos_id)
            rows.extend([r] * len(banned))
            cols.extend(banned)
        if not rows:
            return scores  # nothing live: the scores are untouched (and not copied)
        mask = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
        mask[torch.tensor(rows, device=scores.device), torch.tensor(cols, device=scores.device)] = True
        return scores.masked_fill(mask, _NEG_INF)

    def trim_trailing(self, text: str) -> str:
        """`text` without a banned word at its very end: the one case the processor cannot prevent, a
        row cut by max_new_tokens right after the word's last letter. Call it on each finished text."""
        banned = set(self.words)
        for k in range(1, min(len(text), 2 * self._longest) + 1):
            if text[-k:].casefold() in banned and (k == len(text) or not _is_letter(text[-k - 1])):
                return text[:-k]
        return text

    def __repr__(self) -> str:
        return f"BannedWordsProcessor({len(self.words)} words, vocab_size={len(self._strings)})"


def build_ban_processor(words: Sequence[str], tokenizer: Tokenizer, eos_id: int | None = None) -> BannedWordsProcessor:
    """A processor that keeps `words` (whole words, any case) out of what the model writes."""
    return BannedWordsProcessor(words, tokenizer, eos_id)
