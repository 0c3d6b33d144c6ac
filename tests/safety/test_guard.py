"""The safety path's pieces: the policy's words as bans, notes combined per file, a live stream that never
shows what the final text masks, and the copy index (the pipeline's own checks: tests/test_pipeline.py)."""

import pytest

from helpers import error_message, write
from muselab.core.errors import CheckpointError
from muselab.safety.guard import ModeratedStream, ban_words, combine_notes
from muselab.safety.moderation import load_policy, moderate
from muselab.text.metrics import CopyIndex, load_copy_index

TRAINING = "the quick brown fox jumps over the lazy dog and sings of seven bright stars above the bridge\n" * 3


def test_ban_words_are_the_block_and_redact_words_plus_the_users():
    words = ban_words(load_policy(None), ["zorbleflax"])
    assert "fuck" in words and "shit" in words and "have sex" in words  # wildcards banned as their stem
    assert "suicide" not in words  # violence warns: not banned
    assert not any("@" in w or "*" in w for w in words)  # patterns stay with the post-filter
    assert words[-1] == "zorbleflax"


def test_ban_words_respect_a_policy_that_warns(tmp_path):
    path = write(tmp_path / "p.toml", '[categories.profanity]\naction = "warn"\n')
    words = ban_words(load_policy(str(path)))
    assert "fuck" not in words and "porn" in words


def test_notes_of_a_file_combine_per_part():
    notes = [{"moderation": {"policy": "default", "prompt": [], "sample": [
                 {"category": "profanity", "action": "redact", "count": n}]},
              "memorization": {"checked": True, "longest_copy_chars": copied, "max_copy_chars": 10,
                               "flagged": copied > 10, "resampled": 0}} for n, copied in ((1, 4), (2, 30))]
    assert notes[1]["memorization"]["longest_copy_chars"] == 30 and "moderation" in notes[1]
    combined = combine_notes(notes)
    assert combined["moderation"]["prompt"] == []
    assert combined["moderation"]["sample"] == [{"category": "profanity", "action": "redact", "count": 3}]
    assert combined["memorization"]["flagged_samples"] == 1 and combined["memorization"]["longest_copy_chars"] == 30


def stream(pieces_of_text: list[str], final: str) -> str:
    shown: list[str] = []
    live = ModeratedStream(load_policy(None), shown.append)
    text = ""
    for piece in pieces_of_text:
        text += piece
        live.feed(text)
    live.finish(final)
    return "".join(shown)


def test_stream_shows_exactly_the_moderated_final_text():
    raw = "Well, shit happens to us all. Write to ann@example.com or call later, friend of mine, " * 3
    final = moderate(raw).redacted
    assert stream(list(raw), final) == final
    assert "shit" not in stream(list(raw), final)


def test_stream_stops_at_a_blocked_text():
    raw = "a long and quiet story of the sea, " * 3 + "then they watched porn all night long, on and on and on"
    shown = stream(list(raw), raw)
    assert "porn" not in shown and shown.startswith("a long and quiet story")


def test_copy_index_round_trips_through_its_file(tmp_path):
    text = "naïve café, Zürich 🎵 " + TRAINING
    index = CopyIndex(text)
    index.save(tmp_path / "copy_index.safetensors")
    loaded = load_copy_index(tmp_path / "copy_index.safetensors")
    for sample in ("café, Zür", "seven bright stars above the bridge\nthe", "🎵 the quick", "xyz"):
        assert loaded.longest_copy(sample) == index.longest_copy(sample)


def test_a_damaged_copy_index_is_one_line(tmp_path):
    write(tmp_path / "bad.safetensors", b"not a safetensors file")
    with pytest.raises(CheckpointError) as err:
        load_copy_index(tmp_path / "bad.safetensors")
    assert "not a readable copy index" in error_message(err)
