"""Logits processors, the sampling loop and stop strings, driven by toy step functions instead of a model."""

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from muselab.core.errors import ControlError
from muselab.text.controls import TextGenerationControls
from muselab.text.decoding import (
    LogitsProcessor,
    LogitsProcessorList,
    MinPWarper,
    NoRepeatNGramProcessor,
    RepetitionPenaltyProcessor,
    StopStrings,
    TemperatureWarper,
    TopKWarper,
    TopPWarper,
    build_processors,
    generate_tokens,
)

INF = math.inf
FAST = settings(max_examples=60, deadline=None)


class Bigram:
    """Toy language model: next-token logits depend on the last token only. Records the shapes it is fed."""

    def __init__(self, vocab: int, seed: int = 0, sharpness: float = 3.0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.table = torch.randn(vocab, vocab, generator=g) * sharpness
        self.shapes: list[tuple[int, ...]] = []

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(ids.shape))
        return self.table[ids[:, -1]]


class Uniform:
    def __init__(self, vocab: int) -> None:
        self.vocab = vocab

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.zeros(ids.shape[0], self.vocab)


class Scripted:
    """Emits a fixed token sequence per row (then token 0 forever) through near-one-hot logits."""

    def __init__(self, scripts: list[list[int]], vocab: int) -> None:
        self.scripts, self.vocab, self.calls = scripts, vocab, 0
        self.fed: list[list[int]] = []

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        if self.calls:
            self.fed.append(ids[:, -1].tolist())
        logits = torch.zeros(len(self.scripts), self.vocab)
        for row, script in enumerate(self.scripts):
            logits[row, script[self.calls] if self.calls < len(script) else 0] = 50.0
        self.calls += 1
        return logits


def controls(**kwargs) -> TextGenerationControls:
    return TextGenerationControls(**kwargs)


def finite_count(row: torch.Tensor) -> int:
    return int(torch.isfinite(row).sum())


# Hypothesis strategies: a batch of score rows over a small vocabulary, finite values only.
score_values = st.floats(-20, 20, allow_nan=False, allow_infinity=False, width=32)


@st.composite
def score_rows(draw, min_vocab: int = 2, max_vocab: int = 24, unique: bool = False):
    vocab = draw(st.integers(min_vocab, max_vocab))
    batch = draw(st.integers(1, 3))
    rows = [draw(st.lists(score_values, min_size=vocab, max_size=vocab, unique=unique)) for _ in range(batch)]
    return torch.tensor(rows, dtype=torch.float32)


# ---------------------------------------------------------------- processors, hand-computed


def test_repetition_penalty_divides_positive_and_multiplies_negative_seen_scores():
    scores = torch.tensor([[2.0, -1.0, 0.5, 3.0], [2.0, -1.0, 0.5, 3.0]])
    ids = torch.tensor([[0, 1, 1], [3, 3, 3]])
    out = RepetitionPenaltyProcessor(2.0)(ids, scores)
    assert torch.equal(out, torch.tensor([[1.0, -2.0, 0.5, 3.0], [2.0, -1.0, 0.5, 1.5]]))
    assert scores[0, 0] == 2.0  # the caller's logits are untouched


def test_repetition_penalty_keeps_banned_tokens_banned_and_never_overflows():
    scores = torch.tensor([[-INF, 3e38, -3e38, 1.0]])
    out = RepetitionPenaltyProcessor(1e-3)(torch.tensor([[0, 1]]), scores)
    assert out[0, 0] == -INF and torch.isfinite(out[0, 1:]).all()
    out = RepetitionPenaltyProcessor(1e3)(torch.tensor([[2]]), scores)
    assert torch.isfinite(out[0, 2])


def test_no_repeat_ngram_bans_completions_of_seen_ngrams():
    ids = torch.tensor([[1, 2, 3, 1, 2], [4, 4, 4, 4, 4]])
    scores = torch.zeros(2, 6)
    out3 = NoRepeatNGramProcessor(3)(ids, scores)
    # Row 0: prefix (1, 2) was followed by 3. Row 1: prefix (4, 4) was followed by 4.
    assert torch.isneginf(out3).nonzero().tolist() == [[0, 3], [1, 4]]
    out2 = NoRepeatNGramProcessor(2)(ids, scores)
    assert torch.isneginf(out2).nonzero().tolist() == [[0, 3], [1, 4]]
    out1 = NoRepeatNGramProcessor(1)(ids, scores)
    assert torch.isneginf(out1).nonzero().tolist() == [[0, 1], [0, 2], [0, 3], [1, 4]]
    assert NoRepeatNGramProcessor(6)(ids, scores) is scores  # too short for any 6-gram


def test_no_repeat_ngram_leaves_a_row_alone_when_every_token_would_be_banned():
    scores = torch.tensor([[0.5, 0.25], [0.5, 0.25]])
    out = NoRepeatNGramProcessor(1)(torch.tensor([[0, 1], [0, 0]]), scores)
    assert torch.equal(out[0], scores[0])
    assert out[1].tolist() == [-INF, 0.25]


def test_temperature_scales_scores_and_keeps_the_distribution_shape():
    scores = torch.tensor([[1.0, 2.0, 3.0]])
    out = TemperatureWarper(0.5)(None, scores)
    assert torch.allclose(out, torch.tensor([[-4.0, -2.0, 0.0]]))
    assert torch.allclose(out.softmax(-1), (scores / 0.5).softmax(-1))
    # A tiny temperature approaches greedy instead of overflowing, and -inf rows stay -inf (not NaN).
    tiny = TemperatureWarper(1e-40)(None, torch.tensor([[1.0, 2.0], [-INF, -INF]]))
    assert tiny[0].tolist() == [-INF, 0.0] and torch.isneginf(tiny[1]).all()


def test_top_k_keeps_the_k_best_and_ties_with_the_kth():
    out = TopKWarper(2)(None, torch.tensor([[1.0, 5.0, 3.0, 4.0], [1.0, 2.0, 2.0, 0.0]]))
    assert out.tolist() == [[-INF, 5.0, -INF, 4.0], [-INF, 2.0, 2.0, -INF]]
    scores = torch.tensor([[1.0, 2.0]])
    assert torch.equal(TopKWarper(10)(None, scores), scores)


@pytest.mark.parametrize(
    ("p", "kept"), [(0.3, [0]), (0.5, [0]), (0.75, [0, 1]), (0.85, [0, 1, 2]), (1.0, [0, 1, 2])]
)
def test_top_p_keeps_the_smallest_nucleus(p, kept):
    scores = torch.tensor([[0.5, 0.3, 0.2]]).log()
    out = TopPWarper(p)(None, scores)
    assert torch.isfinite(out[0]).nonzero().flatten().tolist() == kept


def test_min_p_drops_tokens_below_the_fraction_of_the_best():
    scores = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    out = MinPWarper(0.2)(None, scores)  # threshold 0.2 * 0.5 = 0.1
    assert torch.isfinite(out[0]).tolist() == [True, True, True, False]
    assert torch.equal(out[0, :3], scores[0, :3])


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: TemperatureWarper(0), "--temperature"),
        (lambda: TopKWarper(0), "--top-k"),
        (lambda: TopPWarper(1.5), "--top-p"),
        (lambda: MinPWarper(1.0), "--min-p"),
        (lambda: RepetitionPenaltyProcessor(0.0), "--repetition-penalty"),
        (lambda: NoRepeatNGramProcessor(0), "--no-repeat-ngram-size"),
    ],
)
def test_processors_reject_values_outside_their_range(make, message):
    with pytest.raises(ControlError, match=message):
        make()


# ---------------------------------------------------------------- processors, properties


@FAST
@given(score_rows(unique=True), st.integers(1, 30))
def test_top_k_keeps_exactly_k_without_ties(scores, k):
    out = TopKWarper(k)(None, scores)
    for row_in, row_out in zip(scores, out, strict=True):
        assert finite_count(row_out) == min(k, scores.shape[1])
        kept = row_in[torch.isfinite(row_out)]
        dropped = row_in[~torch.isfinite(row_out)]
        assert dropped.numel() == 0 or kept.min() > dropped.max()


@FAST
@given(score_rows(), st.floats(0.01, 0.99))
def test_top_p_kept_mass_reaches_p_and_is_minimal(scores, p):
    out = TopPWarper(p)(None, scores)
    for row_in, row_out in zip(scores.double(), out, strict=True):
        probs = row_in.softmax(-1)
        keep = torch.isfinite(row_out)
        kept_probs = probs[keep]
        assert kept_probs.sum() >= p - 1e-5
        # Minimal: dropping the least likely kept token falls short of p, and only the likeliest are kept.
        assert kept_probs.sum() - kept_probs.min() < p + 1e-5
        if (~keep).any():
            assert kept_probs.min() >= probs[~keep].max() - 1e-7


@FAST
@given(score_rows(), st.floats(0.001, 0.999))
def test_min_p_keeps_exactly_the_tokens_near_the_best(scores, p):
    out = MinPWarper(p)(None, scores)
    for row_in, row_out in zip(scores.double(), out, strict=True):
        ratio = (row_in - row_in.max()).exp()  # prob / max prob
        assume(((ratio - p).abs() > 1e-5).all())  # float32 rounding decides exact ties either way
        assert torch.equal(torch.isfinite(row_out), ratio >= p)


@st.composite
def processor_chains(draw):
    chain = LogitsProcessorList()
    if draw(st.booleans()):
        chain.append(RepetitionPenaltyProcessor(draw(st.floats(0.01, 100))))
    if draw(st.booleans()):
        chain.append(NoRepeatNGramProcessor(draw(st.integers(1, 3))))
    if draw(st.booleans()):
        chain.append(TemperatureWarper(draw(st.floats(1e-30, 10))))
    if draw(st.booleans()):
        chain.append(TopKWarper(draw(st.integers(1, 5))))
    if draw(st.booleans()):
        chain.append(TopPWarper(draw(st.floats(0.01, 1.0))))
    if draw(st.booleans()):
        chain.append(MinPWarper(draw(st.floats(0.0, 0.99))))
    return draw(st.permutations(chain))


@settings(max_examples=120, deadline=None)
@given(score_rows(max_vocab=6), processor_chains(), st.data())
def test_processors_never_empty_a_row(scores, chain, data):
    batch, vocab = scores.shape
    # Ban some tokens up front (as a banned-word processor would) but leave each row at least one.
    banned = torch.tensor(
        data.draw(
            st.lists(st.lists(st.booleans(), min_size=vocab, max_size=vocab), min_size=batch, max_size=batch)
        )
    )
    banned[:, 0] &= ~banned.all(-1)
    scores = scores.masked_fill(banned, -INF)
    length = data.draw(st.integers(1, 12))
    ids = torch.tensor(
        data.draw(
            st.lists(
                st.lists(st.integers(0, vocab - 1), min_size=length, max_size=length),
                min_size=batch,
                max_size=batch,
            )
        )
    )
    out = LogitsProcessorList(chain)(ids, scores)
    assert not torch.isnan(out).any()
    assert (out > -INF).any(-1).all()
    assert not torch.isposinf(out).any()


def _ngrams(tokens: list[int], n: int) -> list[tuple[int, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


@FAST
@given(st.lists(st.integers(0, 4), min_size=1, max_size=40), st.integers(1, 4))
def test_no_repeat_ngram_matches_a_brute_force_reference(tokens, n):
    out = NoRepeatNGramProcessor(n)(torch.tensor([tokens]), torch.zeros(1, 5))
    prefix = tuple(tokens[len(tokens) - n + 1 :]) if n > 1 else ()
    seen = set(_ngrams(tokens, n))
    expected = {t for t in range(5) if prefix + (t,) in seen} if len(tokens) >= n else set()
    if len(expected) == 5:
        expected = set()  # nothing left to sample: the row is left alone
    assert set(torch.isneginf(out[0]).nonzero().flatten().tolist()) == expected


@pytest.mark.parametrize("n", [1, 2, 3])
def test_no_repeat_ngram_holds_over_a_long_sampled_run(n):
    # A peaked bigram table repeats itself quickly unless the processor stops it; 5 + 50 tokens out of 64
    # can never use up every continuation of a prefix, so the ban is always satisfiable.
    step = Bigram(64, seed=n, sharpness=6.0)
    prompt = torch.randint(0, 64, (3, 5), generator=torch.Generator().manual_seed(n))
    free = generate_tokens(
        step, prompt, controls(max_new_tokens=50, temperature=1.0), generator=torch.Generator().manual_seed(0)
    )
    assert any(
        len(set(_ngrams(p + g, n))) < len(_ngrams(p + g, n))
        for p, g in zip(prompt.tolist(), free, strict=True)
    )
    rows = generate_tokens(
        step,
        prompt,
        controls(max_new_tokens=50, temperature=1.0, no_repeat_ngram_size=n),
        generator=torch.Generator().manual_seed(0),
    )
    for prompt_row, row in zip(prompt.tolist(), rows, strict=True):
        assert len(row) == 50
        grams = _ngrams(prompt_row + row, n)
        # The prompt may repeat itself; no n-gram ending in a generated token may repeat an earlier one.
        for i in range(len(grams)):
            if i + n - 1 >= len(prompt_row):
                assert grams[i] not in grams[:i]


def test_no_repeat_ngram_on_long_histories():
    ids = torch.randint(0, 50, (4, 2000), generator=torch.Generator().manual_seed(1))
    scores = torch.zeros(4, 50)
    out = NoRepeatNGramProcessor(3)(ids, scores)
    for row in range(4):
        tokens = ids[row].tolist()
        expected = {g[2] for g in _ngrams(tokens, 3) if g[:2] == tuple(tokens[-2:])}
        assert set(torch.isneginf(out[row]).nonzero().flatten().tolist()) == expected


# ---------------------------------------------------------------- build_processors


def test_build_processors_orders_the_chain_and_skips_what_is_off():
    assert build_processors(controls(temperature=1.0)) == []
    chain = build_processors(
        controls(
            repetition_penalty=1.3, no_repeat_ngram_size=3, temperature=0.7, top_k=40, top_p=0.9, min_p=0.05
        )
    )
    assert [type(p) for p in chain] == [
        RepetitionPenaltyProcessor,
        NoRepeatNGramProcessor,
        TemperatureWarper,
        TopKWarper,
        TopPWarper,
        MinPWarper,
    ]
    greedy = build_processors(controls(temperature=0, repetition_penalty=1.3, top_k=40, top_p=0.9))
    assert [type(p) for p in greedy] == [RepetitionPenaltyProcessor]
    assert isinstance(chain, list)


# ---------------------------------------------------------------- the sampling loop


def test_greedy_equals_argmax_of_the_penalised_scores():
    step = Bigram(12, seed=3)
    prompt = torch.tensor([[1, 2], [5, 5]])
    rows = generate_tokens(step, prompt, controls(max_new_tokens=15, temperature=0))
    for prompt_row, row in zip(prompt.tolist(), rows, strict=True):
        last = prompt_row[-1]
        for token in row:
            assert token == int(step.table[last].argmax())
            last = token
    # With a penalty, each choice is the argmax after penalising everything seen so far.
    penalty = RepetitionPenaltyProcessor(3.0)
    rows = generate_tokens(step, prompt, controls(max_new_tokens=15, temperature=0, repetition_penalty=3.0))
    for prompt_row, row in zip(prompt.tolist(), rows, strict=True):
        seen = list(prompt_row)
        for token in row:
            expected = penalty(torch.tensor([seen]), step.table[seen[-1]][None]).argmax()
            assert token == int(expected)
            seen.append(token)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32), st.integers(2, 30))
def test_temperature_zero_is_argmax_for_any_table(seed, vocab):
    step = Bigram(vocab, seed=seed)
    rows = generate_tokens(step, torch.tensor([[0]]), controls(max_new_tokens=8, temperature=0))
    last = 0
    for token in rows[0]:
        assert token == int(step.table[last].argmax())
        last = token


def test_first_step_gets_the_prompt_then_one_token_at_a_time():
    step = Bigram(10)
    rows = generate_tokens(step, torch.tensor([[1, 2, 3], [4, 5, 6]]), controls(max_new_tokens=5))
    assert step.shapes == [(2, 3)] + [(2, 1)] * 4  # the last token is never fed back
    assert [len(r) for r in rows] == [5, 5]


def test_same_seed_same_tokens_different_seed_different_tokens():
    prompt = torch.zeros(4, 1, dtype=torch.long)
    opts = controls(max_new_tokens=30, temperature=1.0)

    def run(seed: int) -> list[list[int]]:
        return generate_tokens(Uniform(1000), prompt, opts, generator=torch.Generator().manual_seed(seed))

    assert run(11) == run(11)
    assert run(11) != run(12)
    # The seed control alone gives the same reproducibility when no generator is passed.
    by_control = generate_tokens(Uniform(1000), prompt, controls(max_new_tokens=30, temperature=1.0, seed=11))
    assert by_control == run(11)


def test_sampling_follows_the_filtered_distribution():
    # top-k 2 on a uniform model: only tokens 0 and 1 survive the tie-free ranking below.
    class Ranked:
        def __call__(self, ids):
            return torch.arange(10, 0, -1, dtype=torch.float32).expand(ids.shape[0], 10)

    rows = generate_tokens(
        Ranked(),
        torch.zeros(8, 1, dtype=torch.long),
        controls(max_new_tokens=20, top_k=2),
        generator=torch.Generator().manual_seed(0),
    )
    tokens = {t for row in rows for t in row}
    assert tokens == {0, 1}


def test_eos_ends_rows_at_different_times_and_is_excluded():
    eos = 9
    step = Scripted([[1, 2, eos], [3, 4, 5, 6, eos], [7, 7, 7, 7, 7, 7, 7, 7]], vocab=10)
    seen: list[list[int]] = []
    rows = generate_tokens(
        step,
        torch.zeros(3, 2, dtype=torch.long),
        controls(max_new_tokens=6, temperature=0),
        eos_id=eos,
        on_tokens=lambda t: seen.append(t.tolist()),
    )
    assert rows == [[1, 2], [3, 4, 5, 6], [7] * 6]
    # Finished rows are fed the filler (eos) while the others go on; eos shows once on the step it is picked.
    assert seen[2] == [eos, 5, 7] and seen[3] == [eos, 6, 7] and seen[4] == [eos, eos, 7]
    assert step.fed == seen[:-1]


def test_loop_stops_as_soon_as_every_row_is_done():
    step = Scripted([[1, 9], [9]], vocab=10)
    rows = generate_tokens(step, torch.zeros(2, 1, dtype=torch.long), controls(max_new_tokens=100), eos_id=9)
    assert rows == [[1], []]
    assert step.calls == 2


def test_a_row_with_no_allowed_token_ends_instead_of_failing():
    class BanRowsStartingWithOne(LogitsProcessor):
        def __call__(self, input_ids, scores):
            return scores.masked_fill(input_ids[:, :1] == 1, -INF)

    prompt = torch.tensor([[1], [0]])
    rows = generate_tokens(
        Uniform(5),
        prompt,
        controls(max_new_tokens=4),
        processors=LogitsProcessorList([BanRowsStartingWithOne()]),
        generator=torch.Generator().manual_seed(0),
    )
    assert rows[0] == [] and len(rows[1]) == 4


def test_loop_rejects_bad_inputs():
    with pytest.raises(ValueError, match="prompt_ids"):
        generate_tokens(Uniform(5), torch.zeros(2, 0, dtype=torch.long), controls())
    with pytest.raises(ValueError, match="stop_criteria"):
        generate_tokens(Uniform(5), torch.zeros(1, 1, dtype=torch.long), controls(stop=["x"]))
    with pytest.raises(ValueError, match="logits"):
        generate_tokens(lambda ids: torch.zeros(1, 3, 5), torch.zeros(1, 1, dtype=torch.long), controls())


# ---------------------------------------------------------------- stop strings

VOCAB = ["<eos>", "Hel", "lo", " wor", "ld", "\n", "!", "", "a", "b"]


def decode(ids: list[int]) -> str:
    return "".join(VOCAB[i] for i in ids)


def test_stop_string_split_across_two_tokens_ends_the_row():
    # "\n\n" arrives as two tokens; "lo w" spans "lo" and " wor".
    step = Scripted([[1, 2, 5, 5, 8, 8], [1, 2, 3, 4, 6, 6], [8, 9, 8, 9, 8, 9]], vocab=len(VOCAB))
    stops = StopStrings(["\n\n", "lo w"], decode)
    rows = generate_tokens(
        step,
        torch.zeros(3, 1, dtype=torch.long),
        controls(max_new_tokens=6, temperature=0, stop=["\n\n", "lo w"]),
        stop_criteria=stops,
        eos_id=0,
    )
    assert rows[0] == [1, 2, 5, 5] and rows[1] == [1, 2, 3] and rows[2] == [8, 9, 8, 9, 8, 9]
    assert [stops.truncate(decode(r)) for r in rows] == ["Hello", "Hel", "ababab"]


def test_stop_strings_see_past_tokens_that_decode_to_nothing():
    stops = StopStrings(["ab!"], decode)
    row: list[int] = []
    hits = []
    for token in [8, 9, 7, 7, 7, 7, 7, 6]:  # "a", "b", five empty tokens, "!"
        row.append(token)
        hits.append(stops.update([row])[0])
    assert hits == [False] * 7 + [True]


def test_stop_strings_update_only_rows_with_new_tokens_and_remember_hits():
    calls: list[int] = []

    def counting_decode(ids: list[int]) -> str:
        calls.append(len(ids))
        return decode(ids)

    stops = StopStrings(["!"], counting_decode)
    assert stops.update([[8], [6]]) == [False, True]
    calls.clear()
    assert stops.update([[8, 9], [6, 8]]) == [False, True]
    assert max(calls) <= 3  # only a short tail of the first row was decoded
    stops.reset()
    assert stops.update([[8]]) == [False]


def test_stop_strings_check_a_short_window_on_long_rows():
    lengths: list[int] = []

    def counting_decode(ids: list[int]) -> str:
        lengths.append(len(ids))
        return decode(ids)

    stops = StopStrings(["\n\n"], counting_decode)
    row: list[int] = []
    for token in [8, 9] * 500:
        row.append(token)
        stops.update([row])
    assert max(lengths) <= 4


def test_truncate_cuts_before_the_earliest_stop_string():
    stops = StopStrings(["END", "\n\n"], decode)
    assert stops.truncate("one\n\ntwo END") == "one"
    assert stops.truncate("one END\n\n") == "one "
    assert stops.truncate("nothing here") == "nothing here"
    assert StopStrings([], decode).truncate("x") == "x"
    assert StopStrings([], decode).update([[1, 2]]) == [False]


def test_empty_stop_string_is_rejected():
    with pytest.raises(ControlError, match="--stop"):
        StopStrings([""], decode)
