"""Diversity and novelty of generated text.

- ``distinct_n``: share of word n-grams that are unique across a set of samples (higher = more varied).
- ``self_bleu``: how much each sample resembles the others (lower = more varied).
- ``CopyIndex`` / ``novelty``: how much of each sample was copied verbatim from the training text.
- ``edit_distance``, ``phoneme_error_rate``, ``word_error_rate``, ``corpus_bleu_chrf``: accuracy of
  sequence-to-sequence outputs against references (grapheme-to-phoneme, translation, rewriting).

``CopyIndex`` is a suffix array over the training text, built with vectorised prefix doubling in numpy.
It answers "longest span of this sample found verbatim in the training text" exactly, in a few
milliseconds per sample, after a build of well under a second per megabyte of text.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sacrebleu.metrics import BLEU, CHRF
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from muselab.core.sequences import edit_distance

__all__ = [
    "CopyIndex",
    "corpus_bleu_chrf",
    "distinct_n",
    "edit_distance",
    "load_copy_index",
    "novelty",
    "phoneme_error_rate",
    "self_bleu",
    "text_diversity_report",
    "word_error_rate",
]


COPY_INDEX_FORMAT = "muselab-copy-index-1"


def distinct_n(samples: Sequence[str], n: int) -> float:
    """Unique word n-grams divided by all word n-grams, pooled over every sample.

    Words are ``str.split()`` tokens; n-grams never cross sample boundaries. Returns 0.0 when the
    samples hold no n-gram at all (e.g. every sample is shorter than ``n`` words).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    unique: set[tuple[str, ...]] = set()
    total = 0
    for sample in samples:
        words = sample.split()
        grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
        total += len(grams)
        unique.update(grams)
    return len(unique) / total if total else 0.0


def self_bleu(samples: Sequence[str]) -> float:
    """Mean sentence BLEU (0-1) of each sample against all the other samples as references.

    1.0 means every sample repeats the others; values near 0 mean they share almost no n-grams.
    Uses sacrebleu's sentence BLEU with effective order, so short samples are scored on the n-gram
    orders they actually have. Cost grows with the square of the number of samples.

    Raises ``ValueError`` for fewer than two samples: with no other sample to compare against the
    score is undefined, and returning 0.0 would read as "perfectly diverse".
    """
    if len(samples) < 2:
        raise ValueError(f"self_bleu needs at least 2 samples, got {len(samples)}")
    bleu = BLEU(effective_order=True)
    scores = []
    for i, hypothesis in enumerate(samples):
        references = [s for j, s in enumerate(samples) if j != i]
        scores.append(bleu.sentence_score(hypothesis, references).score / 100.0)
    # sacrebleu can report 100.00000000000004 for a perfect match; keep the documented 0-1 range.
    return min(1.0, max(0.0, sum(scores) / len(scores)))


def _suffix_array(text: str) -> np.ndarray:
    """Start offsets of all suffixes of ``text`` in lexicographic (code point) order.

    Prefix doubling: rank every suffix by its first ``k`` characters, then by pairs of ranks
    (``rank[i]``, ``rank[i + k]``) to get the first ``2k``. What keeps this fast in numpy: the
    first ranking packs as many characters into one int64 as fit, skipping several doubling
    rounds; later rounds re-sort only suffixes whose group is still tied (a small share of
    natural text after the first round); and a suffix's rank is the slot in ``sa`` where its
    group begins, so groups are refined in place without re-sorting the rest.
    """
    n = len(text)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    # int32 halves the memory traffic of the random gathers below, which dominate the run time.
    itype = np.int32 if n < 2**31 else np.int64
    # surrogatepass: Python strings may hold lone surrogates; they are still single characters.
    codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")
    # Dense codes 1..sigma via a lookup table over all code points (np.unique would argsort).
    present = np.zeros(int(codes.max()) + 1, dtype=bool)
    present[codes] = True
    dense = np.cumsum(present, dtype=np.int64)[codes]  # 0 stays free for "past the end of the text"
    bits = int(dense.max()).bit_length()
    pos_bits = max(1, (n - 1).bit_length())
    # Characters per first key: the packed prefix and the position share one non-negative int64,
    # so a plain value sort (several times faster than argsort) yields both the order and the keys.
    h = max(1, (63 - pos_bits) // bits)
    key = np.zeros(n, dtype=np.int64)
    for j in range(min(h, n)):
        key <<= bits
        key[: n - j] |= dense[j:]
    if n < h:
        key <<= bits * (h - n)  # keep every key the same width so shorter prefixes sort first
    packed = np.sort((key << pos_bits) | np.arange(n, dtype=np.int64))
    sa = (packed & ((1 << pos_bits) - 1)).astype(itype)
    packed >>= pos_bits
    # starts[i]: True where sa[i] begins a new group of suffixes tied on their first k characters.
    starts = np.empty(n, dtype=bool)
    starts[0] = True
    np.not_equal(packed[1:], packed[:-1], out=starts[1:])
    del key, packed, dense
    slot = np.arange(n, dtype=itype)
    rank = np.empty(n, dtype=itype)
    rank[sa] = np.maximum.accumulate(np.where(starts, slot, 0))
    k = h
    while True:
        single = starts.copy()
        single[:-1] &= starts[1:]  # a group of one starts here and the next slot starts another
        tied = np.flatnonzero(~single)
        if len(tied) == 0:
            return sa.astype(np.int64)
        # Old group of each tied slot, as the slot where it begins (= the rank of its members).
        first = np.maximum.accumulate(np.where(starts[tied], tied, 0)).astype(np.int64)
        pos = sa[tied]
        nxt = pos.astype(np.int64) + k
        second = np.zeros(len(tied), dtype=np.int64)
        inside = nxt < n
        second[inside] = rank[nxt[inside]].astype(np.int64) + 1
        # `tied` is in sa order, so the keys are already sorted by `first`: a stable
        # (merge-based) sort exploits that and runs several times faster than quicksort.
        combined = first * (n + 1) + second  # < (n + 1) ** 2
        order = np.argsort(combined, kind="stable")
        combined = combined[order]
        # Groups keep their slots (sorting by `first` never moves a suffix out of its group), so
        # the refined order is written straight back into the slots listed in `tied`.
        pos = pos[order]
        sa[tied] = pos
        new_group = np.empty(len(tied), dtype=bool)
        new_group[0] = True
        np.not_equal(combined[1:], combined[:-1], out=new_group[1:])
        starts[tied] = new_group
        rank[pos] = np.maximum.accumulate(np.where(new_group, tied, 0))
        k *= 2


class CopyIndex:
    """Finds the longest verbatim copy of training text inside a sample, exactly.

    Build once per training text (a suffix array; about half a second for 1 MB of natural text),
    then call :meth:`longest_copy` per sample (milliseconds for a few hundred characters). The
    build takes longer on text with very long repeated passages (its rounds grow with the log of
    the longest repeat): a corpus that is entirely duplicated takes a few seconds per megabyte.
    Matching is on characters, case- and whitespace-sensitive, as a plagiarism check should be.
    """

    def __init__(self, train_text: str) -> None:
        self._text = train_text
        # array('q') keeps the offsets compact (8 bytes each) and indexes to plain ints for bisect.
        self._sa = array("q")
        self._sa.frombytes(_suffix_array(train_text).astype(np.int64).tobytes())

    @classmethod
    def from_suffix_array(cls, train_text: str, suffix_array: np.ndarray) -> CopyIndex:
        """An index from a suffix array built earlier (see :func:`load_copy_index`)."""
        index = cls.__new__(cls)
        index._text = train_text
        index._sa = array("q")
        index._sa.frombytes(np.asarray(suffix_array, dtype=np.int64).tobytes())
        return index

    def save(self, path: str | Path) -> None:
        """Write the index as safetensors: the suffix array (int32) and the text (UTF-8 bytes).

        About 5 bytes per character of training text; loading skips the suffix-array build.
        """
        from muselab.core.io import atomic_write

        sa = np.frombuffer(self._sa, dtype=np.int64)
        if len(self._text) >= 2**31:
            raise ValueError("a copy index holds at most 2**31 - 1 characters")
        tensors = {"suffix_array": sa.astype(np.int32),
                   "text_utf8": np.frombuffer(self._text.encode("utf-8", "surrogatepass"), dtype=np.uint8)}
        atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata={"format": COPY_INDEX_FORMAT}))

    def __len__(self) -> int:
        """Number of characters of training text indexed."""
        return len(self._text)

    def _occurs(self, pattern: str) -> bool:
        """Whether ``pattern`` occurs in the training text (binary search over sorted suffixes)."""
        length = len(pattern)
        text = self._text
        # Comparing only the first `length` characters of each suffix finds where `pattern` would
        # sort; it occurs iff the suffix found there starts with it.
        i = bisect_left(self._sa, pattern, key=lambda p: text[p : p + length])
        return i < len(self._sa) and text[self._sa[i] : self._sa[i] + length] == pattern

    def longest_copy(self, sample: str) -> tuple[int, int]:
        """``(length, start)`` of the longest span of ``sample`` that occurs verbatim in the training text.

        ``start`` is the offset in ``sample`` of the earliest such span; ``(0, 0)`` when no single
        character of ``sample`` occurs in the training text (or either is empty).
        """
        best = 0
        best_start = 0
        m = len(sample)
        # Sliding window that only ever grows: a span starting at i is worth testing only if it
        # beats the best so far. Valid because every substring of an occurring span also occurs,
        # so if sample[i:i+best+1] is absent no longer span starting at i can be present.
        for i in range(m):
            if m - i <= best:
                break
            while i + best < m and self._occurs(sample[i : i + best + 1]):
                best += 1
                best_start = i
        return best, best_start


def load_copy_index(path: str | Path) -> CopyIndex:
    """Read an index written by :meth:`CopyIndex.save`; CheckpointError when the file is not one."""
    from muselab.core.checkpoint import check_safetensors
    from muselab.core.errors import CheckpointError

    path = Path(path)
    try:
        check_safetensors(path)  # a damaged header is named before the library reads it
    except CheckpointError as err:
        raise CheckpointError(f"'{path}' is not a readable copy index ({str(err).split('(')[-1].split(')')[0]}); "
                              "delete it or train the run again") from None
    try:
        with safe_open(str(path), framework="numpy") as handle:
            if (handle.metadata() or {}).get("format") != COPY_INDEX_FORMAT:
                raise CheckpointError(f"'{path}' is not a muselab copy index; delete it or train the run again")
            sa = handle.get_tensor("suffix_array")
            text = handle.get_tensor("text_utf8").tobytes().decode("utf-8", "surrogatepass")
    except (OSError, SafetensorError, KeyError, UnicodeDecodeError) as err:
        raise CheckpointError(f"'{path}' is not a readable copy index ({type(err).__name__}); delete it "
                              "or train the run again") from None
    if (sa.ndim != 1 or sa.dtype.kind not in "iu" or len(sa) != len(text)
            or (len(sa) and (sa.min() < 0 or sa.max() >= len(text)))):
        raise CheckpointError(f"'{path}' does not match its text; delete it or train the run again")
    return CopyIndex.from_suffix_array(text, sa)


def novelty(samples: Sequence[str], index: CopyIndex, min_copy_chars: int = 50,
            max_copy_chars: int | None = None) -> dict[str, float]:
    """How many samples avoid copying ``min_copy_chars`` or more characters verbatim from training text.

    Returns ``novelty`` (share of samples whose longest verbatim copy is shorter than
    ``min_copy_chars``), ``copied_share`` (1 - novelty), ``longest_copy_chars`` (max over samples)
    and ``mean_longest_copy_chars``; with ``max_copy_chars`` also ``memorization_flagged_share``, the
    share of samples the memorization guard would flag (longest copy over ``max_copy_chars``).
    """
    if not samples:
        raise ValueError("novelty needs at least 1 sample, got 0")
    if min_copy_chars < 1:
        raise ValueError(f"min_copy_chars must be >= 1, got {min_copy_chars}")
    lengths = [index.longest_copy(s)[0] for s in samples]
    novel = sum(1 for length in lengths if length < min_copy_chars) / len(lengths)
    report = {
        "novelty": novel,
        "copied_share": 1.0 - novel,
        "longest_copy_chars": float(max(lengths)),
        "mean_longest_copy_chars": sum(lengths) / len(lengths),
    }
    if max_copy_chars is not None:
        report["memorization_flagged_share"] = sum(1 for length in lengths if length > max_copy_chars) / len(lengths)
    return report


def text_diversity_report(
    samples: Sequence[str], train_text_or_index: str | CopyIndex, min_copy_chars: int = 50,
    max_copy_chars: int | None = None,
) -> dict[str, float]:
    """``distinct_1``-``distinct_3``, ``self_bleu`` and the :func:`novelty` keys in one flat dict.

    Pass a prebuilt :class:`CopyIndex` to reuse it across calls; a string is indexed here.
    Needs at least two samples (for self-BLEU).
    """
    index = (
        train_text_or_index if isinstance(train_text_or_index, CopyIndex) else CopyIndex(train_text_or_index)
    )
    report = {f"distinct_{n}": distinct_n(samples, n) for n in (1, 2, 3)}
    report["self_bleu"] = self_bleu(samples)
    report.update(novelty(samples, index, min_copy_chars, max_copy_chars))
    return report


# ---------------------------------------------------------------- sequence-to-sequence accuracy


def _symbol_pairs(hyps: Sequence[Sequence[str]], refs: Sequence[Sequence[str]], name: str) -> None:
    if len(hyps) != len(refs):
        raise ValueError(f"{name} needs one hypothesis per reference, got {len(hyps)} and {len(refs)}")
    if not refs:
        raise ValueError(f"{name} needs at least 1 pair, got 0")
    for item in (*hyps, *refs):
        if isinstance(item, str):
            # A string would be scored per character; symbol lists must be explicit.
            raise TypeError(f"{name} takes lists of symbols, got the string {item!r}; pass text.split()")


def phoneme_error_rate(hyps: Sequence[Sequence[str]], refs: Sequence[Sequence[str]]) -> float:
    """Total edit distance over total reference length (can exceed 1 when hypotheses are too long)."""
    _symbol_pairs(hyps, refs, "phoneme_error_rate")
    total = sum(len(r) for r in refs)
    if total == 0:
        raise ValueError("phoneme_error_rate is undefined when every reference is empty")
    return sum(edit_distance(h, r) for h, r in zip(hyps, refs, strict=True)) / total


def word_error_rate(hyps: Sequence[Sequence[str]], refs: Sequence[Sequence[str]]) -> float:
    """Share of items whose hypothesis differs from its reference at all (the G2P word error rate).

    Not the speech-recognition WER: in grapheme-to-phoneme each item is one word, and a word is wrong
    when any of its symbols is.
    """
    _symbol_pairs(hyps, refs, "word_error_rate")
    wrong = sum(1 for h, r in zip(hyps, refs, strict=True) if list(h) != list(r))
    return wrong / len(refs)


def corpus_bleu_chrf(hyps: Sequence[str], refs: Sequence[str]) -> dict[str, float]:
    """Corpus BLEU and chrF of ``hyps`` against one reference each, on sacrebleu's 0-100 scale.

    sacrebleu's defaults (BLEU with its 13a tokenizer, chrF with character 6-grams), so the numbers
    compare with published ones.
    """
    if len(hyps) != len(refs):
        raise ValueError(f"corpus_bleu_chrf needs one hypothesis per reference, got {len(hyps)} and {len(refs)}")
    if not refs:
        raise ValueError("corpus_bleu_chrf needs at least 1 pair, got 0")
    hyps, refs = list(hyps), list(refs)
    bleu = BLEU().corpus_score(hyps, [refs]).score
    chrf = CHRF().corpus_score(hyps, [refs]).score
    # Floating point can land a hair past 100 for a perfect match; keep the documented range.
    return {"bleu": min(100.0, max(0.0, bleu)), "chrf": min(100.0, max(0.0, chrf))}
