"""text-lm generation through the safety path: decode-time bans (the user's and the policy's), moderation of
the prompt and the samples, and the memorization guard backed by the copy index saved at training time."""

import random
import re
import shutil

import pytest

from helpers import error_message, write
from muselab import api
from muselab.pipeline import RefusedError
from muselab.safety.moderation import PolicyViolation, load_policy, moderate
from muselab.text.lm_recipe import COPY_INDEX_FILE
from muselab.text.metrics import load_copy_index, novelty

WORD = "zorbleflax"


def whole_word(text: str) -> bool:
    return re.search(rf"(?<![^\W_]){WORD}(?![^\W_])", text, re.IGNORECASE) is not None


@pytest.fixture(scope="module")
def zorble_run(tmp_path_factory):
    """A tiny model that has learned little but the made-up word (and memorised its short lines)."""
    rng = random.Random(0)
    lines = [f"{rng.choice(['the', 'a', 'my'])} {WORD} {rng.choice(['sat', 'ran', 'slept'])}." for _ in range(600)]
    data = write(tmp_path_factory.mktemp("zorble") / "z.txt", "\n".join(lines) + "\n")
    out = tmp_path_factory.mktemp("runs") / "zorble"
    api.train("text-lm", str(data), out, preset="tiny", max_steps=150, quiet=True)
    return out


@pytest.fixture(scope="module")
def zorble(zorble_run):
    return api.load(zorble_run)


def test_copy_index_is_written_at_training_and_loads(zorble_run):
    index = load_copy_index(zorble_run / COPY_INDEX_FILE)
    assert index.longest_copy(f"the {WORD} sat.\n")[0] == len(f"the {WORD} sat.\n")
    assert index.longest_copy("quartz")[0] < 3


def test_ban_keeps_the_word_out_of_a_model_full_of_it(zorble):
    controls = {"max_new_tokens": 120, "num_samples": 4, "seed": 0, "stream": False}
    assert any(whole_word(t) for t in zorble.generate(**controls).items)
    banned = zorble.generate(ban=[WORD], **controls).items
    assert not any(whole_word(t) for t in banned), banned


def test_words_of_a_redact_category_are_banned_while_decoding(zorble, tmp_path):
    policy = write(tmp_path / "p.toml", f'[categories.profanity]\nadd_words = ["{WORD}"]\n')
    controls = {"max_new_tokens": 120, "num_samples": 4, "seed": 0, "stream": False}
    out = zorble.generate(policy=str(policy), **controls).items
    assert not any(whole_word(t) for t in out)
    # the same decoding as an explicit ban, then the post-filter masks the obfuscated forms the ban lets
    # through ("zorbleflaxx": repeated letters)
    banned = zorble.generate(ban=[WORD], **controls).items
    assert out == [moderate(t, load_policy(policy)).redacted for t in banned]
    assert out != [moderate(t, load_policy(policy)).redacted for t in zorble.generate(**controls).items]


def test_a_blocked_prompt_stops_before_generating(zorble):
    shown = []
    with pytest.raises(PolicyViolation) as err:
        zorble.generate(prompt="the porn", on_text=shown.append)
    assert "prompt" in error_message(err) and "sexual" in error_message(err) and shown == []


def test_a_redact_word_in_the_prompt_is_masked_in_the_output_and_the_manifest_controls(tiny_run):
    run = api.load(tiny_run)
    shown = []
    out = run.generate(prompt="The shit fox", max_new_tokens=40, seed=2, on_text=shown.append)
    assert out.items[0].startswith("The **** fox") and "".join(shown) == out.items[0]
    assert out.controls["prompt"] == "The **** fox"
    note = out.notes[0]["moderation"]
    assert note["prompt"] == [{"category": "profanity", "action": "redact", "count": 1}]


def test_copies_of_the_training_text_are_flagged(zorble):
    out = zorble.generate(max_new_tokens=80, num_samples=2, seed=1, stream=False, max_copy_chars=20)
    marks = [n["memorization"] for n in out.notes]
    assert all(m["checked"] and m["flagged"] and m["longest_copy_chars"] > 20 for m in marks)
    assert out.warnings[0].startswith("sample 1 copies ")


def test_reject_resamples_and_then_refuses(zorble):
    with pytest.raises(RefusedError) as err:
        zorble.generate(max_new_tokens=80, seed=1, max_copy_chars=5, memorization="reject")
    assert "still copies" in error_message(err)
    # a limit the samples stay under passes without any re-sample
    out = zorble.generate(max_new_tokens=30, seed=1, max_copy_chars=200, memorization="reject")
    assert out.notes[0]["memorization"]["resampled"] == 0


def test_a_run_without_a_copy_index_says_so_and_generates(tiny_run, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(tiny_run, old)
    (old / COPY_INDEX_FILE).unlink()
    out = api.load(old).generate(max_new_tokens=10, seed=0, stream=False)
    assert len(out.items) == 1 and "no copy index" in out.warnings[0]
    assert out.notes[0]["memorization"]["checked"] is False


def test_novelty_reports_the_flagged_share(zorble_run):
    index = load_copy_index(zorble_run / COPY_INDEX_FILE)
    report = novelty([f"the {WORD} sat.\nmy {WORD} ran.\n", "quartz jinx"], index, max_copy_chars=20)
    assert report["memorization_flagged_share"] == 0.5


def test_a_list_of_prompts_is_decoded_in_batches_and_moderated_one_by_one(tiny_run):
    run = api.load(tiny_run)
    single = run.generate("The ", max_new_tokens=12, seed=4, num_samples=2, stream=False)
    prompts = ["The ", "porn", "A ", "B ", "To"]  # three lengths: three batches
    batch = run.generate(prompts, max_new_tokens=12, seed=4, num_samples=2, stream=False)
    # the blocked prompt is one refused entry; the others get their samples, in request order
    assert [(r.index, r.check, r.category) for r in batch.refused] == [(1, "input moderation", "sexual")]
    assert batch.prompt_indices == [0, 0, 2, 2, 3, 3, 4, 4]
    assert all(text.startswith(prompts[i]) for text, i in zip(batch.texts, batch.prompt_indices, strict=True))
    # the batch holding the first prompt is decoded with the seed itself: the same as asking for it alone
    assert batch.texts[:2] == single.texts
    assert all(n["moderation"]["prompt"] == [] for n in batch.notes)


def test_stream_yields_the_moderated_text_piece_by_piece(tiny_run):
    import muselab

    run = muselab.load(tiny_run, device="cpu")
    pieces = list(run.stream("The shit ", max_new_tokens=30, seed=5))
    whole = run.generate("The shit ", max_new_tokens=30, seed=5, stream=False)
    assert len(pieces) > 1 and "".join(pieces) == whole.texts[0] and "shit" not in "".join(pieces)
    assert isinstance(whole, muselab.TextResult) and list(whole) == whole.texts
