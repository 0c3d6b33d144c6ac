"""Tokenizers: exact round trips, stable save/load and fingerprints, clear errors."""

import json
import os
import subprocess
import sys
from pathlib import Path
from pydoc_data.topics import topics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from muselab.core.errors import CheckpointError, ConfigError, ControlError, DataError
from muselab.text.tokenizers import (
    BPETokenizer,
    CharTokenizer,
    Tokenizer,
    load_tokenizer,
    train_tokenizer,
)

# Real prose (shipped with Python) plus non-ASCII text, so BPE has plenty of pairs to merge.
CORPUS = "\n\n".join(topics[k] for k in sorted(topics))[:30_000] + (
    "\n\nPack my box with five dozen liquor jugs! Où est le café? Größe — naïve → 日本語 🙂\n" * 20
)


@pytest.fixture(scope="module")
def bpe() -> BPETokenizer:
    tok = train_tokenizer("bpe", CORPUS, vocab_size=400)
    assert isinstance(tok, BPETokenizer)
    return tok


@pytest.fixture(scope="module")
def char() -> CharTokenizer:
    tok = train_tokenizer("char", CORPUS)
    assert isinstance(tok, CharTokenizer)
    return tok


def assert_one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg and msg
    return msg


# ---------------------------------------------------------------- character tokenizer


def test_char_vocabulary_is_unk_then_sorted_characters(char: CharTokenizer) -> None:
    assert char.kind == "char"
    assert char.chars == tuple(sorted(set(CORPUS)))
    assert char.vocab_size == len(set(CORPUS)) + 1
    # id 0 is <unk>, so the first real character gets id 1.
    assert char.encode(char.chars[0]) == [1]


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_char_round_trips_text_from_its_alphabet(data: st.DataObject) -> None:
    train = data.draw(st.text(min_size=1), label="training text")
    tok = train_tokenizer("char", train)
    sample = data.draw(st.text(alphabet=sorted(set(train))), label="sample")
    ids = tok.encode(sample)
    assert all(0 < i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == sample


def test_char_strict_rejects_unseen_characters_naming_them(char: CharTokenizer) -> None:
    with pytest.raises(ControlError) as err:
        char.encode("café ∑ Ω")
    msg = assert_one_line(err)
    assert repr("∑") in msg and repr("Ω") in msg
    assert repr("c") not in msg  # only the unseen ones are listed
    assert "never saw" in msg


def test_char_strict_error_lists_at_most_ten_characters() -> None:
    tok = train_tokenizer("char", "a")
    unseen = "bcdefghijklmnop"  # 15 unseen characters
    with pytest.raises(ControlError) as err:
        tok.encode(unseen)
    msg = assert_one_line(err)
    assert all(repr(c) in msg for c in unseen[:10])
    assert repr(unseen[10]) not in msg
    assert "5 more" in msg


def test_char_non_strict_maps_unseen_to_unk_and_decode_skips_it(char: CharTokenizer) -> None:
    ids = char.encode("fox∑dog", strict=False)
    assert ids[3] == 0
    assert char.decode(ids) == "foxdog"


def test_empty_string_encodes_to_nothing(char: CharTokenizer, bpe: BPETokenizer) -> None:
    assert char.encode("") == []
    assert bpe.encode("") == []
    assert char.decode([]) == ""
    assert bpe.decode([]) == ""


def test_char_fingerprint_is_stable_across_releases() -> None:
    # Golden value: a fingerprint recorded in a checkpoint must keep matching after upgrades.
    tok = train_tokenizer("char", "banana")
    assert tok.fingerprint() == "d564042f625d1e8bb290644ccdd5ebff70977c66f0d1e8f4cdee3416a0d517ab"


# ---------------------------------------------------------------- byte-level BPE


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_bpe_round_trips_any_unicode_text(bpe: BPETokenizer, text: str) -> None:
    ids = bpe.encode(text)
    assert all(0 <= i < bpe.vocab_size for i in ids)
    assert bpe.decode(ids) == text


def test_bpe_round_trips_awkward_text(bpe: BPETokenizer) -> None:
    for text in [" ", "  leading and trailing  ", "\r\n\t\x00", "\n\n\n", "a\u200bb", "e\u0301", "🙂" * 5]:
        assert bpe.decode(bpe.encode(text)) == text


def test_bpe_learns_merges_that_shorten_the_training_text(bpe: BPETokenizer) -> None:
    assert bpe.kind == "bpe"
    assert bpe.vocab_size == 400
    # 144 merges already save over a third of the tokens compared with raw bytes.
    assert len(bpe.encode(CORPUS)) < 0.65 * len(CORPUS.encode("utf-8"))


def test_bpe_training_is_deterministic(bpe: BPETokenizer) -> None:
    again = train_tokenizer("bpe", CORPUS, vocab_size=400)
    assert again.fingerprint() == bpe.fingerprint()
    assert again.encode(CORPUS) == bpe.encode(CORPUS)


def test_bpe_training_is_deterministic_across_processes(bpe: BPETokenizer) -> None:
    # A fresh process gets fresh hash seeds (Python's and Rust's), which in-process repeats cannot vary.
    code = (
        "import sys; from muselab.text.tokenizers import train_tokenizer; "
        "print(train_tokenizer('bpe', sys.stdin.read(), vocab_size=400).fingerprint())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        input=CORPUS,
        capture_output=True,
        text=True,
        encoding="utf-8",
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},  # the corpus is not ASCII
        check=True,
    )
    assert out.stdout.strip() == bpe.fingerprint()


def test_bpe_strict_rejects_lone_surrogates_non_strict_replaces_them(bpe: BPETokenizer) -> None:
    with pytest.raises(ControlError) as err:
        bpe.encode("a\ud800b")
    assert_one_line(err)
    assert bpe.decode(bpe.encode("a\ud800b", strict=False)) == "a\ufffdb"


def test_decode_rejects_ids_outside_the_vocabulary(char: CharTokenizer, bpe: BPETokenizer) -> None:
    for tok in (char, bpe):
        with pytest.raises(ValueError, match="outside the vocabulary"):
            tok.decode([1, tok.vocab_size])


def test_both_satisfy_the_tokenizer_protocol(char: CharTokenizer, bpe: BPETokenizer) -> None:
    assert isinstance(char, Tokenizer)
    assert isinstance(bpe, Tokenizer)


def test_fingerprints_differ_when_mappings_differ(char: CharTokenizer, bpe: BPETokenizer) -> None:
    fps = {
        char.fingerprint(),
        bpe.fingerprint(),
        train_tokenizer("char", CORPUS + "∑").fingerprint(),
        train_tokenizer("bpe", CORPUS, vocab_size=380).fingerprint(),
    }
    assert len(fps) == 4
    assert all(len(fp) == 64 and int(fp, 16) >= 0 for fp in fps)


# ---------------------------------------------------------------- save and load


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_save_load_gives_identical_tokenizer(
    kind: str, char: CharTokenizer, bpe: BPETokenizer, tmp_path: Path
) -> None:
    tok = char if kind == "char" else bpe
    target = tmp_path / "model" / "nested"  # save creates the folder
    tok.save(target)
    assert sorted(p.name for p in target.iterdir()) == ["tokenizer.json"]  # no temporary file left behind
    assert json.loads((target / "tokenizer.json").read_text(encoding="utf-8"))["kind"] == kind
    loaded = load_tokenizer(target)
    assert type(loaded) is type(tok)
    assert loaded.kind == kind
    assert loaded.vocab_size == tok.vocab_size
    assert loaded.fingerprint() == tok.fingerprint()
    sample = "Où est le café? The lazy dog 🙂 日本"
    assert loaded.encode(sample) == tok.encode(sample)
    assert loaded.encode(CORPUS) == tok.encode(CORPUS)


def test_save_overwrites_an_older_tokenizer_file(
    char: CharTokenizer, bpe: BPETokenizer, tmp_path: Path
) -> None:
    char.save(tmp_path)
    bpe.save(tmp_path)
    assert load_tokenizer(tmp_path).fingerprint() == bpe.fingerprint()


def test_load_accepts_bpe_tokenizer_embedded_as_a_string(bpe: BPETokenizer, tmp_path: Path) -> None:
    bpe.save(tmp_path)
    data = json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8"))
    data["tokenizer"] = json.dumps(data["tokenizer"])
    (tmp_path / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    assert load_tokenizer(tmp_path).fingerprint() == bpe.fingerprint()


def test_load_missing_tokenizer_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError) as err:
        load_tokenizer(tmp_path)
    msg = assert_one_line(err)
    assert str(tmp_path / "tokenizer.json") in msg and "missing" in msg


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "",
        b"\xff\xfe{}",
        "[1, 2]",
        '{"kind": "wordpiece"}',
        '{"chars": ["a"]}',
        '{"kind": "char", "chars": "abc"}',
        '{"kind": "char", "chars": ["a", "bc"]}',
        '{"kind": "char", "chars": ["a", "a"]}',
        '{"kind": "char", "chars": [1, 2]}',
        '{"kind": "bpe"}',
        '{"kind": "bpe", "tokenizer": 5}',
        '{"kind": "bpe", "tokenizer": "{oops"}',
        '{"kind": "bpe", "tokenizer": {"model": "nonsense"}}',
    ],
)
def test_load_corrupt_tokenizer_file(content: str | bytes, tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(CheckpointError) as err:
        load_tokenizer(tmp_path)
    assert str(path) in assert_one_line(err)


def test_load_rejects_a_bpe_that_is_not_byte_level(bpe: BPETokenizer, tmp_path: Path) -> None:
    bpe.save(tmp_path)
    data = json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8"))
    data["tokenizer"]["pre_tokenizer"] = {"type": "Whitespace"}
    (tmp_path / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(CheckpointError, match="byte-level") as err:
        load_tokenizer(tmp_path)
    assert_one_line(err)


# ---------------------------------------------------------------- training errors


def test_unknown_kind_names_the_allowed_ones() -> None:
    with pytest.raises(ConfigError) as err:
        train_tokenizer("wordpiece", CORPUS)
    msg = assert_one_line(err)
    assert "'wordpiece'" in msg and "'char'" in msg and "'bpe'" in msg


@pytest.mark.parametrize("size", [0, 100, 255, -5, 10**9, True, 1000.0, "1000"])
def test_bpe_bad_vocab_size(size: object) -> None:
    with pytest.raises(ConfigError) as err:
        train_tokenizer("bpe", CORPUS, vocab_size=size)  # type: ignore[arg-type]
    assert "vocab_size" in assert_one_line(err)


def test_char_ignores_vocab_size() -> None:
    assert train_tokenizer("char", "abc", vocab_size=5000).vocab_size == 4


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_empty_training_text(kind: str) -> None:
    with pytest.raises(DataError) as err:
        train_tokenizer(kind, "", vocab_size=300)
    assert_one_line(err)
