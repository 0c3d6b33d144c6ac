"""The RNN encoder-decoder: masking, the decoder-step interface beam search builds on, and learning."""

from __future__ import annotations

import itertools
import random

import pytest
import torch
from pydantic import ValidationError

from muselab.text.seq2seq import BOS, EOS, PAD, DecoderState, Seq2Seq, Seq2SeqConfig

N_SYMBOLS = 8
VOCAB = EOS + 1 + N_SYMBOLS  # specials, then symbols 3..10
ATTENTIONS = ("bahdanau", "luong_dot", "luong_general")


def make_model(seed: int = 0, **overrides) -> Seq2Seq:
    settings = dict(src_vocab_size=VOCAB, tgt_vocab_size=VOCAB, emb_dim=12, hidden=16, enc_layers=2,
                    dec_layers=2, dropout=0.0)
    settings.update(overrides)
    torch.manual_seed(seed)
    return Seq2Seq(Seq2SeqConfig(**settings))


def make_batch(pairs: list[tuple[list[int], list[int]]], extra_src_pad: int = 0) -> dict[str, torch.Tensor]:
    """Collate (source, target) token lists the way the data pipeline does: PAD-padded, BOS/EOS added."""
    B = len(pairs)
    S = max(len(s) for s, _ in pairs) + extra_src_pad
    T = max(len(t) for _, t in pairs) + 1
    src = torch.full((B, S), PAD)
    tgt_in = torch.full((B, T), PAD)
    tgt_out = torch.full((B, T), PAD)
    for b, (s, t) in enumerate(pairs):
        src[b, :len(s)] = torch.tensor(s)
        tgt_in[b, :len(t) + 1] = torch.tensor([BOS, *t])
        tgt_out[b, :len(t) + 1] = torch.tensor([*t, EOS])
    return {"src": src, "src_len": torch.tensor([len(s) for s, _ in pairs]), "tgt_in": tgt_in, "tgt_out": tgt_out}


def reverse_pairs(n: int, rng: random.Random) -> list[tuple[list[int], list[int]]]:
    pairs = []
    for _ in range(n):
        s = [rng.randint(EOS + 1, VOCAB - 1) for _ in range(rng.randint(3, 6))]
        pairs.append((s, s[::-1]))
    return pairs


VARIANTS = [dict(attention=a, rnn=r, coverage=c, input_feeding=f)
            for a, r, c, f in itertools.product(ATTENTIONS, ("gru", "lstm"), (False, True), (False, True))]


def variant_id(v: dict) -> str:
    return f"{v['attention']}-{v['rnn']}-cov{int(v['coverage'])}-feed{int(v['input_feeding'])}"


@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
def test_attention_is_a_distribution_over_real_source_positions(variant):
    model = make_model(**variant).eval()
    batch = make_batch(reverse_pairs(4, random.Random(1)), extra_src_pad=2)
    real = torch.arange(batch["src"].size(1)) < batch["src_len"].unsqueeze(1)
    with torch.no_grad():
        state = model.encode(batch["src"], batch["src_len"])
        for t in range(batch["tgt_in"].size(1)):
            _, state, weights = model.decode_step(batch["tgt_in"][:, t], state)
            assert torch.allclose(weights.sum(-1), torch.ones(4), atol=1e-6)
            assert (weights[~real] == 0).all() and (weights[real] > 0).all()
    _, attention = model.greedy(batch["src"], batch["src_len"], max_len=5)
    assert (attention[~real.unsqueeze(1).expand_as(attention)] == 0).all()


@pytest.mark.parametrize("variant", VARIANTS[::3], ids=variant_id)
def test_padding_does_not_change_any_example(variant):
    model = make_model(**variant).eval()
    pairs = [([3, 4, 5, 6, 7, 8], [9, 8]), ([5, 3], [4, 4, 6, 7, 10]), ([10, 9, 8, 7], [3])]
    with torch.no_grad():
        together = model(make_batch(pairs, extra_src_pad=3))
        for b, pair in enumerate(pairs):
            alone = model(make_batch([pair]))[0]
            assert torch.allclose(together[b, :alone.size(0)], alone, atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS[::3], ids=variant_id)
def test_forward_matches_decoding_step_by_step(variant):
    # Training (forward) and decoding (decode_step) must be the same function of the gold history
    model = make_model(**variant).eval()
    batch = make_batch(reverse_pairs(5, random.Random(2)), extra_src_pad=1)
    with torch.no_grad():
        full = model(batch)
        state = model.encode(batch["src"], batch["src_len"])
        for t in range(batch["tgt_in"].size(1)):
            logits, state, _ = model.decode_step(batch["tgt_in"][:, t], state)
            real = batch["tgt_out"][:, t] != PAD  # forward may skip positions past a target's end
            assert torch.allclose(full[real, t], logits[real], atol=1e-5)


@pytest.mark.parametrize("rnn", ["gru", "lstm"])
def test_index_select_expands_a_batch_into_beams(rnn):
    model = make_model(rnn=rnn, coverage=True).eval()
    batch = make_batch([([3, 4, 5, 6], [7, 8]), ([9, 10], [3, 3])], extra_src_pad=1)
    beams = torch.tensor([0, 0, 0, 1, 1, 1])
    with torch.no_grad():
        state = model.encode(batch["src"], batch["src_len"])
        _, state, _ = model.decode_step(batch["tgt_in"][:, 0], state)  # a state with history in it
        expanded = state.index_select(beams)
        assert isinstance(expanded, DecoderState) and expanded.memory.size(0) == 6
        prev = batch["tgt_in"][:, 1]
        logits, next_state, weights = model.decode_step(prev, state)
        beam_logits, beam_state, beam_weights = model.decode_step(prev.index_select(0, beams), expanded)
    # equal up to float rounding: BLAS may block a batch of 6 differently from a batch of 2
    assert torch.allclose(beam_logits, logits.index_select(0, beams), atol=1e-6)
    assert torch.allclose(beam_weights, weights.index_select(0, beams), atol=1e-6)
    assert torch.allclose(beam_state.coverage, next_state.coverage.index_select(0, beams), atol=1e-6)


def test_a_row_without_real_positions_gets_zero_attention_not_nan():
    model = make_model().eval()
    batch = make_batch([([3, 4, 5], [6])])
    with torch.no_grad():
        state = model.encode(batch["src"], batch["src_len"])
        state.mask = torch.zeros_like(state.mask)
        logits, _, weights = model.decode_step(torch.tensor([BOS]), state)
    assert (weights == 0).all() and torch.isfinite(logits).all()


def token_accuracy(model: Seq2Seq, pairs: list[tuple[list[int], list[int]]]) -> float:
    batch = make_batch(pairs)
    hyps, _ = model.greedy(batch["src"], batch["src_len"], max_len=8)
    right = sum(h == g for hyp, (_, gold) in zip(hyps, pairs, strict=True)
                for h, g in itertools.zip_longest(hyp + [EOS], gold + [EOS]))
    return right / sum(len(gold) + 1 for _, gold in pairs)


@pytest.mark.parametrize(("attention", "input_feeding"),
                         [("bahdanau", True), ("luong_dot", True), ("luong_general", False)])
def test_learns_to_reverse_sequences(attention, input_feeding):
    # Reversal is impossible without attention to the right source position; the Luong-general case
    # also trains the one-call decoder path that runs when no input feeding or coverage is needed.
    model = make_model(seed=3, attention=attention, input_feeding=input_feeding, emb_dim=16, hidden=32,
                       enc_layers=1, dec_layers=1)
    rng = random.Random(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, foreach=True)
    for _ in range(150):
        loss = model.training_step(make_batch(reverse_pairs(64, rng)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    assert token_accuracy(model, reverse_pairs(200, random.Random(99))) > 0.9


def test_greedy_returns_tokens_without_eos_and_one_attention_row_per_step():
    model = make_model().eval()
    batch = make_batch(reverse_pairs(3, random.Random(4)), extra_src_pad=1)
    hyps, attention = model.greedy(batch["src"], batch["src_len"], max_len=6)
    assert len(hyps) == 3 and all(EOS not in h and len(h) <= 6 for h in hyps)
    assert attention.shape[0] == 3 and attention.shape[2] == batch["src"].size(1)
    assert attention.shape[1] == max(min(len(h) + 1, 6) for h in hyps)


def test_label_smoothing_changes_the_training_loss_but_not_eval():
    batch = make_batch(reverse_pairs(8, random.Random(5)))
    plain, smoothed = make_model(seed=1), make_model(seed=1, label_smoothing=0.1)
    assert plain.training_step(batch).item() != pytest.approx(smoothed.training_step(batch).item())
    (plain_sum, plain_n), (smooth_sum, smooth_n) = plain.eval_step(batch), smoothed.eval_step(batch)
    assert torch.equal(plain_sum, smooth_sum) and plain_n == smooth_n == int((batch["tgt_out"] != PAD).sum())
    assert plain_sum.item() / plain_n == pytest.approx(plain.training_step(batch).item(), rel=1e-5)


def test_full_teacher_forcing_draws_no_randomness():
    model = make_model(teacher_forcing=1.0).train()
    batch = make_batch(reverse_pairs(6, random.Random(6)))
    rng_before = torch.get_rng_state()
    first = model(batch)
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert torch.equal(first, model(batch))


def test_scheduled_sampling_is_reproducible_from_the_global_seed_and_skipped_in_eval():
    model = make_model(teacher_forcing=0.3).train()
    batch = make_batch(reverse_pairs(16, random.Random(7)))
    torch.manual_seed(11)
    first = model(batch)
    torch.manual_seed(11)
    assert torch.equal(first, model(batch))
    assert not torch.allclose(first, model(batch, teacher_forcing=1.0))
    model.eval()
    rng_before = torch.get_rng_state()
    model(batch)
    model.eval_step(batch)
    assert torch.equal(torch.get_rng_state(), rng_before)


def test_config_checks_and_the_mlp_alias():
    with pytest.raises(ValidationError, match="even"):
        Seq2SeqConfig(hidden=255)
    with pytest.raises(ValueError, match="vocab"):
        Seq2Seq(Seq2SeqConfig())
    alias, bahdanau = make_model(attention="mlp"), make_model(attention="bahdanau")
    batch = make_batch(reverse_pairs(4, random.Random(8)))
    with torch.no_grad():
        assert torch.equal(alias.eval()(batch), bahdanau.eval()(batch))
