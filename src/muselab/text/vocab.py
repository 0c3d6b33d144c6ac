"""Per-side vocabularies for sequence-to-sequence models: characters, whitespace-separated symbols or BPE.

Source and target each get their own vocabulary (letters in, phonemes out), with the same four
special ids first on both sides, so the model can rely on PAD, BOS, EOS and UNK being fixed numbers.
Both are saved together as one JSON file (``vocab.json``, never pickle) next to the weights.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from muselab.core.errors import CheckpointError, ConfigError, DataError
from muselab.core.io import atomic_write_json, read_json_file, sha256_json
from muselab.text.tokenizers import BPETokenizer

PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
VOCAB_FILE = "vocab.json"
VOCAB_KINDS = ("char", "symbols")
ALL_KINDS = (*VOCAB_KINDS, "bpe")

_SKIPPED = frozenset((PAD, BOS))


class SymbolVocab:
    """Maps text to ids and back, one id per character (``kind="char"``) or per whitespace-separated
    symbol (``kind="symbols"``: phonemes, words).

    ``symbols[i]`` is the symbol with id ``i``; the four specials come first. Text never encodes to
    PAD, BOS or EOS: a literal ``<s>`` in symbol text is unknown, so it becomes UNK.
    """

    def __init__(self, kind: str, symbols: Sequence[str]) -> None:
        if kind not in VOCAB_KINDS:
            allowed = ", ".join(repr(k) for k in VOCAB_KINDS)
            raise ValueError(f"unknown vocabulary kind {kind!r}, expected one of {allowed}")
        symbols = list(symbols)
        if symbols[: len(SPECIALS)] != SPECIALS:
            raise ValueError(f"the first symbols must be the specials {SPECIALS}")
        regular = symbols[len(SPECIALS) :]
        for s in regular:
            if not isinstance(s, str) or not s:
                raise ValueError(f"every symbol must be a non-empty string, got {s!r}")
            if kind == "char" and len(s) != 1:
                raise ValueError(f"a char vocabulary holds single characters, got {s!r}")
            if kind == "symbols" and (s.split() != [s]):
                raise ValueError(f"a symbol cannot contain whitespace, got {s!r}")
        if len(set(symbols)) != len(symbols):
            raise ValueError("the vocabulary has duplicate symbols")
        self.kind: str = kind
        self.symbols: list[str] = symbols
        self._id_of = {s: i for i, s in enumerate(regular, start=len(SPECIALS))}

    def __len__(self) -> int:
        return len(self.symbols)

    @property
    def size(self) -> int:
        """Number of ids, specials included (the embedding and output size)."""
        return len(self.symbols)

    def split(self, text: str) -> list[str]:
        """The symbols of ``text`` before mapping to ids."""
        return list(text) if self.kind == "char" else text.split()

    def encode(self, text: str, add_eos: bool = False) -> list[int]:
        id_of = self._id_of
        ids = [id_of.get(s, UNK) for s in self.split(text)]
        if add_eos:
            ids.append(EOS)
        return ids

    def decode_symbols(self, ids: Sequence[int]) -> list[str]:
        """Symbol strings up to the first EOS, without PAD and BOS; UNK reads ``<unk>``."""
        out = []
        n = len(self.symbols)
        for raw in ids:
            i = int(raw)  # numpy and 0-d torch integers come straight from a model
            if not 0 <= i < n:
                raise ValueError(f"id {i} is outside the vocabulary (size {n})")
            if i == EOS:
                break
            if i not in _SKIPPED:
                out.append(self.symbols[i])
        return out

    def decode(self, ids: Sequence[int]) -> str:
        """Text up to the first EOS: characters joined as they are, symbols with single spaces."""
        return ("" if self.kind == "char" else " ").join(self.decode_symbols(ids))

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "symbols": list(self.symbols)}

    @classmethod
    def from_json(cls, data: Any) -> SymbolVocab:
        """Rebuild from :meth:`to_json` output; CheckpointError when it is malformed."""
        try:
            return cls._from_json(data)
        except ValueError as e:
            raise CheckpointError(f"vocabulary is malformed: {e}; re-save the model or retrain it") from e

    @classmethod
    def _from_json(cls, data: Any) -> SymbolVocab:
        if not isinstance(data, dict):
            raise ValueError("it is not a JSON object")
        symbols = data.get("symbols")
        if not isinstance(symbols, list):
            raise ValueError("'symbols' is not a list")
        return cls(data.get("kind"), symbols)  # type: ignore[arg-type]  # checked in __init__

    def fingerprint(self) -> str:
        """Equal exactly when two vocabularies map text to the same ids."""
        return sha256_json(self.to_json())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SymbolVocab) and self.to_json() == other.to_json()

    def __repr__(self) -> str:
        return f"SymbolVocab(kind={self.kind!r}, size={len(self.symbols)})"


class BPEVocab:
    """A byte-level BPE side (for words and sentences), with the same interface and special ids.

    The BPE's own ids are shifted past the four specials, so PAD, BOS, EOS and UNK keep their numbers.
    Byte-level BPE has no unknown text: every string encodes.
    """

    kind = "bpe"

    def __init__(self, tokenizer: BPETokenizer) -> None:
        self.tokenizer = tokenizer

    @property
    def size(self) -> int:
        return len(SPECIALS) + self.tokenizer.vocab_size

    def __len__(self) -> int:
        return self.size

    @property
    def symbols(self) -> list[str]:
        return SPECIALS + [self.tokenizer.decode([i]) for i in range(self.tokenizer.vocab_size)]

    def encode(self, text: str, add_eos: bool = False) -> list[int]:
        ids = [i + len(SPECIALS) for i in self.tokenizer.encode(text, strict=False)]
        return ids + [EOS] if add_eos else ids

    def _regular(self, ids: Sequence[int]) -> list[int]:
        out = []
        for i in (int(i) for i in ids):
            if i == EOS:
                break
            if i >= len(SPECIALS):
                out.append(i - len(SPECIALS))
        return out

    def decode_symbols(self, ids: Sequence[int]) -> list[str]:
        return [self.tokenizer.decode([i]) for i in self._regular(ids)]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(self._regular(ids))

    def to_json(self) -> dict[str, Any]:
        return {"kind": "bpe", "tokenizer": self.tokenizer._json()}

    def fingerprint(self) -> str:
        return self.tokenizer.fingerprint()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BPEVocab) and self.fingerprint() == other.fingerprint()


Vocab = SymbolVocab | BPEVocab


def vocab_from_json(data: Any) -> Vocab:
    """Either kind of vocabulary from its JSON; ValueError when malformed."""
    if isinstance(data, dict) and data.get("kind") == "bpe":
        if not isinstance(data.get("tokenizer"), dict):
            raise ValueError("'tokenizer' is not a JSON object")
        return BPEVocab(BPETokenizer.from_json(data["tokenizer"]))
    return SymbolVocab._from_json(data)


def build_vocab(texts: Iterable[str], kind: str, min_count: int = 1, bpe_size: int = 4000) -> Vocab:
    """A vocabulary of every symbol seen at least ``min_count`` times in ``texts``.

    Ordered by count (most frequent first), ties by symbol, so the same texts give the same ids in
    any order. Symbols spelled like a special (``<s>`` in symbol text) are left out: they encode to UNK.
    """
    if kind == "bpe":
        text = "\n".join(texts)
        if not text.strip():
            raise DataError("cannot build a vocabulary from empty text; load data that has some text")
        return BPEVocab(BPETokenizer.train(text, bpe_size))
    if kind not in VOCAB_KINDS:
        allowed = ", ".join(repr(k) for k in ALL_KINDS)
        raise ConfigError(f"unknown vocabulary kind {kind!r}; use one of: {allowed}")
    if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
        raise ConfigError(f"min_count must be an integer of at least 1, got {min_count!r}")
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(list(text) if kind == "char" else text.split())
    for special in SPECIALS:
        counts.pop(special, None)
    if not counts:
        raise DataError("cannot build a vocabulary from empty text; load data that has some text")
    kept = sorted((s for s, c in counts.items() if c >= min_count), key=lambda s: (-counts[s], s))
    if not kept:
        raise DataError(
            f"no symbol occurs at least min_count={min_count} times "
            f"(the most frequent occurs {counts.most_common(1)[0][1]}); lower min_count"
        )
    return SymbolVocab(kind, SPECIALS + kept)


def save_vocabs(directory: Path, source: Vocab, target: Vocab) -> None:
    """Write both vocabularies to ``directory/vocab.json`` atomically."""
    atomic_write_json(Path(directory) / VOCAB_FILE, {"source": source.to_json(), "target": target.to_json()})


def load_vocabs(directory: Path) -> tuple[Vocab, Vocab]:
    """(source, target) vocabularies from ``directory/vocab.json``."""
    path = Path(directory) / VOCAB_FILE
    fix = "re-save the model or retrain it"
    data = read_json_file(path, "vocabulary file")
    if not isinstance(data, dict):
        raise CheckpointError(f"vocabulary file '{path}' is malformed: the top level is not a JSON object; {fix}")
    vocabs = []
    for side in ("source", "target"):
        if side not in data:
            raise CheckpointError(f"vocabulary file '{path}' is malformed: no '{side}' entry; {fix}")
        try:
            vocabs.append(vocab_from_json(data[side]))
        except ValueError as e:
            raise CheckpointError(f"vocabulary file '{path}' is malformed: in '{side}', {e}; {fix}") from e
    return vocabs[0], vocabs[1]
