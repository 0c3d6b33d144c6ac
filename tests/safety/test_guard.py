"""The safety path's pieces: inputs and outputs moderated with per-item notes, the policy's words as bans,
a live stream that never shows what the final text masks, and the copy guard's flag / re-sample / refuse."""

import pytest

from helpers import error_message, write
from muselab.core.errors import CheckpointError
from muselab.safety.guard import (
    RESAMPLE_ATTEMPTS,
    CopyGuardError,
    ModeratedStream,
    ban_words,
    check_inputs,
    combine_notes,
    guard_copies,
    merge_notes,
    moderate_outputs,
    moderation_note,
)
from muselab.safety.moderation import PolicyViolation, load_policy, moderate
from muselab.text.metrics import CopyIndex, load_copy_index

TRAINING = "the quick brown fox jumps over the lazy dog and sings of seven bright stars above the bridge\n" * 3


def test_inputs_redacted_summarised_and_blocked_without_the_words():
    policy = load_policy(None)
    texts, summaries = check_inputs(["a shitty day", "a calm day"], policy)
    assert texts == ["a ****** day", "a calm day"]
    assert summaries == [[{"category": "profanity", "action": "redact", "count": 1}], []]
    with pytest.raises(PolicyViolation) as err:
        check_inputs(["a calm day", "we watched porn"], policy, "input")
    message = error_message(err)
    assert "input 2 of 2" in message and "sexual" in message and "porn" not in message


def test_outputs_blocked_name_the_sample_and_notes_hold_no_words():
    policy = load_policy(None)
    with pytest.raises(PolicyViolation, match="generated sample"):
        moderate_outputs(["they had sex on tape: a sex tape"], policy)
    texts, summaries = moderate_outputs(["mail me at ann@example.com"], policy)
    assert texts == ["mail me at [email]"]
    note = moderation_note(policy, sample=summaries[0])
    assert note == {"moderation": {"policy": "default", "sample": [
        {"category": "personal_data", "action": "redact", "count": 1}]}}
    assert "ann@" not in str(note)


def test_policy_file_changes_the_outcome(tmp_path):
    path = write(tmp_path / "p.toml", '[categories.profanity]\naction = "block"\n')
    policy = load_policy(str(path))
    with pytest.raises(PolicyViolation, match="profanity"):
        check_inputs(["a shitty day"], policy)
    assert moderation_note(policy)["moderation"]["policy"] == f"policy file '{path}'"


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


def test_notes_merge_per_item_and_combine_per_file():
    policy = load_policy(None)
    first = moderation_note(policy, prompt=[], sample=[{"category": "profanity", "action": "redact", "count": 1}])
    second = moderation_note(policy, prompt=[], sample=[{"category": "profanity", "action": "redact", "count": 2}])
    memo = [{"memorization": {"checked": True, "longest_copy_chars": n, "max_copy_chars": 10, "flagged": n > 10,
                              "resampled": 0}} for n in (4, 30)]
    notes = merge_notes([first, second], memo)
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


def test_copy_guard_flags_a_copy_and_passes_new_text():
    index = CopyIndex(TRAINING)
    report = guard_copies(["the quick brown fox jumps over the lazy dog", "zebras yodel"], index, 20, "flag",
                          resample=lambda i, a: pytest.fail("flag never re-samples"))
    assert [n["memorization"]["flagged"] for n in report.notes] == [True, False]
    assert report.notes[0]["memorization"]["longest_copy_chars"] == len("the quick brown fox jumps over the lazy dog")
    assert report.messages == ["sample 1 copies 43 characters of the training text (over --max-copy-chars 20)"]


def test_copy_guard_rejects_by_resampling_then_refuses():
    index = CopyIndex(TRAINING)
    calls = []

    def resample(i: int, attempt: int) -> str:
        calls.append((i, attempt))
        return "zebras yodel at noon" if attempt == 2 else "over the lazy dog and sings of seven"

    report = guard_copies(["jumps over the lazy dog and sings"], index, 20, "reject", resample)
    assert report.texts == ["zebras yodel at noon"] and calls == [(0, 1), (0, 2)]
    assert report.notes[0]["memorization"]["resampled"] == 2 and not report.messages
    with pytest.raises(CopyGuardError) as err:
        guard_copies(["jumps over the lazy dog and sings"], index, 20, "reject",
                     lambda i, a: "the lazy dog and sings of seven")
    assert f"after {RESAMPLE_ATTEMPTS} re-samples" in error_message(err)


def test_copy_guard_off_without_an_index_or_at_zero():
    report = guard_copies(["anything"], None, 20, "reject", lambda i, a: pytest.fail("no index, no re-sample"))
    assert report.notes == [{"memorization": {"checked": False, "reason": "the run has no copy index"}}]
    assert not guard_copies(["anything"], CopyIndex(TRAINING), 0, "flag", None).notes[0]["memorization"]["checked"]


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
