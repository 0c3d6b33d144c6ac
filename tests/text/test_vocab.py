"""Per-side seq2seq vocabularies: ids, round trips, unknowns, saving and loading."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import error_message
from muselab.core.errors import CheckpointError, ConfigError, DataError
from muselab.text.vocab import (
    BOS,
    EOS,
    PAD,
    SPECIALS,
    UNK,
    VOCAB_FILE,
    SymbolVocab,
    build_vocab,
    load_vocabs,
    save_vocabs,
)


def test_special_ids_are_fixed() -> None:
    assert (PAD, BOS, EOS, UNK) == (0, 1, 2, 3)
    assert SPECIALS == ["<pad>", "<s>", "</s>", "<unk>"]
    vocab = build_vocab(["cat"], "char")
    assert vocab.symbols[:4] == SPECIALS and vocab.size == len(vocab) == 7


def test_ordering_is_by_frequency_then_symbol_whatever_the_input_order() -> None:
    texts = ["K AE T", "B AE T", "K AA R"]
    vocab = build_vocab(texts, "symbols")
    assert vocab.symbols[4:] == ["AE", "K", "T", "AA", "B", "R"]
    assert build_vocab(reversed(texts), "symbols").symbols == vocab.symbols
    assert build_vocab(iter(texts), "symbols").fingerprint() == vocab.fingerprint()


def test_char_encode_decode_and_eos() -> None:
    vocab = build_vocab(["cat", "act"], "char")
    ids = vocab.encode("cat", add_eos=True)
    assert ids[-1] == EOS and len(ids) == 4
    assert vocab.decode(ids) == "cat"
    assert vocab.decode([BOS, *ids, PAD, PAD]) == "cat"
    assert vocab.decode(vocab.encode("tac") + [EOS] + vocab.encode("cat")) == "tac"  # stops at EOS


def test_symbols_encode_decode_and_decode_symbols() -> None:
    vocab = build_vocab(["K AE T", "D AO G"], "symbols")
    ids = vocab.encode("  K  AE\tT ")
    assert len(ids) == 3
    assert vocab.decode(ids) == "K AE T"
    assert vocab.decode_symbols([BOS, *ids, EOS, *ids]) == ["K", "AE", "T"]
    # ids straight from a model: numpy or torch integers
    assert vocab.decode(np.array(ids)) == "K AE T"
    assert vocab.decode(torch.tensor(ids)) == "K AE T"


def test_unknown_symbols_become_unk() -> None:
    chars = build_vocab(["cat"], "char")
    assert chars.encode("cab") == [*chars.encode("ca"), UNK]
    assert chars.decode(chars.encode("cab")) == "ca<unk>"
    phones = build_vocab(["K AE T"], "symbols")
    assert phones.encode("K ZH T") == [phones.encode("K")[0], UNK, phones.encode("T")[0]]
    assert phones.decode_symbols(phones.encode("K ZH T")) == ["K", "<unk>", "T"]
    # Text can never produce PAD, BOS or EOS, even when it spells them.
    assert phones.encode("<s> </s> <pad> <unk>") == [UNK] * 4


def test_min_count_drops_rare_symbols() -> None:
    vocab = build_vocab(["aab", "ac"], "char", min_count=2)
    assert vocab.symbols[4:] == ["a"]
    assert vocab.encode("abc") == [4, UNK, UNK]


def test_out_of_range_ids_fail() -> None:
    vocab = build_vocab(["ab"], "char")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        vocab.decode([len(vocab)])


def test_build_errors() -> None:
    with pytest.raises(ConfigError) as err:
        build_vocab(["a"], "words")
    assert "'char'" in error_message(err)
    with pytest.raises(ConfigError) as err:
        build_vocab(["a"], "char", min_count=0)
    error_message(err)
    with pytest.raises(DataError) as err:
        build_vocab(["", "  "], "symbols")
    error_message(err)
    with pytest.raises(DataError) as err:
        build_vocab(["ab"], "char", min_count=5)
    assert "min_count" in error_message(err)


char_text = st.text(st.characters(codec="utf-8"), max_size=30)
# Excluding separators (Z*) and control characters (Cc) leaves no character str.split() splits on.
symbol = st.text(st.characters(codec="utf-8", exclude_categories=("Z", "Cc")), min_size=1, max_size=4)
symbol_lists = st.lists(st.one_of(symbol, st.sampled_from([*SPECIALS, "AE", "K"])), max_size=15)


@settings(max_examples=100, deadline=None)
@given(texts=st.lists(char_text, min_size=1, max_size=5).filter(lambda ts: any(ts)))
def test_char_round_trip_on_training_texts(texts: list[str]) -> None:
    vocab = build_vocab(texts, "char")
    for text in texts:
        ids = vocab.encode(text, add_eos=True)
        assert UNK not in ids and ids.count(EOS) == 1
        assert vocab.decode(ids) == text
        assert vocab.decode_symbols(ids) == list(text)


@settings(max_examples=60, deadline=None)
@given(seqs=st.lists(symbol_lists, min_size=1, max_size=5).filter(
    lambda ss: any(s not in SPECIALS for seq in ss for s in seq)))
def test_symbols_round_trip_on_training_texts(seqs: list[list[str]]) -> None:
    texts = [" ".join(seq) for seq in seqs]
    vocab = build_vocab(texts, "symbols")
    for seq, text in zip(seqs, texts, strict=True):
        assert text.split() == seq
        ids = vocab.encode(text)
        assert len(ids) == len(seq)
        # Spellings of specials are reserved and read back as <unk>; everything else round-trips.
        assert vocab.decode_symbols(ids) == ["<unk>" if s in SPECIALS else s for s in seq]
        if not set(seq) & set(SPECIALS):
            assert vocab.decode(ids) == text


@settings(max_examples=50, deadline=None)
@given(texts=st.lists(char_text, min_size=1, max_size=5).filter(lambda ts: any(ts)))
def test_json_round_trip_preserves_the_mapping(texts: list[str]) -> None:
    vocab = build_vocab(texts, "char")
    again = SymbolVocab.from_json(json.loads(json.dumps(vocab.to_json())))
    assert again == vocab and again.fingerprint() == vocab.fingerprint()
    for text in texts:
        assert again.encode(text) == vocab.encode(text)


def test_fingerprint_tells_mappings_apart() -> None:
    a = build_vocab(["ab"], "char")
    assert a.fingerprint() != build_vocab(["ba", "b"], "char").fingerprint()
    assert a.fingerprint() != SymbolVocab("symbols", a.symbols).fingerprint()


def test_save_and_load(tmp_path: Path) -> None:
    source = build_vocab(["cat", "dog"], "char")
    target = build_vocab(["K AE T", "D AO G"], "symbols")
    save_vocabs(tmp_path, source, target)
    data = json.loads((tmp_path / VOCAB_FILE).read_text(encoding="utf-8"))
    assert set(data) == {"source", "target"}
    loaded_source, loaded_target = load_vocabs(tmp_path)
    assert (loaded_source, loaded_target) == (source, target)
    assert [p.name for p in tmp_path.iterdir()] == [VOCAB_FILE]  # no temporary file left behind


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"\xff\xfe", "not UTF-8"),
        (b'{"source": ', "not valid JSON"),
        (b"[]", "not a JSON object"),
        (b'{"source": {"kind": "char", "symbols": ["<pad>", "<s>", "</s>", "<unk>"]}}', "no 'target'"),
        (b'{"source": [], "target": []}', "'source'"),
        (b'{"source": {"kind": "char", "symbols": ["<pad>", "<s>", "</s>", "<unk>", "ab"]}, "target": {}}',
         "single characters"),
        (b'{"source": {"kind": "char", "symbols": ["a", "<s>", "</s>", "<unk>"]}, "target": {}}', "specials"),
        (b'{"source": {"kind": "char", "symbols": ["<pad>", "<s>", "</s>", "<unk>"]}, '
         b'"target": {"kind": "symbols", "symbols": ["<pad>", "<s>", "</s>", "<unk>", "A", "A"]}}', "duplicate"),
        (b'{"source": {"kind": "wordpiece", "symbols": []}, "target": {}}', "kind"),
        (b'{"source": {"kind": "bpe", "symbols": []}, "target": {}}', "tokenizer"),
    ],
)
def test_corrupt_vocab_file(tmp_path: Path, content: bytes, expected: str) -> None:
    (tmp_path / VOCAB_FILE).write_bytes(content)
    with pytest.raises(CheckpointError) as err:
        load_vocabs(tmp_path)
    msg = error_message(err)
    assert str(tmp_path / VOCAB_FILE) in msg and expected in msg, msg


def test_missing_vocab_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError) as err:
        load_vocabs(tmp_path)
    assert "missing" in error_message(err)


def test_from_json_malformed() -> None:
    with pytest.raises(CheckpointError) as err:
        SymbolVocab.from_json({"kind": "symbols", "symbols": ["<pad>", "<s>", "</s>", "<unk>", "A B"]})
    assert "whitespace" in error_message(err)
