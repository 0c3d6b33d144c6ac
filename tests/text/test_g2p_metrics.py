"""Sequence-to-sequence accuracy: edit distance, PER, G2P word error rate, BLEU and chrF."""

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from muselab.text.metrics import corpus_bleu_chrf, edit_distance, phoneme_error_rate, word_error_rate


def slow_edit_distance(a: list[str], b: list[str]) -> int:
    # Textbook full-table Levenshtein, as an independent reference.
    table = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i, j in itertools.product(range(1, len(a) + 1), range(1, len(b) + 1)):
        table[i][j] = min(table[i - 1][j] + 1, table[i][j - 1] + 1, table[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
    return table[len(a)][len(b)]


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ([], [], 0),
        (["K", "AE", "T"], ["K", "AE", "T"], 0),
        (["K", "AE", "T"], ["K", "AA", "T"], 1),
        (["K", "AE", "T"], [], 3),
        ([], ["K", "AE", "T"], 3),
        (list("kitten"), list("sitting"), 3),
        (list("flaw"), list("lawn"), 2),
        (["AH", "B"], ["B", "AH"], 2),
    ],
)
def test_edit_distance_hand_cases(a: list[str], b: list[str], expected: int) -> None:
    assert edit_distance(a, b) == expected
    assert edit_distance(tuple(b), tuple(a)) == expected


@settings(max_examples=100, deadline=None)
@given(a=st.lists(st.sampled_from("ABC"), max_size=9), b=st.lists(st.sampled_from("ABC"), max_size=9))
def test_edit_distance_matches_the_textbook_table(a: list[str], b: list[str]) -> None:
    assert edit_distance(a, b) == slow_edit_distance(a, b)


def test_phoneme_error_rate() -> None:
    assert phoneme_error_rate([["K", "AE", "T"]], [["K", "AA", "T"]]) == pytest.approx(1 / 3)
    # Pooled over the corpus, not averaged per item: (1 + 0 + 2) / (3 + 2 + 1).
    hyps = [["K", "AA", "T"], ["D", "AO"], ["AY", "Z"]]
    refs = [["K", "AE", "T"], ["D", "AO"], ["AY"]]
    assert phoneme_error_rate(hyps, refs) == pytest.approx(2 / 6)
    assert phoneme_error_rate(refs, refs) == 0.0


def test_word_error_rate_counts_items_with_any_error() -> None:
    hyps = [["K", "AA", "T"], ["D", "AO", "G"], ("B", "IY"), ["AY"]]
    refs = [["K", "AE", "T"], ["D", "AO", "G"], ["B", "IY"], ["AY", "Z"]]
    assert word_error_rate(hyps, refs) == pytest.approx(2 / 4)  # tuples equal lists
    assert word_error_rate(refs, refs) == 0.0


def test_error_rates_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="one hypothesis per reference"):
        phoneme_error_rate([["A"]], [])
    with pytest.raises(ValueError, match="at least 1"):
        word_error_rate([], [])
    with pytest.raises(ValueError, match="every reference is empty"):
        phoneme_error_rate([["A"]], [[]])
    with pytest.raises(TypeError, match="split"):
        phoneme_error_rate(["K AE T"], [["K", "AE", "T"]])


def test_bleu_and_chrf() -> None:
    refs = ["the cat sat on the mat today", "a dog barked at the quiet moon"]
    perfect = corpus_bleu_chrf(refs, refs)
    assert perfect == {"bleu": 100.0, "chrf": 100.0}
    worse = corpus_bleu_chrf(["the cat sat on a mat", "a dog barked at the moon"], refs)
    assert 0 < worse["bleu"] < 100 and 0 < worse["chrf"] < 100
    unrelated = corpus_bleu_chrf(["xyz qqq", "vvv www"], refs)
    assert unrelated["bleu"] < 1 and unrelated["chrf"] < worse["chrf"]
    with pytest.raises(ValueError, match="one hypothesis per reference"):
        corpus_bleu_chrf(["a"], ["a", "b"])
