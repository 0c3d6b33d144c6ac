"""Text data loaders and built-in text sources."""

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import error_message, write
from muselab.core.errors import ConfigError, DataError
from muselab.data.text import (
    BUILTIN_TEXT_SOURCES,
    TextCorpus,
    load_text_corpus,
    split_train_val,
)

# ---------------------------------------------------------------- single files


def test_text_file_loads_its_contents(tmp_path: Path) -> None:
    path = write(tmp_path / "poems.txt", "Roses are red,\nviolets are blue. — ☂\n")
    corpus = load_text_corpus(str(path))
    assert isinstance(corpus, TextCorpus)
    assert corpus.text == "Roses are red,\nviolets are blue. — ☂\n"
    assert corpus.source == str(path)
    assert corpus.n_documents == 1
    assert corpus.fingerprint == hashlib.sha256(corpus.text.encode("utf-8")).hexdigest()


def test_any_non_jsonl_file_is_read_as_text(tmp_path: Path) -> None:
    path = write(tmp_path / "notes.md", '{"text": "not parsed"}\n')
    assert load_text_corpus(str(path)).text == '{"text": "not parsed"}\n'


def test_accepts_a_path_object(tmp_path: Path) -> None:
    path = write(tmp_path / "a.txt", "hello")
    assert load_text_corpus(path).text == "hello"


def test_bom_is_stripped_and_crlf_normalised(tmp_path: Path) -> None:
    path = write(tmp_path / "win.txt", "\ufeffline one\r\nline two\r\n".encode())
    assert load_text_corpus(str(path)).text == "line one\nline two\n"


@pytest.mark.parametrize("content", ["", "   \n\t\r\n  ", "\ufeff"])
def test_empty_or_whitespace_file(tmp_path: Path, content: str) -> None:
    path = write(tmp_path / "empty.txt", content)
    with pytest.raises(DataError) as err:
        load_text_corpus(str(path))
    msg = error_message(err)
    assert str(path) in msg and "empty" in msg


def test_non_utf8_file_names_file_and_offset(tmp_path: Path) -> None:
    path = write(tmp_path / "latin1.txt", "café au lait".encode("latin-1"))
    with pytest.raises(DataError) as err:
        load_text_corpus(str(path))
    msg = error_message(err)
    assert str(path) in msg
    assert "offset 3" in msg  # "caf" is 3 bytes, then the Latin-1 é
    assert "iconv" in msg and "-t UTF-8" in msg


def test_missing_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.txt"
    with pytest.raises(DataError) as err:
        load_text_corpus(str(missing))
    msg = error_message(err)
    assert f"'{missing}' does not exist" in msg
    assert "builtin:words" in msg and "builtin:python-docs" in msg


def test_empty_spec_is_not_the_current_folder() -> None:
    with pytest.raises(DataError) as err:
        load_text_corpus("")
    error_message(err)


# ---------------------------------------------------------------- folders


def make_tree(root: Path, order: list[str]) -> None:
    contents = {
        "b.txt": "bee",
        "a/z.txt": "zed",
        "a/b/c.txt": "sea",
        "a.txt": "ay",
        "skip.md": "not text",
        "a/notes.json": "{}",
    }
    for name in order:
        write(root / name, contents[name])


def test_folder_reads_txt_files_recursively_in_relative_path_order(tmp_path: Path) -> None:
    make_tree(tmp_path / "d", ["b.txt", "a/z.txt", "a/b/c.txt", "a.txt", "skip.md", "a/notes.json"])
    corpus = load_text_corpus(str(tmp_path / "d"))
    # Sorted by path components: a/b/c.txt, a/z.txt, a.txt, b.txt.
    assert corpus.text == "sea\n\nzed\n\nay\n\nbee"
    assert corpus.n_documents == 4
    assert corpus.source == f"4 files under {tmp_path / 'd'}"


def test_folder_order_does_not_depend_on_creation_order(tmp_path: Path) -> None:
    names = ["b.txt", "a/z.txt", "a/b/c.txt", "a.txt"]
    make_tree(tmp_path / "one", names)
    make_tree(tmp_path / "two", list(reversed(names)))
    one, two = load_text_corpus(str(tmp_path / "one")), load_text_corpus(str(tmp_path / "two"))
    assert one.text == two.text
    assert one.fingerprint == two.fingerprint


def test_folder_without_txt_files(tmp_path: Path) -> None:
    write(tmp_path / "d" / "readme.md", "hello")
    with pytest.raises(DataError) as err:
        load_text_corpus(str(tmp_path / "d"))
    msg = error_message(err)
    assert str(tmp_path / "d") in msg and ".txt" in msg


def test_folder_skips_blank_files_but_rejects_all_blank(tmp_path: Path) -> None:
    write(tmp_path / "d" / "a.txt", "  \n")
    write(tmp_path / "d" / "b.txt", "text")
    corpus = load_text_corpus(str(tmp_path / "d"))
    assert corpus.text == "text"
    assert corpus.n_documents == 1
    write(tmp_path / "e" / "a.txt", "")
    with pytest.raises(DataError) as err:
        load_text_corpus(str(tmp_path / "e"))
    error_message(err)


def test_folder_names_the_file_that_is_not_utf8(tmp_path: Path) -> None:
    write(tmp_path / "d" / "good.txt", "fine")
    bad = write(tmp_path / "d" / "sub" / "bad.txt", b"ok\xff")
    with pytest.raises(DataError) as err:
        load_text_corpus(str(tmp_path / "d"))
    msg = error_message(err)
    assert str(bad) in msg and "offset 2" in msg


# ---------------------------------------------------------------- jsonl


def test_jsonl_joins_text_fields_and_skips_blank_lines(tmp_path: Path) -> None:
    lines = [json.dumps({"text": "first", "id": 1}), "", "   ", json.dumps({"text": "second\r\nline ✓"})]
    path = write(tmp_path / "data.jsonl", "\ufeff" + "\r\n".join(lines) + "\r\n")
    corpus = load_text_corpus(str(path))
    assert corpus.text == "first\n\nsecond\nline ✓"
    assert corpus.n_documents == 2
    assert corpus.source == str(path)


@pytest.mark.parametrize(
    ("bad_line", "expected"),
    [
        ("{not json", "not valid JSON"),
        ('["text"]', "not an object"),
        ('{"body": "x"}', '"text"'),
        ('{"text": 5}', "not a string"),
    ],
)
def test_jsonl_errors_name_file_and_line(tmp_path: Path, bad_line: str, expected: str) -> None:
    path = write(tmp_path / "data.jsonl", '{"text": "ok"}\n\n' + bad_line + "\n")
    with pytest.raises(DataError) as err:
        load_text_corpus(str(path))
    msg = error_message(err)
    assert str(path) in msg and "line 3" in msg and expected in msg


def test_jsonl_with_only_empty_texts(tmp_path: Path) -> None:
    path = write(tmp_path / "data.jsonl", '{"text": ""}\n{"text": "  "}\n')
    with pytest.raises(DataError) as err:
        load_text_corpus(str(path))
    assert str(path) in error_message(err)


# ---------------------------------------------------------------- built-in sources


def test_unknown_builtin_lists_the_known_ones() -> None:
    with pytest.raises(DataError) as err:
        load_text_corpus("builtin:shakespeare")
    msg = error_message(err)
    assert "builtin:shakespeare" in msg
    assert all(f"builtin:{name}" in msg for name in BUILTIN_TEXT_SOURCES)


def test_builtin_descriptions_are_one_line() -> None:
    assert set(BUILTIN_TEXT_SOURCES) == {"words", "python-docs"}
    assert all(desc and "\n" not in desc for desc in BUILTIN_TEXT_SOURCES.values())


def test_builtin_words() -> None:
    corpus = load_text_corpus("builtin:words")
    words = corpus.text.split("\n")
    assert corpus.source == "builtin:words"
    assert corpus.n_documents == len(words) > 100_000
    assert all(re.fullmatch(r"[a-z']*[a-z][a-z']*", w) for w in words)
    assert len(set(words)) == len(words)
    assert {"hello", "world", "don't"} <= set(words)
    # Shuffled, so the validation tail is not just the end of the alphabet.
    tail = words[-1000:]
    assert words != sorted(words)
    assert len({w[0] for w in tail}) > 20


def test_builtin_words_are_deterministic() -> None:
    # Built in a fresh process too: set ordering there differs, the corpus must not.
    code = (
        "from muselab.data.text import load_text_corpus; print(load_text_corpus('builtin:words').fingerprint)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == load_text_corpus("builtin:words").fingerprint


def test_builtin_python_docs() -> None:
    corpus = load_text_corpus("builtin:python-docs")
    assert corpus.source == "builtin:python-docs"
    assert len(corpus.text) > 100_000
    assert corpus.n_documents > 50
    assert "assert" in corpus.text and "statement" in corpus.text
    assert corpus.fingerprint == hashlib.sha256(corpus.text.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------- train/validation split


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=2, max_size=300), st.floats(min_value=0.01, max_value=0.99))
def test_split_proportions(text: str, fraction: float) -> None:
    n_val = round(len(text) * fraction)
    if n_val in (0, len(text)):
        with pytest.raises(DataError):
            split_train_val(text, fraction)
        return
    train, val = split_train_val(text, fraction)
    assert train + val == text
    assert len(val) == n_val
    assert split_train_val(text, fraction) == (train, val)


def test_split_takes_the_tail_for_validation() -> None:
    assert split_train_val("abcdefghij", 0.2) == ("abcdefgh", "ij")
    assert split_train_val("abcdefghij", 0.1) == ("abcdefghi", "j")


def test_split_too_short() -> None:
    with pytest.raises(DataError) as err:
        split_train_val("abc", 0.1)
    assert "3 characters" in error_message(err)
    with pytest.raises(DataError):
        split_train_val("", 0.5)


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5, float("nan"), float("inf")])
def test_split_bad_fraction(fraction: float) -> None:
    with pytest.raises(ConfigError) as err:
        split_train_val("abcdefghij", fraction)
    assert "val_fraction" in error_message(err)
