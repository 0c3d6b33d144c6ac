"""The one held-out split rule (muselab.data.split): stable values, and every loader placing items by it."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from muselab.audio.ddsp_recipe import RawClip
from muselab.audio.ddsp_recipe import _split as ddsp_split
from muselab.audio.io import load_audio
from muselab.audio.vocoder_recipe import SAMPLE_RATE, VocoderDataConfig, load_clips
from muselab.data import split
from muselab.data.images import load_images, split_images
from muselab.data.pairs import cmudict_split_of, load_pairs
from muselab.data.text import split_train_val
from muselab.data.tones import make_tones, render_notes, tones_split

WORDS = ["cat", "dog", "phoneme", "zebra", "aardvark", "Read", "naïve", "o'clock", "x" * 40]


def test_the_hash_is_md5_and_gives_golden_values() -> None:
    # Golden values: a change here moves items between splits and invalidates every held-out score.
    assert split.stable_hash("cat") == int(hashlib.md5(b"cat").hexdigest(), 16)
    assert split.stable_bucket("cat", 20) == 12
    assert split.stable_fraction("cat") == pytest.approx(0.814330236257748, abs=0)
    assert split.hold_out([f"k{i}" for i in range(10)], 0.3) == [True] + [False] * 6 + [True, True, False]
    assert split.stable_hash("cat") == split.stable_hash(b"cat")


def test_cmudict_keeps_its_published_split() -> None:
    for word in WORDS:
        bucket = int(hashlib.md5(word.lower().encode()).hexdigest(), 16) % 20
        expected = {0: "test", 1: "val"}.get(bucket, "train")
        assert cmudict_split_of(word) == expected == split.bucket_split_of(word.lower(), 20)


@given(st.text(max_size=30), st.floats(0, 0.45), st.floats(0, 0.45))
def test_split_of_follows_the_shares(key: str, val_share: float, test_share: float) -> None:
    u = split.stable_fraction(key)
    assert 0 <= u < 1
    assert split.split_of(key, val_share, test_share) == (
        "test" if u < test_share else "val" if u < test_share + val_share else "train")


@given(st.lists(st.text(max_size=8), max_size=40), st.floats(0.01, 0.99))
def test_hold_out_takes_the_share_and_leaves_both_parts(keys: list[str], share: float) -> None:
    held = split.hold_out(keys, share)
    assert len(held) == len(keys)
    if len(keys) >= 2:
        assert sum(held) == min(max(round(len(keys) * share), 1), len(keys) - 1)
    else:
        assert not any(held)
    assert split.hold_out(keys, share) == held


def test_hold_out_is_stratified_and_keeps_singletons_in_training() -> None:
    keys = [str(i) for i in range(60)]
    groups = ["a"] * 30 + ["b"] * 20 + ["c"] * 10
    held = split.hold_out(keys, 0.2, groups)
    assert [sum(h for h, g in zip(held, groups, strict=True) if g == name) for name in "abc"] == [6, 4, 2]
    assert split.hold_out(["x", "y", "z", "w"], 0.5, ["a", "b", "b", "b"]) == [False, *split.hold_out(
        ["y", "z", "w"], 2 / 3)]


def test_text_holds_out_its_end_by_tail_cut() -> None:
    assert split.tail_cut(10, 0.2) == 8
    assert split_train_val("abcdefghij", 0.2) == ("abcdefgh", "ij")


# ---- every loader places items by the shared rule: ranking one key first moves that item out -----------


def _first(monkeypatch: pytest.MonkeyPatch, chosen: Callable[[str | bytes], bool]) -> None:
    """Make the keys `chosen` accepts hash below every other key."""
    monkeypatch.setattr(split, "stable_hash", lambda key: 0 if chosen(key) else 2**127)


@pytest.mark.parametrize("source", ["zebra", "cat"])
def test_user_pairs_use_the_rule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str) -> None:
    path = tmp_path / "pairs.tsv"
    path.write_text("".join(f"{w}\t{w[::-1]}\n" for w in ("Zebra", "cat", "dog", "emu")), encoding="utf-8")
    _first(monkeypatch, lambda key: key == source)  # keys are the lowercased sources
    corpus = load_pairs(path, val_fraction=0.0, test_fraction=0.2)
    assert [s.lower() for s, _ in corpus.test] == [source]
    monkeypatch.setattr(split, "stable_hash", lambda key: 20 * 7 + 1)
    assert cmudict_split_of("anything") == "val"


@pytest.mark.parametrize("grey", [3, 7])
def test_images_use_the_rule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, grey: int) -> None:
    for i in range(10):
        Image.fromarray(np.full((6, 6), i, dtype=np.uint8)).save(tmp_path / f"{i}.png")
    data = load_images(str(tmp_path), size=4, channels=1, cache_dir=tmp_path / "cache")
    # Keys are the seed and the pixels, so an image's side does not depend on where it sits in the set.
    _first(monkeypatch, lambda key: key == b"5:" + bytes([grey] * 16))
    train, test = split_images(data, test_share=0.1, seed=5)
    assert test.images[:, 0, 0, 0].tolist() == [grey] and len(train) == 9


@pytest.mark.parametrize("position", [0, 1])
def test_tones_use_the_rule(monkeypatch: pytest.MonkeyPatch, position: int) -> None:
    clips = make_tones(n_clips=8, seconds=0.5)  # two clips of each of four instruments
    _first(monkeypatch, lambda key: isinstance(key, str) and key.endswith(f":{position}"))
    train, test = tones_split(clips, test_share=0.1)
    assert [id(c) for c in test] == [id(c) for c in clips[4 * position: 4 * position + 4]]


@pytest.mark.parametrize("name", ["clip_0.wav", "clip_2.wav"])
def test_vocoder_folders_use_the_rule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    for i in range(3):
        clip = render_notes("clarinet", [(55.0 + 3 * i, 0.05, 0.4)], 0.5, loudness=0.5, sample_rate=SAMPLE_RATE)
        sf.write(tmp_path / f"clip_{i}.wav", clip.audio, SAMPLE_RATE)
    _first(monkeypatch, lambda key: key == name)  # keys are the paths inside the folder
    clips = load_clips(str(tmp_path), VocoderDataConfig(test_share=0.25))
    assert len(clips.test) == 1 and len(clips.train) == 2
    assert np.array_equal(clips.test[0], load_audio(tmp_path / name, sr=SAMPLE_RATE, min_seconds=0.1)[0])


@pytest.mark.parametrize("name", ["a.wav#1", "b.wav"])
def test_ddsp_clips_use_the_rule(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    clips = [RawClip(n, np.zeros(4, dtype=np.float32)) for n in ("a.wav#1", "a.wav#2", "b.wav")]
    _first(monkeypatch, lambda key: key == name)  # keys are the clip names
    train, test = ddsp_split(clips, 0.1)
    assert [c.name for c in test] == [name] and len(train) == 2
