"""Diversity and novelty metrics for generated text."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from muselab.text.metrics import CopyIndex, distinct_n, novelty, self_bleu, text_diversity_report


def brute_force_longest_copy(sample: str, train: str) -> tuple[int, int]:
    """Reference: try every span, longest first, earliest start first."""
    for length in range(len(sample), 0, -1):
        for start in range(len(sample) - length + 1):
            if sample[start : start + length] in train:
                return length, start
    return 0, 0


# ---------------------------------------------------------------- distinct-n


def test_distinct_n_hand_computed() -> None:
    samples = ["the cat the cat", "the dog"]
    # unigrams: the, cat, the, cat, the, dog -> 3 unique of 6
    assert distinct_n(samples, 1) == pytest.approx(3 / 6)
    # bigrams: (the cat) (cat the) (the cat) | (the dog) -> 3 unique of 4; none across samples
    assert distinct_n(samples, 2) == pytest.approx(3 / 4)
    # trigrams: (the cat the) (cat the cat) -> 2 of 2
    assert distinct_n(samples, 3) == pytest.approx(1.0)


def test_distinct_n_all_repeated_and_empty() -> None:
    assert distinct_n(["a a a a"], 1) == pytest.approx(1 / 4)
    assert distinct_n(["one two", "three"], 3) == 0.0
    assert distinct_n([], 1) == 0.0
    with pytest.raises(ValueError):
        distinct_n(["a"], 0)


# ---------------------------------------------------------------- self-BLEU


def test_self_bleu_identical_samples_is_one() -> None:
    sample = "the quick brown fox jumps over the lazy dog"
    assert self_bleu([sample] * 4) == pytest.approx(1.0)


def test_self_bleu_unrelated_samples_is_near_zero() -> None:
    samples = [
        "the quick brown fox jumps over the lazy dog",
        "colourless green ideas sleep furiously tonight",
        "a stitch in time saves nine dear reader",
        "heavy rain fell upon distant mountain villages",
    ]
    score = self_bleu(samples)
    assert 0.0 <= score < 0.05


def test_self_bleu_orders_similarity() -> None:
    similar = ["to be or not to be", "to be or not to see", "to be or not to flee"]
    varied = ["to be or not to be", "all the world is a stage", "now is the winter of discontent"]
    assert self_bleu(similar) > self_bleu(varied)


def test_self_bleu_needs_two_samples() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        self_bleu(["alone"])


# ---------------------------------------------------------------- CopyIndex


@settings(max_examples=200, deadline=None)
@given(
    train=st.text(alphabet="abc", max_size=60),
    sample=st.text(alphabet="abcd", max_size=25),
)
def test_longest_copy_matches_brute_force(train: str, sample: str) -> None:
    assert CopyIndex(train).longest_copy(sample) == brute_force_longest_copy(sample, train)


@settings(max_examples=60, deadline=None)
@given(
    train=st.text(alphabet=st.sampled_from("aé\n\U0001f600 "), max_size=40),
    sample=st.text(alphabet=st.sampled_from("aé\n\U0001f600 x"), max_size=15),
)
def test_longest_copy_counts_characters_not_bytes(train: str, sample: str) -> None:
    assert CopyIndex(train).longest_copy(sample) == brute_force_longest_copy(sample, train)


def test_longest_copy_finds_planted_copy_in_large_text() -> None:
    rng = random.Random(7)
    train = "".join(rng.choice("abcdefghij ") for _ in range(200_000))
    planted = train[123_456 : 123_456 + 80]
    # Characters absent from the training text cannot extend the copy on either side.
    sample = "XYZ" * 10 + planted + "QQQ" * 10
    length, start = CopyIndex(train).longest_copy(sample)
    assert (length, start) == (80, 30)
    assert sample[start : start + length] == planted


def test_longest_copy_handles_repetitive_text() -> None:
    train = "ab" * 5000
    index = CopyIndex(train)
    assert index.longest_copy("zz" + "ab" * 20 + "zz") == (40, 2)
    assert index.longest_copy("bb") == (1, 0)
    assert len(index) == 10_000


def test_longest_copy_empty_inputs() -> None:
    assert CopyIndex("").longest_copy("abc") == (0, 0)
    assert CopyIndex("abc").longest_copy("") == (0, 0)
    assert CopyIndex("abc").longest_copy("xyz") == (0, 0)


# ---------------------------------------------------------------- novelty


def _planted_data() -> tuple[str, list[str]]:
    rng = random.Random(3)
    train = "".join(rng.choice("abcdefgh ") for _ in range(20_000))
    copied = ["#" * 20 + train[1000:1100] + "#" * 20, "%" * 5 + train[5000:5060]]
    # Letters that never occur in the training text: longest copy is 0.
    fresh = ["XYZW" * 30, "QRST" * 10]
    return train, copied + fresh


def test_novelty_on_planted_copies() -> None:
    train, samples = _planted_data()
    result = novelty(samples, CopyIndex(train), min_copy_chars=50)
    assert result["novelty"] == pytest.approx(0.5)
    assert result["copied_share"] == pytest.approx(0.5)
    assert result["longest_copy_chars"] == 100
    assert result["mean_longest_copy_chars"] == pytest.approx((100 + 60 + 0 + 0) / 4)
    # A threshold above every copy makes all samples novel.
    assert novelty(samples, CopyIndex(train), min_copy_chars=101)["novelty"] == 1.0


def test_novelty_rejects_bad_arguments() -> None:
    index = CopyIndex("abc")
    with pytest.raises(ValueError):
        novelty([], index)
    with pytest.raises(ValueError):
        novelty(["abc"], index, min_copy_chars=0)


def test_text_diversity_report_keys_and_index_reuse() -> None:
    train, samples = _planted_data()
    from_text = text_diversity_report(samples, train)
    from_index = text_diversity_report(samples, CopyIndex(train))
    assert from_text == from_index
    assert set(from_text) == {
        "distinct_1",
        "distinct_2",
        "distinct_3",
        "self_bleu",
        "novelty",
        "copied_share",
        "longest_copy_chars",
        "mean_longest_copy_chars",
    }
    assert all(isinstance(v, float) for v in from_text.values())
