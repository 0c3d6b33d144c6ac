"""The safety commands and the safety path of `muselab generate`, through the real command line."""

import json

import pytest

from conftest import run_cli
from helpers import write
from muselab import api

VERDICT_KEYS = {"allowed", "categories", "matches", "redacted", "warnings"}


@pytest.fixture(scope="module")
def pairs_run(tmp_path_factory):
    """A tiny seq2seq run on a few word -> phoneme pairs."""
    words = ["cat", "hat", "bat", "sat", "mat", "cot", "hot", "bot", "pot", "tot"]
    rows = [f"{w}{'s' * n}\t{' '.join(w.upper())}{' Z' * n}\n" for w in words for n in range(4)]
    data = write(tmp_path_factory.mktemp("pairs") / "pairs.tsv", "".join(rows * 3))
    out = tmp_path_factory.mktemp("runs") / "pairs"
    api.train("text-seq2seq", str(data), out, preset="tiny", max_steps=5, quiet=True)
    return out


def test_help_lists_the_safety_commands():
    result = run_cli("--help")
    assert "moderate" in result.stdout and "detect" in result.stdout


def test_moderate_exit_codes_and_verdict(tmp_path):
    clean = run_cli("moderate", "A quiet walk by the river.")
    assert clean.returncode == 0 and json.loads(clean.stdout)["allowed"] is True
    assert set(json.loads(clean.stdout)) == VERDICT_KEYS
    blocked = run_cli("moderate", "they watched p.o.r.n all night")
    verdict = json.loads(blocked.stdout)
    assert blocked.returncode == 1 and verdict["allowed"] is False and verdict["categories"] == ["sexual"]
    text = write(tmp_path / "t.txt", "Well, shit.\nMail ann@example.com\n")
    from_file = run_cli("moderate", "--file", str(text))
    verdict = json.loads(from_file.stdout)
    assert from_file.returncode == 0 and verdict["redacted"] == "Well, ****.\nMail [email]\n"


def test_moderate_with_a_policy_that_changes_an_action(tmp_path):
    policy = write(tmp_path / "p.toml", '[categories.profanity]\naction = "block"\n')
    result = run_cli("moderate", "Well, shit.", "--policy", str(policy))
    assert result.returncode == 1 and json.loads(result.stdout)["allowed"] is False


def test_moderate_usage_errors_are_one_line(tmp_path):
    for args in (("moderate",), ("moderate", "--file", str(tmp_path / "missing.txt"))):
        result = run_cli(*args)
        assert result.returncode == 2 and result.stdout == "" and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_detect_finds_the_manifest_of_generated_text(tiny_run, tmp_path):
    out = tmp_path / "out"
    assert run_cli("generate", str(tiny_run), "--max-new-tokens", "10", "--seed", "1", "--out", str(out)).returncode == 0
    sample = out / "sample_000.txt"
    other = write(tmp_path / "notes.txt", "my own words\n")
    result = run_cli("detect", str(sample), str(other))
    assert result.returncode == 0
    found, plain = (json.loads(line) for line in result.stdout.splitlines())
    assert found["watermark"] is False and found["manifest"]["ai_generated"] is True
    assert found["manifest"]["moderation"]["policy"] == "default" and found["manifest"]["memorization"]["checked"]
    assert plain["manifest"] is None and "confidence" in plain


def test_detect_reports_a_missing_file_and_goes_on(tmp_path):
    other = write(tmp_path / "notes.txt", "my own words\n")
    result = run_cli("detect", str(tmp_path / "missing.png"), str(other))
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert result.returncode == 2 and "error" in lines[0] and lines[1]["manifest"] is None


def test_generate_with_a_blocked_prompt_writes_nothing(tiny_run, tmp_path):
    out = tmp_path / "out"
    result = run_cli("generate", str(tiny_run), "--prompt", "The porn", "--out", str(out))
    assert result.returncode == 2 and not out.exists()
    assert len(result.stderr.strip().splitlines()) == 1 and "category: sexual" in result.stderr


@pytest.mark.slow
def test_generate_masks_a_redacted_prompt_and_flags_copies(tiny_run, tmp_path):
    result = run_cli("generate", str(tiny_run), "--prompt", "The shit", "--max-new-tokens", "40", "--seed", "3",
                     "--max-copy-chars", "2")
    assert result.returncode == 0 and result.stdout.startswith("The ****") and "shit" not in result.stdout
    assert "muselab: warning: sample 1 copies" in result.stderr
    out = tmp_path / "s.jsonl"
    assert run_cli("generate", str(tiny_run), "--prompt", "The shit", "--num-samples", "2", "--seed", "3",
                   "--max-copy-chars", "2", "--out", str(out)).returncode == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(line["text"].startswith("The ****") for line in lines)
    assert all(line["manifest"]["memorization"]["flagged"] for line in lines)
    whole = json.loads((tmp_path / "s.jsonl.json").read_text())
    assert whole["memorization"]["flagged_samples"] == 2 and "shit" not in json.dumps(whole)


@pytest.mark.slow
def test_seq2seq_inputs_are_transformed_not_refused(pairs_run, tmp_path):
    """A word to pronounce is not a word said: its verdict is recorded as a warning and it is transduced."""
    run = api.load(pairs_run)
    result = run.generate(["cat", "porn"])
    assert len(result.items) == 2 and not result.refused
    assert result.notes[1]["moderation"]["input"] == [{"category": "sexual", "action": "warn", "count": 1}]
    out = tmp_path / "out.tsv"
    done = run_cli("generate", str(pairs_run), "--input", "shit", "--input", "cat", "--out", str(out))
    assert done.returncode == 0 and out.read_text().startswith("shit\t")
    manifest = json.loads((tmp_path / "out.tsv.json").read_text())
    assert manifest["moderation"]["input"] == [{"category": "profanity", "action": "warn", "count": 1}]


def _policy_words(category: str) -> list[str]:
    from muselab.safety.moderation import load_policy

    return [w.strip("*") for w in load_policy(None).categories[category].words if w.strip("*").isalpha()][:3]


@pytest.mark.slow
def test_every_word_of_a_list_gets_its_line_under_the_default_policy(pairs_run, tmp_path):
    """A pronunciation tool must handle every word of the language: words of every policy category included."""
    words = ["cat", "hat", *_policy_words("profanity"), *_policy_words("sexual"), *_policy_words("violence"), "pot"]
    listing = write(tmp_path / "words.txt", "\n".join(words) + "\n")
    out = tmp_path / "prons.tsv"
    result = run_cli("generate", str(pairs_run), "--input-file", str(listing), "--out", str(out))
    assert result.returncode == 0, result.stderr
    lines = out.read_text().splitlines()
    assert [line.split("\t")[0] for line in lines] == words and all(line.split("\t")[1] for line in lines)
    manifest = json.loads((tmp_path / "prons.tsv.json").read_text())
    assert {e["action"] for e in manifest["moderation"]["input"]} == {"warn"}
    # each word's own verdict: the listed words have one, the plain ones none
    assert [item["index"] for item in manifest["items"]] == list(range(2, len(words) - 1))


@pytest.mark.slow
def test_a_blocking_input_policy_refuses_items_one_by_one(pairs_run, tmp_path):
    policy = write(tmp_path / "strict.toml", '[inputs]\naction = "block"\n')
    # from Python: the allowed items are generated, each refused one is an entry
    run = api.load(pairs_run)
    result = run.generate(["cat", "porn", "hat"], policy=str(policy))
    assert len(result.items) == 2 and [(r.index, r.category) for r in result.refused] == [(1, "sexual")]
    assert result.lines()[1] == "porn\t"
    # the CLI: lines that line up with the inputs, one summary line, exit status 3 (partly refused)
    out = tmp_path / "out.tsv"
    done = run_cli("generate", str(pairs_run), "--input", "cat", "--input", "porn", "--input", "hat",
                   "--policy", str(policy), "--out", str(out))
    assert done.returncode == 3, done.stderr
    assert "1 of 3 items refused (sexual: 1)" in done.stderr
    assert [line.split("\t")[0] for line in out.read_text().splitlines()] == ["cat", "porn", "hat"]
    manifest = json.loads((tmp_path / "out.tsv.json").read_text())
    assert manifest["refused"] == [{"index": 1, "check": "input moderation", "category": "sexual",
                                    "reason": "the input was blocked by the moderation policy"}]
    # all or nothing when a script asks for it; every item refused is an error either way
    failed = run_cli("generate", str(pairs_run), "--input", "cat", "--input", "porn", "--policy", str(policy),
                     "--on-refused", "fail")
    assert failed.returncode == 2 and "category: sexual" in failed.stderr
    assert run_cli("generate", str(pairs_run), "--input", "porn", "--policy", str(policy)).returncode == 2
