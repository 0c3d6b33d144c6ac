"""Paired data: users' .tsv/.jsonl files, the hash split, and builtin:cmudict."""

import hashlib
import json
import random
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import error_message, write
from muselab.core.errors import ConfigError, DataError
from muselab.data.pairs import PairCorpus, cmudict_split_of, load_pairs


def all_pairs(corpus: PairCorpus) -> list[tuple[str, str]]:
    return corpus.train + corpus.val + corpus.test


def word_pairs(n: int) -> list[tuple[str, str]]:
    rng = random.Random(n)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = sorted({"".join(rng.choice(letters) for _ in range(rng.randint(3, 9))) for _ in range(n)})
    return [(w, " ".join(c.upper() for c in w)) for w in words]


def md5_bucket(word: str) -> int:
    # Written out independently of the loader: this is the rule published for anyone to reproduce.
    return int(hashlib.md5(word.lower().encode()).hexdigest(), 16) % 20


# ---------------------------------------------------------------- users' files


def test_tsv_pairs_load_and_split_deterministically(tmp_path: Path) -> None:
    pairs = word_pairs(400)
    path = write(tmp_path / "lex.tsv", "".join(f"{s}\t{t}\n" for s, t in pairs))
    corpus = load_pairs(path)
    assert sorted(all_pairs(corpus)) == sorted(pairs)
    assert corpus.source == str(path)
    assert corpus.val and corpus.test and len(corpus.train) > 300
    assert corpus.info["pairs"] == 400
    assert (corpus.info["train"], corpus.info["val"], corpus.info["test"]) == (
        len(corpus.train), len(corpus.val), len(corpus.test))
    assert load_pairs(str(path)) == corpus  # same file, same split and fingerprint
    assert corpus.target_is_symbols  # single letters separated by spaces look like phonemes


def test_adding_lines_moves_no_existing_pair(tmp_path: Path) -> None:
    pairs = word_pairs(600)
    before = load_pairs(write(tmp_path / "a.tsv", "".join(f"{s}\t{t}\n" for s, t in pairs[:400])))
    after = load_pairs(write(tmp_path / "b.tsv", "".join(f"{s}\t{t}\n" for s, t in pairs)))
    for part in ("train", "val", "test"):
        assert set(getattr(before, part)) <= set(getattr(after, part))
    assert before.fingerprint != after.fingerprint


def test_pairs_sharing_a_source_in_any_case_share_a_split(tmp_path: Path) -> None:
    lines = []
    for s, t in word_pairs(300):
        lines += [f"{s}\t{t}\n", f"{s.upper()}\t{t}\n", f"{s}\t{t} X\n"]
    corpus = load_pairs(write(tmp_path / "multi.tsv", "".join(lines)))
    keys = {part: {s.lower() for s, _ in getattr(corpus, part)} for part in ("train", "val", "test")}
    assert not keys["train"] & keys["val"]
    assert not keys["train"] & keys["test"]
    assert not keys["val"] & keys["test"]


def test_fractions_change_split_sizes(tmp_path: Path) -> None:
    path = write(tmp_path / "lex.tsv", "".join(f"{s}\t{t}\n" for s, t in word_pairs(1000)))
    corpus = load_pairs(path, val_fraction=0.2, test_fraction=0.1)
    n = len(all_pairs(corpus))
    assert 0.15 < len(corpus.val) / n < 0.25
    assert 0.06 < len(corpus.test) / n < 0.14
    no_holdout = load_pairs(path, val_fraction=0, test_fraction=0)
    assert no_holdout.val == [] and no_holdout.test == [] and len(no_holdout.train) == n


def test_blank_lines_crlf_bom_and_surrounding_space(tmp_path: Path) -> None:
    body = "\ufeff" + "".join(f"  {s}\t {t} \r\n\r\n" for s, t in word_pairs(200)) + "\n  \n"
    corpus = load_pairs(write(tmp_path / "lex.tsv", body))
    assert sorted(all_pairs(corpus)) == sorted(word_pairs(200))


def test_jsonl_pairs_keep_tabs_and_newlines_inside_fields(tmp_path: Path) -> None:
    pairs = [(f"line {i}\tcol\nnext", f"ligne {i}\n«suivante»") for i in range(200)]
    body = "\n".join(json.dumps({"source": s, "target": t, "id": i}) for i, (s, t) in enumerate(pairs))
    corpus = load_pairs(write(tmp_path / "pairs.jsonl", body + "\n\n"))
    assert sorted(all_pairs(corpus)) == sorted(pairs)
    assert not corpus.target_is_symbols  # sentences, not phonemes


def test_target_symbols_can_be_forced(tmp_path: Path) -> None:
    path = write(tmp_path / "lex.tsv", "".join(f"{s}\t{t}\n" for s, t in word_pairs(200)))
    assert load_pairs(path, target_symbols=False).target_is_symbols is False
    words = write(tmp_path / "inflect.tsv", "".join(f"{s}\t{s}ed\n" for s, _ in word_pairs(200)))
    assert load_pairs(words).target_is_symbols is False  # one word per target: characters
    assert load_pairs(words, target_symbols=True).target_is_symbols is True


pair_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\t\n\r\ufeff"), min_size=1, max_size=12
).filter(lambda s: s == s.strip())


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("roundtrip")


@settings(max_examples=40, deadline=None)
@given(pairs=st.lists(st.tuples(pair_text, pair_text), min_size=1, max_size=30))
def test_tsv_and_jsonl_round_trip_any_text(scratch: Path, pairs) -> None:
    folder = scratch  # overwritten by every example
    tsv = write(folder / "p.tsv", "".join(f"{s}\t{t}\n" for s, t in pairs))
    jsonl = write(folder / "p.jsonl", "".join(json.dumps({"source": s, "target": t}) + "\n" for s, t in pairs))
    a = load_pairs(tsv, val_fraction=0, test_fraction=0)
    b = load_pairs(jsonl, val_fraction=0, test_fraction=0)
    assert a.train == b.train == pairs
    assert a.fingerprint == b.fingerprint


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("bad.tsv", "cat\tK AE T\ndog\tD AO G\textra\n", r"line 2: expected 2 tab-separated fields, found 3"),
        ("bad.tsv", "cat\tK AE T\n\n\ndog\n", r"line 4: expected 2 tab-separated fields, found 1"),
        ("bad.tsv", "cat\tK AE T\ndog\t  \n", r"line 2: empty target"),
        ("bad.tsv", "\tK AE T\n", r"line 1: empty source"),
        ("cut.tsv", "cat\tK AE T\ndog\t", r"line 2: empty target"),  # the last line cut after its tab
        ("cut.tsv", "cat\tK AE T\ndo", r"line 2: expected 2 tab-separated fields, found 1"),
        ("bad.jsonl", '{"source": "a", "target": "b"}\n\n\n{"source": "a"}\n', r"line 4: not a JSON object with string 'source' and 'target'"),
        ("bad.jsonl", '{"source": "a", "target": 3}\n', r"line 1: not a JSON object with string 'source' and 'target'"),
        ("bad.jsonl", '["a", "b"]\n', r"line 1: not a JSON object with string 'source' and 'target'"),
        ("bad.jsonl", '{"source": "a", "target": "b"}\n{"source": "a",\n', r"line 2: not valid JSON"),
        ("bad.jsonl", '{"source": "a", "target": ""}\n', r"line 1: empty target"),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path: Path, name: str, content: str, expected: str) -> None:
    path = write(tmp_path / name, content)
    with pytest.raises(DataError) as err:
        load_pairs(path)
    msg = error_message(err)
    assert str(path) in msg
    assert re.search(expected, msg), msg


def test_non_utf8_names_file_and_byte_offset(tmp_path: Path) -> None:
    path = write(tmp_path / "latin1.tsv", "café\tK AE F EY\n".encode("latin-1"))
    with pytest.raises(DataError) as err:
        load_pairs(path)
    msg = error_message(err)
    assert str(path) in msg and "not UTF-8" in msg and "offset 3" in msg


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_file(tmp_path: Path, content: str) -> None:
    path = write(tmp_path / "empty.tsv", content)
    with pytest.raises(DataError) as err:
        load_pairs(path)
    assert "no pairs" in error_message(err)


def test_missing_path_wrong_suffix_and_unknown_builtin(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        load_pairs(tmp_path / "nope.tsv")
    assert "does not exist" in error_message(err)
    with pytest.raises(DataError) as err:
        load_pairs(write(tmp_path / "lex.txt", "a\tb\n"))
    assert ".tsv or .jsonl" in error_message(err)
    with pytest.raises(DataError) as err:
        load_pairs(tmp_path)
    assert ".tsv or .jsonl" in error_message(err)
    with pytest.raises(DataError) as err:
        load_pairs("builtin:nope")
    assert "builtin:cmudict" in error_message(err)
    with pytest.raises(DataError) as err:
        load_pairs("  ")
    assert "no data path" in error_message(err)


def test_too_few_pairs_for_the_held_out_splits(tmp_path: Path) -> None:
    path = write(tmp_path / "tiny.tsv", "cat\tK AE T\n")
    with pytest.raises(DataError) as err:
        load_pairs(path)
    assert "1 pair" in error_message(err)
    assert load_pairs(path, val_fraction=0, test_fraction=0).train == [("cat", "K AE T")]


@pytest.mark.parametrize(("val", "test"), [(-0.1, 0.05), (0.05, 1.0), (0.6, 0.5), (float("nan"), 0.05), (True, 0.05)])
def test_bad_fractions(tmp_path: Path, val, test) -> None:
    path = write(tmp_path / "lex.tsv", "cat\tK AE T\n")
    with pytest.raises(ConfigError) as err:
        load_pairs(path, val_fraction=val, test_fraction=test)
    error_message(err)


# ---------------------------------------------------------------- builtin:cmudict


@pytest.fixture(scope="module")
def cmu() -> PairCorpus:
    return load_pairs("builtin:cmudict")


def test_cmudict_split_follows_the_published_md5_rule(cmu: PairCorpus) -> None:
    rng = random.Random(0)
    for part, bucket_ok in (("train", lambda b: b >= 2), ("val", lambda b: b == 1), ("test", lambda b: b == 0)):
        sample = rng.sample(getattr(cmu, part), 300)
        assert all(bucket_ok(md5_bucket(w)) for w, _ in sample), part
    assert cmudict_split_of("Cat") == cmudict_split_of("cat") == cmudict_split_of("CAT")
    assert {cmudict_split_of(w) for w in ("cat", "dog", "phoneme", "zebra")} <= {"train", "val", "test"}


def test_cmudict_splits_do_not_overlap_and_have_expected_sizes(cmu: PairCorpus) -> None:
    words = {part: [w for w, _ in getattr(cmu, part)] for part in ("train", "val", "test")}
    for part, ws in words.items():
        assert len(ws) == len(set(ws)), part  # one pronunciation per word
        assert all(w == w.lower() for w in ws)
    assert not set(words["train"]) & set(words["test"])
    assert not set(words["train"]) & set(words["val"])
    assert not set(words["val"]) & set(words["test"])
    n = len(all_pairs(cmu))
    assert n > 120_000 and cmu.info["pairs"] == n
    assert 0.04 < len(cmu.test) / n < 0.06 and 0.04 < len(cmu.val) / n < 0.06
    assert cmu.info["words_dropped"] > 0  # abbreviations and hyphenated compounds
    assert cmu.source == "builtin:cmudict" and cmu.target_is_symbols


def test_cmudict_strips_stress_by_default(cmu: PairCorpus) -> None:
    assert cmu.info["stress"] == "stripped"
    assert not any(re.search(r"\d", t) for _, t in all_pairs(cmu))
    assert all(re.fullmatch(r"[a-z']+", w) for w, _ in all_pairs(cmu))
    assert dict(cmu.train + cmu.val + cmu.test)["cat"] == "K AE T"


def test_cmudict_keeps_stress_on_request(cmu: PairCorpus) -> None:
    stressed = load_pairs("builtin:cmudict", keep_stress=True)
    assert stressed.info["stress"] == "kept"
    assert dict(all_pairs(stressed))["cat"] == "K AE1 T"
    assert [w for w, _ in stressed.test] == [w for w, _ in cmu.test]  # same split either way
    assert [re.sub(r"\d", "", t) for _, t in stressed.train] == [t for _, t in cmu.train]
    assert stressed.fingerprint != cmu.fingerprint


def test_cmudict_is_cached_but_callers_cannot_corrupt_it(cmu: PairCorpus) -> None:
    again = load_pairs("builtin:cmudict")
    assert again == cmu
    again.train.clear()
    assert load_pairs("builtin:cmudict").train == cmu.train


def test_cmudict_split_is_fixed() -> None:
    with pytest.raises(ConfigError) as err:
        load_pairs("builtin:cmudict", val_fraction=0.1)
    assert "fixed" in error_message(err)
