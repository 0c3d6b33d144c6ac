"""Batched beam search, driven by toy decoders: fixed tables of next-token logits (and attention) indexed by
the previous token and by each row's input, so exact answers can be computed by hand or by enumeration."""

import itertools
import math

import pytest
import torch

from muselab.text.controls import TextGenerationControls
from muselab.text.decoding import (
    Hypothesis,
    LogitsProcessor,
    LogitsProcessorList,
    beam_search,
    generate_tokens,
)

EOS = 0


class Toy:
    """A Markov decoder: logits = table[prev] + bias[input], attention = attention[input, prev].

    The state is each row's input index, reordered like a real model's state. BOS is id `vocab` (a table
    row, never an output). Records how many rows every step call gets.
    """

    def __init__(
        self,
        table: torch.Tensor,
        bias: torch.Tensor | None = None,
        attention: torch.Tensor | None = None,
    ) -> None:
        self.table, self.bias, self.attention = table, bias, attention
        self.vocab = table.shape[1]
        self.bos = self.vocab
        self.rows: list[int] = []

    @classmethod
    def random(cls, vocab: int, inputs: int = 1, seed: int = 0, sharpness: float = 2.0, **kw) -> "Toy":
        g = torch.Generator().manual_seed(seed)
        table = torch.randn(vocab + 1, vocab, generator=g) * sharpness
        bias = torch.randn(inputs, vocab, generator=g) * sharpness
        return cls(table, bias, **kw)

    def logits(self, prev: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        out = self.table[prev]
        return out if self.bias is None else out + self.bias[inputs]

    def step(self, prev: torch.Tensor, state: torch.Tensor):
        self.rows.append(prev.shape[0])
        attn = None if self.attention is None else self.attention[state, prev]
        return self.logits(prev, state), state, attn

    def search(self, inputs: int = 1, **kw) -> list[list[Hypothesis]]:
        return beam_search(
            self.step, reorder, torch.arange(inputs), inputs, bos_id=self.bos, eos_id=EOS, **kw
        )

    def log_prob(self, tokens: list[int], by_eos: bool = True, index: int = 0) -> float:
        """Summed model log-probability of `tokens` (and the EOS that ends them, if it does)."""
        path = [*tokens, EOS] if by_eos else tokens
        prev = torch.tensor([self.bos, *path[:-1]])
        lp = torch.log_softmax(self.logits(prev, torch.full_like(prev, index)), -1)
        return float(lp[torch.arange(len(path)), torch.tensor(path)].sum())

    def greedy(self, inputs: int, max_len: int) -> list[list[int]]:
        """The module's own greedy loop (temperature 0) over the same table."""

        def lm_step(ids: torch.Tensor) -> torch.Tensor:
            return self.logits(ids[:, -1], torch.arange(ids.shape[0]))

        prompt = torch.full((inputs, 1), self.bos)
        controls = TextGenerationControls(temperature=0, max_new_tokens=max_len)
        return generate_tokens(lm_step, prompt, controls, eos_id=EOS)


def reorder(state: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return state.index_select(0, index)


def probability_table(rows: dict[int, list[float]], vocab: int, bos: int) -> torch.Tensor:
    """Log-probability table from explicit rows (prev -> distribution); unlisted rows are uniform."""
    table = torch.full((bos + 1, vocab), 1.0 / vocab)
    for prev, probs in rows.items():
        table[prev] = torch.tensor(probs)
    return table.log()


def all_sequences(vocab: int, max_len: int) -> list[tuple[list[int], bool]]:
    """Every hypothesis the search can produce: EOS-ended with < max_len tokens, or cut at max_len."""
    words = range(1, vocab)
    out = [(list(s), True) for n in range(max_len) for s in itertools.product(words, repeat=n)]
    return out + [(list(s), False) for s in itertools.product(words, repeat=max_len)]


def gnmt_lp(steps: int, alpha: float) -> float:
    return ((5 + steps) / 6) ** alpha


def has_repeated_ngram(tokens: list[int], n: int) -> bool:
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return len(grams) != len(set(grams))


# ---------------------------------------------------------------- exactness


@pytest.mark.parametrize("seed", range(4))
def test_beam_of_one_is_exactly_greedy_for_every_input_of_a_batch(seed):
    model = Toy.random(vocab=9, inputs=6, seed=seed)
    model.table[:, EOS] += 1.5  # so some rows end by EOS and others run to max_len
    hyps = model.search(6, beam_size=1, max_len=12)
    greedy = model.greedy(6, max_len=12)
    assert [h[0].tokens for h in hyps] == greedy
    for i, (best,) in enumerate(hyps):
        assert best.ended_by_eos == (len(best.tokens) < 12)
        assert best.score == best.log_prob
        assert best.log_prob == pytest.approx(model.log_prob(best.tokens, best.ended_by_eos, i), abs=1e-4)


def test_greedy_comparison_covers_both_endings():
    # The seeds above are only a real check if both kinds of ending occur among them.
    endings = set()
    for seed in range(4):
        model = Toy.random(vocab=9, inputs=6, seed=seed)
        model.table[:, EOS] += 1.5
        endings |= {h[0].ended_by_eos for h in model.search(6, beam_size=1, max_len=12)}
    assert endings == {True, False}


def test_beam_search_beats_myopic_greedy():
    # From BOS, token 1 is likelier than 2, but after 1 nothing is likely; after 2, EOS is almost sure.
    vocab, bos = 4, 4
    table = probability_table(
        {bos: [0.05, 0.55, 0.40, 0.0], 1: [0.30, 0.25, 0.25, 0.20], 2: [0.98, 0.01, 0.01, 0.0]}, vocab, bos
    )
    model = Toy(table)
    (greedy,) = model.search(beam_size=1, max_len=5)[0]
    (best,) = model.search(beam_size=2, max_len=5)[0]
    assert greedy.tokens == [1] and best.tokens == [2]
    assert best.log_prob == pytest.approx(math.log(0.40 * 0.98), abs=1e-5)
    assert best.log_prob > greedy.log_prob


@pytest.mark.parametrize("alpha", [0.0, 1.0])
@pytest.mark.parametrize("seed", range(5))
def test_exhaustive_beam_ranks_every_sequence_like_brute_force(seed, alpha):
    vocab, max_len = 3, 3
    model = Toy.random(vocab, seed=seed, sharpness=1.5)
    expected = sorted(
        (
            (model.log_prob(tokens, by_eos) / gnmt_lp(len(tokens) + by_eos, alpha), tokens)
            for tokens, by_eos in all_sequences(vocab, max_len)
        ),
        key=lambda pair: -pair[0],
    )
    size = vocab**max_len  # room for every prefix: the search cannot prune anything
    hyps = model.search(beam_size=size, n_best=len(expected), max_len=max_len, length_penalty=alpha)[0]
    assert [h.tokens for h in hyps] == [tokens for _, tokens in expected]
    assert [h.score for h in hyps] == pytest.approx([score for score, _ in expected], abs=1e-4)
    # With fewer hypotheses wanted the search stops early; that must not change the top of the ranking.
    top = model.search(beam_size=size, n_best=3, max_len=max_len, length_penalty=alpha)[0]
    assert [h.tokens for h in top] == [tokens for _, tokens in expected[:3]]


def test_batch_decodes_exactly_like_each_input_alone():
    inputs, vocab, src = 5, 8, 6
    g = torch.Generator().manual_seed(3)
    lengths = [6, 3, 4, 6, 2]
    mask = torch.arange(src)[None, :] < torch.tensor(lengths)[:, None]
    attention = torch.randn(inputs, vocab + 1, src, generator=g).masked_fill(~mask[:, None, :], -math.inf)
    model = Toy.random(vocab, inputs=inputs, seed=3, attention=attention.softmax(-1))
    model.table[:, EOS] += torch.linspace(-1, 2, vocab + 1)  # inputs end at different steps
    options = dict(
        beam_size=4, n_best=3, max_len=10, length_penalty=0.6, coverage_penalty=0.3, no_repeat_ngram_size=2
    )
    together = model.search(inputs, src_mask=mask, **options)
    for i in range(inputs):
        alone_model = Toy(model.table, model.bias[i : i + 1], model.attention[i : i + 1])
        alone = alone_model.search(1, src_mask=mask[i : i + 1], **options)[0]
        assert len(together[i]) == len(alone) == 3
        for a, b in zip(together[i], alone, strict=True):
            assert a.tokens == b.tokens and a.ended_by_eos == b.ended_by_eos
            assert a.score == pytest.approx(b.score, abs=1e-5)
            assert a.log_prob == pytest.approx(b.log_prob, abs=1e-5)
            assert torch.allclose(a.attention, b.attention)
            # The GNMT score, recomputed from the returned tokens and attention (real positions only).
            coverage = a.attention.sum(0).clamp(max=1.0).log()[mask[i]].sum()
            log_prob = model.log_prob(a.tokens, a.ended_by_eos, i)
            steps = len(a.tokens) + a.ended_by_eos
            assert a.log_prob == pytest.approx(log_prob, abs=1e-4)
            assert a.score == pytest.approx(log_prob / gnmt_lp(steps, 0.6) + 0.3 * float(coverage), abs=1e-4)


def test_attention_rows_are_those_of_the_hypothesis_path():
    inputs, vocab, src = 3, 6, 4
    g = torch.Generator().manual_seed(5)
    attention = torch.randn(inputs, vocab + 1, src, generator=g).softmax(-1)
    model = Toy.random(vocab, inputs=inputs, seed=5, attention=attention)
    model.table[:, EOS] += torch.linspace(-2, 2, vocab + 1)
    hyps = model.search(inputs, beam_size=4, n_best=4, max_len=7)
    assert {h.ended_by_eos for hs in hyps for h in hs} == {True, False}
    for i, hs in enumerate(hyps):
        for h in hs:
            prev = [model.bos, *h.tokens] if h.ended_by_eos else [model.bos, *h.tokens[:-1]]
            assert h.attention.shape == (len(h.tokens) + h.ended_by_eos, src)
            assert torch.equal(h.attention, attention[i, torch.tensor(prev)])


# ---------------------------------------------------------------- controls


def test_n_best_are_distinct_sorted_and_scored_by_their_log_prob():
    model = Toy.random(vocab=7, inputs=3, seed=1)
    hyps = model.search(3, beam_size=5, n_best=5, max_len=8)
    for i, hs in enumerate(hyps):
        assert len(hs) == 5
        assert len({(tuple(h.tokens), h.ended_by_eos) for h in hs}) == 5
        scores = [h.score for h in hs]
        assert scores == sorted(scores, reverse=True)
        for h in hs:
            assert h.score == h.log_prob  # no penalties: the score is the log-probability
            assert h.log_prob == pytest.approx(model.log_prob(h.tokens, h.ended_by_eos, i), abs=1e-4)


def test_min_len_forbids_an_earlier_end():
    model = Toy.random(vocab=6, inputs=2, seed=2)
    model.table[:, EOS] += 4.0  # the model wants to stop at once
    assert all(len(h[0].tokens) < 3 for h in model.search(2, beam_size=3, max_len=10))
    hyps = model.search(2, beam_size=3, n_best=3, max_len=10, min_len=3)
    assert all(len(h.tokens) >= 3 for hs in hyps for h in hs)
    assert any(len(h.tokens) == 3 and h.ended_by_eos for hs in hyps for h in hs)


def test_max_len_caps_the_steps_and_finishes_live_beams():
    model = Toy.random(vocab=6, inputs=2, seed=4)
    model.table[:, EOS] -= 2.0
    hyps = model.search(2, beam_size=3, n_best=3, max_len=5)
    assert len(model.rows) <= 5
    for h in (h for hs in hyps for h in hs):
        assert len(h.tokens) <= (4 if h.ended_by_eos else 5)
        if not h.ended_by_eos:
            assert len(h.tokens) == 5
    assert any(not h.ended_by_eos for hs in hyps for h in hs)


def test_length_penalty_favours_longer_hypotheses():
    # Stopping at once: log 0.5 = -0.693. Token 1 then EOS: log 0.45 = -0.799, better once divided by lp.
    vocab, bos = 3, 3
    table = probability_table({bos: [0.5, 0.5, 0.0], 1: [0.9, 0.05, 0.05]}, vocab, bos)
    model = Toy(table)
    (plain,) = model.search(beam_size=2, max_len=4)[0]
    (long,) = model.search(beam_size=2, max_len=4, length_penalty=1.0)[0]
    assert plain.tokens == [] and long.tokens == [1]
    assert long.score == pytest.approx(long.log_prob / gnmt_lp(2, 1.0))
    # On random models the best length never shrinks as alpha grows.
    for seed in range(4):
        model = Toy.random(vocab=5, seed=seed)
        lengths = [len(model.search(beam_size=4, max_len=8, length_penalty=a)[0][0].tokens) for a in (0, 1, 3)]
        assert lengths == sorted(lengths)


def test_no_repeat_ngram_is_respected_by_every_hypothesis():
    # The model loves the cycle 1 -> 2 -> 1 -> ...
    vocab, bos = 5, 5
    table = torch.zeros(bos + 1, vocab)
    table[bos, 1] = table[1, 2] = table[2, 1] = 5.0
    table[:, EOS] = -3.0
    model = Toy(table)
    free = model.search(beam_size=3, n_best=3, max_len=8)[0]
    assert has_repeated_ngram(free[0].tokens, 2)
    for n in (1, 2, 3):
        hyps = model.search(beam_size=3, n_best=3, max_len=8, no_repeat_ngram_size=n)[0]
        assert len(hyps) == 3
        assert not any(has_repeated_ngram(h.tokens, n) for h in hyps)


def test_extra_processors_apply_to_every_beam_and_the_list_is_left_alone():
    class Ban(LogitsProcessor):
        def __init__(self, token: int) -> None:
            self.token = token

        def __call__(self, input_ids, scores):
            return scores.index_fill(1, torch.tensor([self.token]), -math.inf)

    model = Toy.random(vocab=6, inputs=3, seed=6)
    favourite = int(model.table[model.bos].argmax())
    processors = LogitsProcessorList([Ban(favourite)])
    hyps = model.search(3, beam_size=4, n_best=4, max_len=6, processors=processors, no_repeat_ngram_size=2)
    assert all(favourite not in h.tokens for hs in hyps for h in hs)
    assert len(processors) == 1


def test_coverage_penalty_prefers_hypotheses_that_cover_the_source():
    # Source of 3 positions: BOS attends to position 0, token 1 to position 1, token 2 to position 2.
    vocab, bos, src = 3, 3, 3
    table = probability_table({bos: [0.6, 0.4, 0.0], 1: [0.1, 0.0, 0.9], 2: [0.9, 0.05, 0.05]}, vocab, bos)
    focus = {bos: 0, 1: 1, 2: 2, EOS: 0}
    attention = torch.full((1, bos + 1, src), 0.1)
    for prev, position in focus.items():
        attention[0, prev, position] = 0.8
    model = Toy(table, attention=attention)
    (plain,) = model.search(beam_size=3, max_len=5)[0]
    (covering,) = model.search(beam_size=3, max_len=5, coverage_penalty=0.5)[0]
    assert plain.tokens == [] and covering.tokens == [1, 2]
    assert covering.score == pytest.approx(covering.log_prob, abs=1e-5)  # full coverage costs nothing

    # Padded source positions (zero attention) count only through src_mask's real positions.
    padded = Toy(table, attention=torch.cat([attention, torch.zeros(1, bos + 1, 2)], dim=-1))
    mask = torch.tensor([[True, True, True, False, False]])
    (masked,) = padded.search(beam_size=3, max_len=5, coverage_penalty=0.5, src_mask=mask)[0]
    assert masked.tokens == covering.tokens and masked.score == pytest.approx(covering.score)


def test_coverage_penalty_needs_attention():
    model = Toy.random(vocab=4)
    with pytest.raises(ValueError, match="attention"):
        model.search(beam_size=2, coverage_penalty=0.2)


# ---------------------------------------------------------------- batching and cost


@pytest.mark.parametrize("inputs", [1, 8])
def test_step_is_called_once_per_decoding_step_for_the_whole_batch(inputs):
    model = Toy.random(vocab=7, inputs=inputs, seed=7)
    model.search(inputs, beam_size=4, max_len=6, min_len=6)  # no EOS allowed: every input runs 6 steps
    assert model.rows == [inputs * 4] * 6


def test_finished_inputs_leave_the_batch():
    model = Toy.random(vocab=6, inputs=2, seed=8)
    model.bias[0, EOS] = 50.0  # input 0 ends at once; input 1 never can
    model.bias[1, EOS] = -50.0
    hyps = model.search(2, beam_size=3, max_len=5)
    assert hyps[0][0].tokens == [] and len(hyps[1][0].tokens) == 5
    assert model.rows == [6, 3, 3, 3, 3]


def test_tiny_vocabulary_returns_only_the_sequences_that_exist():
    model = Toy.random(vocab=2, seed=9)
    hyps = model.search(beam_size=5, n_best=5, max_len=2)[0]
    # [] + EOS, [1] + EOS, [1, 1] cut at max_len: three sequences in all.
    assert sorted((h.tokens, h.ended_by_eos) for h in hyps) == [([], True), ([1], True), ([1, 1], False)]


@pytest.mark.parametrize(
    "options",
    [dict(beam_size=0), dict(beam_size=2, n_best=3), dict(max_len=0), dict(max_len=3, min_len=4),
     dict(length_penalty=-1.0), dict(coverage_penalty=float("nan")), dict(no_repeat_ngram_size=-1)],
)
def test_bad_arguments_raise(options):
    with pytest.raises(ValueError):
        Toy.random(vocab=4).search(**options)
