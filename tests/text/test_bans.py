"""Decode-time bans: with a character or a BPE tokenizer, a model that wants to write a banned word as a
whole word cannot, while innocent words that contain it are untouched."""

import random
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from muselab.core.errors import ControlError
from muselab.text.bans import BannedWordsProcessor, build_ban_processor
from muselab.text.tokenizers import Tokenizer, train_tokenizer

CORPUS = ("The zorbleflax sat. Zorbleflax! ZORBLEFLAX, zorbleflax's hat; a zorbleflaxing day. "
          "The class of assassins sat on an ass, a bass and a glass.\n") * 40


def whole_word(word: str) -> re.Pattern[str]:
    """`word` between two non-letters: what the processor promises never to let the model finish."""
    return re.compile(rf"(?<![^\W_]){re.escape(word)}(?=[\W_])", re.IGNORECASE)


@pytest.fixture(scope="module", params=["char", "bpe"])
def tokenizer(request) -> Tokenizer:
    return train_tokenizer(request.param, CORPUS, 300)


def greedy(tokenizer: Tokenizer, processor, prompt: str, wanted: str, steps: int = 60) -> str:
    """Greedy decoding of a fake model that always prefers the token continuing `wanted` (longest first),
    then a space; `<unk>` is never chosen. Returns the generated text after the prompt."""
    strings = [tokenizer.decode([i]) for i in range(tokenizer.vocab_size)]
    ids = tokenizer.encode(prompt, strict=False)
    start = len(ids)
    for _ in range(steps):
        done = tokenizer.decode(ids[start:])
        rest = wanted[len(done):] if wanted.startswith(done) else ""
        scores = torch.zeros(1, tokenizer.vocab_size)
        for i, s in enumerate(strings):
            if not s:
                scores[0, i] = -1e9
            elif rest and rest.startswith(s):
                scores[0, i] = 10.0 + len(s)
            elif s == " ":
                scores[0, i] = 5.0
        scores = processor(torch.tensor([ids]), scores)
        if torch.isneginf(scores).all():
            break
        ids.append(int(scores.argmax()))
    return tokenizer.decode(ids[start:])


@pytest.mark.parametrize("wanted", ["zorbleflax sat on a hat. ", "Zorbleflax! ", "ZORBLEFLAX, the class ",
                                    "zorbleflax's hat ", "zorbleflax\n"])
def test_a_model_that_wants_the_word_cannot_finish_it(tokenizer, wanted: str) -> None:
    processor = build_ban_processor(["zorbleflax"], tokenizer)
    out = greedy(tokenizer, processor, "The ", wanted)
    assert whole_word("zorbleflax").search(out) is None, out
    # without the ban the same model writes it
    assert greedy(tokenizer, lambda ids, s: s, "The ", wanted).startswith(wanted)


def test_a_prompt_that_starts_the_word_is_not_finished(tokenizer) -> None:
    processor = build_ban_processor(["zorbleflax"], tokenizer)
    out = greedy(tokenizer, processor, "The zorble", "flax sat. ")
    assert whole_word("zorbleflax").search("The zorble" + out) is None, out


@pytest.mark.parametrize("wanted", ["class of assassins sat on a bass and a glass. ", "zorbleflaxing day. "])
def test_innocent_words_containing_a_banned_one_are_untouched(tokenizer, wanted: str) -> None:
    processor = build_ban_processor(["ass", "zorbleflax"], tokenizer)
    assert greedy(tokenizer, processor, "The ", wanted).startswith(wanted)


def test_the_banned_word_itself_is_blocked_among_innocent_ones(tokenizer) -> None:
    processor = build_ban_processor(["ass"], tokenizer)
    out = greedy(tokenizer, processor, "The ", "class sat on an ass. ")
    assert out.startswith("class sat on an ass")
    assert whole_word("ass").search(out) is None, out


def test_scores_are_untouched_when_no_match_is_live() -> None:
    tokenizer = train_tokenizer("char", CORPUS)
    processor = build_ban_processor(["zorbleflax"], tokenizer)
    scores = torch.randn(2, tokenizer.vocab_size)
    ids = torch.tensor([tokenizer.encode("The cla"), tokenizer.encode("a glass")])
    assert processor(ids, scores) is scores
    # a live partial match bans exactly the boundary characters after the complete word
    ids = torch.tensor([tokenizer.encode("a zorbleflax"), tokenizer.encode("The classy h")])
    out = processor(ids, scores)
    banned = {tokenizer.decode([i]) for i in torch.isneginf(out[0]).nonzero().flatten().tolist()}
    assert banned == {c for c in tokenizer.chars if not c.isalnum()}
    assert torch.equal(out[1], scores[1]) and not torch.isneginf(scores).any()


def test_eos_is_banned_right_after_a_banned_word() -> None:
    tokenizer = train_tokenizer("char", CORPUS)
    eos = tokenizer.encode("~", strict=False)[0]  # any id stands in for EOS here
    processor = build_ban_processor(["zorbleflax"], tokenizer, eos_id=eos)
    scores = torch.zeros(1, tokenizer.vocab_size)
    assert torch.isneginf(processor(torch.tensor([tokenizer.encode("a zorbleflax")]), scores)[0, eos])
    assert not torch.isneginf(processor(torch.tensor([tokenizer.encode("a zorbleflaxi")]), scores)[0, eos])


class ListTokenizer:
    """A tokenizer given as a list of token strings, for vocabularies BPE's pre-tokenizer never makes."""

    kind = "list"

    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.vocab_size = len(tokens)

    def decode(self, ids) -> str:
        return "".join(self.tokens[i] for i in ids)


def test_a_token_holding_the_whole_word_between_boundaries_is_always_banned() -> None:
    tokenizer = ListTokenizer(["a", " ", "sat", " sat.", "x sat", "class", "sat.", "x, sat!"])
    processor = build_ban_processor(["sat"], tokenizer)
    scores = torch.zeros(2, tokenizer.vocab_size)
    ids = torch.tensor([[5, 5], [1, 1]])  # "classclass" (no live match), "  " (a boundary before)
    out = processor(ids, scores)
    assert torch.isneginf(out).tolist() == [
        [False, False, False, True, False, False, False, True],  # " sat." and "x, sat!" hold it whole
        [False, False, False, True, False, False, True, True],  # after a space "sat." completes it too
    ]


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), kind=st.sampled_from(["char", "bpe"]))
def test_random_models_never_write_the_banned_word(seed: int, kind: str) -> None:
    """Whatever a model prefers, no sampled text holds the banned word as a whole word."""
    tokenizer = _tiny_tokenizers()[kind]
    processor = build_ban_processor(["ab"], tokenizer)
    gen = torch.Generator().manual_seed(seed)
    ids = tokenizer.encode(random.Random(seed).choice(["a", "b", " ", "ba ", "a"]), strict=False)
    for _ in range(60):
        scores = processor(torch.tensor([ids]), torch.randn(1, tokenizer.vocab_size, generator=gen) * 3)
        if torch.isneginf(scores).all():
            break
        ids.append(int(torch.multinomial(scores.softmax(-1), 1, generator=gen)))
    assert whole_word("ab").search(tokenizer.decode(ids)) is None


_TINY: dict[str, Tokenizer] = {}


def _tiny_tokenizers() -> dict[str, Tokenizer]:
    if not _TINY:
        text = " ".join(random.Random(0).choice(["ab", "ba", "aab", "abb", "b", "a", "ab.", "ab,"])
                        for _ in range(3000))
        _TINY["char"] = train_tokenizer("char", text)
        _TINY["bpe"] = train_tokenizer("bpe", text, 300)
    return _TINY


def test_trim_trailing_cuts_only_a_whole_banned_word_at_the_end() -> None:
    processor = build_ban_processor(["zorbleflax"], train_tokenizer("char", CORPUS))
    assert processor.trim_trailing("the ZorbleFlax") == "the "
    assert processor.trim_trailing("zorbleflax") == ""
    assert processor.trim_trailing("the xzorbleflax") == "the xzorbleflax"
    assert processor.trim_trailing("zorbleflax sat") == "zorbleflax sat"


@pytest.mark.parametrize("words, expected", [([""], "empty"), (["  "], "empty"), (["-ab"], "start and end")])
def test_bad_words_are_refused_in_one_line(words, expected: str) -> None:
    with pytest.raises(ControlError) as err:
        build_ban_processor(words, train_tokenizer("char", CORPUS))
    msg = str(err.value)
    assert expected in msg and "\n" not in msg


def test_an_empty_list_bans_nothing() -> None:
    tokenizer = train_tokenizer("char", CORPUS)
    processor = BannedWordsProcessor([], tokenizer)
    scores = torch.randn(1, tokenizer.vocab_size)
    assert processor(torch.tensor([tokenizer.encode("The ")]), scores) is scores


@pytest.mark.slow
def test_a_trained_model_never_writes_the_banned_word(tmp_path) -> None:
    """End to end: a tiny text-lm trained on text full of 'zorbleflax' writes it without the ban and
    never with it, through the real sampling loop and processor chain."""
    from muselab import api
    from muselab.text.controls import TextGenerationControls
    from muselab.text.decoding import LogitsProcessorList, build_processors, generate_tokens

    rng = random.Random(0)
    others = "the a big small sings runs over under".split()
    lines = [" ".join(rng.choice(["zorbleflax", "zorbleflax", rng.choice(others)]) for _ in range(6)) + "."
             for _ in range(300)]
    data = tmp_path / "corpus.txt"
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    api.train("text-lm", str(data), tmp_path / "run", preset="tiny", quiet=True, max_steps=150,
              overrides={"train": {"eval_every": 0, "checkpoint_every": 0, "lr": 1e-2},
                         "eval": {"num_samples": 2, "sample_tokens": 8}})
    run = api.load(tmp_path / "run")
    tokenizer = run.assets["tokenizer"]
    controls = TextGenerationControls(max_new_tokens=80, temperature=1.0, num_samples=8, seed=0)

    ban = build_ban_processor(["zorbleflax"], tokenizer)

    def sample(processors: list) -> list[str]:
        prompt = torch.tensor([tokenizer.encode("\n")] * controls.num_samples)
        rows = generate_tokens(run.model.cached_step(controls.num_samples), prompt, controls,
                               generator=torch.Generator().manual_seed(0),
                               processors=LogitsProcessorList([*processors, *build_processors(controls)]))
        # a sample cut by max_new_tokens right after the word is the one case left to trim_trailing
        return [ban.trim_trailing(tokenizer.decode(row)) for row in rows]

    anywhere = re.compile(r"(?<![^\W_])zorbleflax(?![^\W_])", re.IGNORECASE)  # end of text counts too
    assert sum(len(anywhere.findall(text)) for text in sample([])) >= 5
    banned = sample([ban])
    assert all(anywhere.search(text) is None for text in banned), banned
    assert sum(text.lower().count("zorbleflax") for text in banned) >= 5  # it still writes the letters on
