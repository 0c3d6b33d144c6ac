"""Tokenizers for the text language model: character-level and byte-level BPE.

Both map text to a list of integer ids and back, save themselves as one JSON file
(``tokenizer.json``, never pickle) and have a fingerprint that is equal exactly when two
tokenizers map text to the same ids, so a checkpoint can tell whether a tokenizer matches it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from muselab.core.errors import CheckpointError, ConfigError, ControlError, DataError
from muselab.core.io import atomic_write_json, read_json_file, sha256_json

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_KINDS = ("char", "bpe")
UNK_TOKEN = "<unk>"

# A byte-level BPE starts from all 256 byte values, so it can never be smaller than that.
BPE_MIN_VOCAB = 256
BPE_MAX_VOCAB = 1_000_000
_MAX_UNKNOWN_LISTED = 10
_SURROGATES = re.compile("[\ud800-\udfff]")


@runtime_checkable
class Tokenizer(Protocol):
    """What the language model needs from a tokenizer."""

    kind: str
    vocab_size: int

    def encode(self, text: str, strict: bool = True) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def save(self, directory: Path) -> None: ...

    def fingerprint(self) -> str: ...


def _checked_ids(ids: Sequence[int], vocab_size: int) -> list[int]:
    # int() accepts numpy and 0-d torch integers, which callers often pass straight from a model.
    out = [int(i) for i in ids]
    for i in out:
        if not 0 <= i < vocab_size:
            raise ValueError(f"token id {i} is outside the vocabulary (size {vocab_size})")
    return out


class CharTokenizer:
    """One id per character: id 0 is ``<unk>``, then the characters in the given order."""

    kind = "char"

    def __init__(self, chars: Sequence[str]) -> None:
        chars = tuple(chars)
        for c in chars:
            if not isinstance(c, str) or len(c) != 1:
                raise ValueError(f"every vocabulary entry must be one character, got {c!r}")
        if len(set(chars)) != len(chars):
            raise ValueError("the character vocabulary has duplicate entries")
        self.chars: tuple[str, ...] = chars
        self.vocab_size: int = len(chars) + 1
        self._id_of = {c: i + 1 for i, c in enumerate(chars)}

    @classmethod
    def train(cls, text: str) -> CharTokenizer:
        return cls(sorted(set(text)))

    def encode(self, text: str, strict: bool = True) -> list[int]:
        id_of = self._id_of
        if strict:
            unknown = list(dict.fromkeys(c for c in text if c not in id_of))
            if unknown:
                listed = ", ".join(repr(c) for c in unknown[:_MAX_UNKNOWN_LISTED])
                more = len(unknown) - _MAX_UNKNOWN_LISTED
                if more > 0:
                    listed += f" (and {more} more)"
                raise ControlError(
                    f"prompt contains characters the model never saw: {listed}; "
                    "remove them or train on text that has them"
                )
            return [id_of[c] for c in text]
        return [id_of.get(c, 0) for c in text]

    def decode(self, ids: Sequence[int]) -> str:
        chars = self.chars
        return "".join(chars[i - 1] for i in _checked_ids(ids, self.vocab_size) if i != 0)

    def save(self, directory: Path) -> None:
        atomic_write_json(Path(directory) / TOKENIZER_FILE, {"kind": self.kind, "chars": list(self.chars)})

    def fingerprint(self) -> str:
        return sha256_json({"kind": self.kind, "chars": list(self.chars)})

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"


class BPETokenizer:
    """Byte-level BPE (GPT-2 style) backed by the Hugging Face ``tokenizers`` package.

    Working on UTF-8 bytes means every string round-trips exactly and there is no unknown token.
    """

    kind = "bpe"

    def __init__(self, hf_tokenizer: Any) -> None:
        self._tok = hf_tokenizer
        self.vocab_size: int = hf_tokenizer.get_vocab_size()

    @classmethod
    def train(cls, text: str, vocab_size: int) -> BPETokenizer:
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        tok = HFTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
        # One item, not lines: splitting would change how runs of newlines are pre-tokenized.
        tok.train_from_iterator([text], trainer=trainer)
        return cls(tok)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> BPETokenizer:
        """Build from the ``tokenizers`` JSON object; ValueError if it is not a byte-level BPE."""
        from tokenizers import Tokenizer as HFTokenizer

        try:
            tok = HFTokenizer.from_str(json.dumps(obj))
        except Exception as e:  # the Rust side raises a plain Exception with a long message
            raise ValueError(f"the tokenizers library cannot read it ({str(e).splitlines()[0]})") from e
        parsed = json.loads(tok.to_str())
        model_type = (parsed.get("model") or {}).get("type")
        pre_type = (parsed.get("pre_tokenizer") or {}).get("type")
        dec_type = (parsed.get("decoder") or {}).get("type")
        if (model_type, pre_type, dec_type) != ("BPE", "ByteLevel", "ByteLevel"):
            raise ValueError(
                f"expected a byte-level BPE, found model {model_type}, pre-tokenizer {pre_type}, "
                f"decoder {dec_type}"
            )
        return cls(tok)

    def encode(self, text: str, strict: bool = True) -> list[int]:
        if not text:
            return []
        if _SURROGATES.search(text):
            # Lone surrogates have no UTF-8 bytes, so they cannot be byte-level encoded.
            if strict:
                raise ControlError(
                    "prompt contains a lone surrogate code point, which is not valid Unicode; "
                    "pass properly encoded text"
                )
            text = _SURROGATES.sub("\ufffd", text)
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        # The tokenizers library silently drops unknown ids; fail loudly instead.
        return self._tok.decode(_checked_ids(ids, self.vocab_size), skip_special_tokens=False)

    def _json(self) -> dict[str, Any]:
        return json.loads(self._tok.to_str())

    def save(self, directory: Path) -> None:
        atomic_write_json(Path(directory) / TOKENIZER_FILE, {"kind": self.kind, "tokenizer": self._json()})

    def fingerprint(self) -> str:
        obj = self._json()
        # The library version does not change how text maps to ids.
        obj.pop("version", None)
        return sha256_json({"kind": self.kind, "tokenizer": obj})

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size})"


def train_tokenizer(kind: str, text: str, vocab_size: int = 0) -> Tokenizer:
    """Train a tokenizer of ``kind`` ("char" or "bpe") on ``text``; ``vocab_size`` is for bpe only.

    A BPE vocabulary can come out smaller than requested when the text has few distinct pairs;
    ``vocab_size`` on the result is the real size.
    """
    if kind not in TOKENIZER_KINDS:
        allowed = ", ".join(repr(k) for k in TOKENIZER_KINDS)
        raise ConfigError(f"unknown tokenizer kind {kind!r}; use one of: {allowed}")
    if not text:
        raise DataError("cannot train a tokenizer on empty text; load a corpus that has some text")
    if kind == "char":
        return CharTokenizer.train(text)
    if (
        isinstance(vocab_size, bool)
        or not isinstance(vocab_size, int)
        or not (BPE_MIN_VOCAB <= vocab_size <= BPE_MAX_VOCAB)
    ):
        raise ConfigError(
            f"bpe vocab_size must be an integer from {BPE_MIN_VOCAB} (the 256 byte values) "
            f"to {BPE_MAX_VOCAB}, got {vocab_size!r}; pick e.g. 2000 for a small corpus"
        )
    return BPETokenizer.train(text, vocab_size)


def load_tokenizer(directory: Path) -> Tokenizer:
    """Load the tokenizer saved in ``directory/tokenizer.json``."""
    path = Path(directory) / TOKENIZER_FILE
    fix = "re-save the model or retrain it"
    data = read_json_file(path, "tokenizer file")

    def malformed(reason: str) -> CheckpointError:
        return CheckpointError(f"tokenizer file '{path}' is malformed: {reason}; {fix}")

    if not isinstance(data, dict):
        raise malformed("the top level is not a JSON object")
    kind = data.get("kind")
    if kind == "char":
        chars = data.get("chars")
        if not isinstance(chars, list):
            raise malformed("'chars' is not a list")
        try:
            return CharTokenizer(chars)
        except ValueError as e:
            raise malformed(str(e)) from e
    if kind == "bpe":
        spec = data.get("tokenizer")
        if isinstance(spec, str):  # also accept the tokenizers JSON as an embedded string
            try:
                spec = json.loads(spec)
            except json.JSONDecodeError as e:
                raise malformed(f"'tokenizer' is not valid JSON ({e.msg})") from e
        if not isinstance(spec, dict):
            raise malformed("'tokenizer' is not a JSON object")
        try:
            return BPETokenizer.from_json(spec)
        except ValueError as e:
            raise malformed(str(e)) from e
    allowed = ", ".join(repr(k) for k in TOKENIZER_KINDS)
    raise malformed(f"'kind' is {kind!r}, expected one of {allowed}")
