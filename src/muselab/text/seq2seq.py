"""An RNN encoder-decoder with attention, in one file.

A bidirectional GRU or LSTM reads the source (packed, so padding never enters the recurrence); its
final states are bridged into the decoder's initial hidden state. The decoder steps one token at a
time: RNN, then attention over the encoder outputs (additive Bahdanau, or Luong dot / general), then
the attentional vector h~ = tanh(W_c [context; h]) that feeds the output layer and, with input
feeding, the next step's input. An optional coverage vector (the sum of past attention) enters the
attention scores. Read top to bottom: config, decoder state, attention, model, loss.

`encode` + `decode_step` is the whole decoding interface: search strategies (greedy here, beams in
`muselab.text.decoding`) carry a `DecoderState` and reorder it with `index_select`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from muselab.core.config import Section

# Special ids shared by the source and target vocabularies.
PAD, BOS, EOS = 0, 1, 2

Batch = dict[str, Tensor]  # "src" [B, S], "src_len" [B], "tgt_in" [B, T] (BOS + y), "tgt_out" [B, T] (y + EOS)
Hidden = Tensor | tuple[Tensor, Tensor]


class Seq2SeqConfig(Section):
    src_vocab_size: int = Field(0, ge=0, description="set from the source vocabulary")
    tgt_vocab_size: int = Field(0, ge=0, description="set from the target vocabulary")
    rnn: Literal["gru", "lstm"] = Field("gru", description="recurrent cell of encoder and decoder")
    emb_dim: int = Field(128, ge=1, description="token embedding size, both sides")
    hidden: int = Field(256, ge=2, description="decoder hidden size (even); the bidirectional encoder "
                                               "uses hidden // 2 per direction")
    enc_layers: int = Field(2, ge=1, description="stacked bidirectional encoder layers")
    dec_layers: int = Field(1, ge=1, description="stacked decoder layers")
    attention: Literal["bahdanau", "mlp", "luong_dot", "luong_general"] = Field(
        "bahdanau", description="score function: additive (bahdanau, alias mlp), q.k (luong_dot) or q.Wk "
                                "(luong_general)")
    input_feeding: bool = Field(True, description="feed the previous attentional vector with the next "
                                                  "input embedding (Luong et al. 2015)")
    coverage: bool = Field(False, description="the sum of past attention is an extra input to the "
                                              "attention scores (See et al. 2017)")
    dropout: float = Field(0.2, ge=0, lt=1, description="dropout on embeddings, between RNN layers and "
                                                        "before the output layer")
    teacher_forcing: float = Field(1.0, ge=0, le=1, description="probability of feeding the gold previous "
                                                                "token during training (else the model's "
                                                                "own argmax)")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="label smoothing of the training loss")

    @field_validator("hidden")
    @classmethod
    def _even_hidden(cls, value: int) -> int:
        # The two encoder directions are concatenated into the decoder's size, so it must split evenly.
        if value % 2:
            raise ValueError("must be even: the bidirectional encoder uses hidden // 2 per direction")
        return value


@dataclass
class DecoderState:
    """Everything the decoder carries between steps. `hidden` is [layers, N, H] (a pair for LSTM,
    batch on dim 1, as PyTorch's RNNs want it); every other tensor has the batch on dim 0."""

    hidden: Hidden
    feed: Tensor  # [N, H] previous attentional vector, zeros at the start
    coverage: Tensor | None  # [N, S] sum of past attention weights, when cfg.coverage
    memory: Tensor  # [N, S, H] encoder outputs
    mask: Tensor  # [N, S] bool, True at real source positions
    keys: Tensor | None = None  # [N, S, H] memory projected once per batch for additive attention

    def index_select(self, index: Tensor) -> DecoderState:
        """Reorder or repeat rows of the batch, e.g. to expand each example into beams."""
        if isinstance(self.hidden, tuple):
            hidden: Hidden = (self.hidden[0].index_select(1, index), self.hidden[1].index_select(1, index))
        else:
            hidden = self.hidden.index_select(1, index)
        return DecoderState(
            hidden=hidden,
            feed=self.feed.index_select(0, index),
            coverage=None if self.coverage is None else self.coverage.index_select(0, index),
            memory=self.memory.index_select(0, index),
            mask=self.mask.index_select(0, index),
            keys=None if self.keys is None else self.keys.index_select(0, index),
        )


def _first_rows(state: DecoderState, n: int) -> DecoderState:
    """The first n rows of the batch, as views (no copy)."""
    hidden = state.hidden
    hidden = (hidden[0][:, :n], hidden[1][:, :n]) if isinstance(hidden, tuple) else hidden[:, :n]
    return DecoderState(hidden, state.feed[:n], None if state.coverage is None else state.coverage[:n],
                        state.memory[:n], state.mask[:n], None if state.keys is None else state.keys[:n])


class Attention(nn.Module):
    """Scores queries [N, T, H] against the memory [N, S, H]; returns context [N, T, H] and weights
    [N, T, S]. One code path serves a single decoder step (T = 1) and whole teacher-forced sequences."""

    def __init__(self, kind: str, hidden: int, coverage: bool) -> None:
        super().__init__()
        self.additive = kind in ("bahdanau", "mlp")
        if self.additive:
            self.key_proj = nn.Linear(hidden, hidden, bias=False)
            self.query_proj = nn.Linear(hidden, hidden)
            self.v = nn.Parameter(torch.empty(hidden).uniform_(-hidden ** -0.5, hidden ** -0.5))
        elif kind == "luong_general":
            # q . (W k) == (W^T q) . k: projecting the query costs one [N, H] matmul per step instead of
            # projecting the whole memory
            self.query_proj = nn.Linear(hidden, hidden, bias=False)
        else:
            self.query_proj = None
        self.cov_weight: nn.Parameter | None = None
        if coverage:
            # Additive: a vector w_c inside the tanh (See et al.). Luong scores have no hidden layer
            # to put it in, so coverage enters them as one learned linear term.
            size = hidden if self.additive else 1
            self.cov_weight = nn.Parameter(torch.empty(size).uniform_(-0.1, 0.1))

    def precompute_keys(self, memory: Tensor) -> Tensor | None:
        return self.key_proj(memory) if self.additive else None

    def forward(self, query: Tensor, state: DecoderState) -> tuple[Tensor, Tensor]:
        memory, cov = state.memory, state.coverage
        if self.additive:
            q = self.query_proj(query)  # [N, T, H]
            energy = state.keys.unsqueeze(1) + q.unsqueeze(2)  # [N, T, S, H]
            if cov is not None:
                energy = energy + (cov.unsqueeze(-1) * self.cov_weight).unsqueeze(1)
            scores = torch.tanh(energy) @ self.v  # [N, T, S]
        else:
            q = query if self.query_proj is None else self.query_proj(query)
            scores = torch.bmm(q, memory.transpose(1, 2))
            if cov is not None:
                scores = scores + (cov * self.cov_weight).unsqueeze(1)
        mask = state.mask.unsqueeze(1)
        weights = torch.where(mask, scores, float("-inf")).softmax(-1)
        # A row with no real position would be all NaN; zero it (encode never builds one)
        weights = torch.where(mask, weights, 0.0)
        return torch.bmm(weights, memory), weights


class Seq2Seq(nn.Module):
    def __init__(self, cfg: Seq2SeqConfig) -> None:
        super().__init__()
        if cfg.src_vocab_size <= EOS or cfg.tgt_vocab_size <= EOS:
            raise ValueError("Seq2SeqConfig.src_vocab_size and tgt_vocab_size must be set from the vocabularies")
        self.cfg = cfg
        H, E = cfg.hidden, cfg.emb_dim
        rnn_cls = nn.GRU if cfg.rnn == "gru" else nn.LSTM
        self.drop = nn.Dropout(cfg.dropout)
        # encoder
        self.src_embed = nn.Embedding(cfg.src_vocab_size, E, padding_idx=PAD)
        self.encoder = rnn_cls(E, H // 2, num_layers=cfg.enc_layers, batch_first=True, bidirectional=True,
                               dropout=cfg.dropout if cfg.enc_layers > 1 else 0.0)
        self.bridge = nn.Linear(H, cfg.dec_layers * H)
        self.bridge_cell = nn.Linear(H, cfg.dec_layers * H) if cfg.rnn == "lstm" else None
        # decoder
        self.tgt_embed = nn.Embedding(cfg.tgt_vocab_size, E, padding_idx=PAD)
        self.decoder = rnn_cls(E + H if cfg.input_feeding else E, H, num_layers=cfg.dec_layers, batch_first=True,
                               dropout=cfg.dropout if cfg.dec_layers > 1 else 0.0)
        self.attention = Attention(cfg.attention, H, cfg.coverage)
        self.combine = nn.Linear(2 * H, H, bias=False)
        self.out = nn.Linear(H, cfg.tgt_vocab_size)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # -- encoder ----------------------------------------------------------------------------------
    def encode(self, src: Tensor, src_len: Tensor) -> DecoderState:
        """Encode a PAD-padded batch [B, S] into the decoder's initial state."""
        B, S = src.shape
        lengths = src_len.to("cpu", torch.int64)  # pack_padded_sequence wants lengths on the CPU
        packed = pack_padded_sequence(self.drop(self.src_embed(src)), lengths, batch_first=True,
                                      enforce_sorted=False)
        out, final = self.encoder(packed)
        memory, _ = pad_packed_sequence(out, batch_first=True, total_length=S)  # [B, S, H]
        mask = torch.arange(S, device=src.device) < src_len.to(src.device).unsqueeze(1)

        def bridge(states: Tensor, layer: nn.Linear, squash: bool) -> Tensor:
            # top encoder layer, forward and backward final states side by side -> every decoder layer
            top = states.view(self.cfg.enc_layers, 2, B, -1)[-1]
            x = layer(torch.cat((top[0], top[1]), dim=-1))
            x = torch.tanh(x) if squash else x
            return x.view(B, self.cfg.dec_layers, -1).transpose(0, 1).contiguous()

        if isinstance(final, tuple):
            hidden: Hidden = (bridge(final[0], self.bridge, True), bridge(final[1], self.bridge_cell, False))
        else:
            hidden = bridge(final, self.bridge, True)
        return DecoderState(
            hidden=hidden,
            feed=memory.new_zeros(B, self.cfg.hidden),
            coverage=memory.new_zeros(B, S) if self.cfg.coverage else None,
            memory=memory,
            mask=mask,
            keys=self.attention.precompute_keys(memory),
        )

    # -- decoder ----------------------------------------------------------------------------------
    def _step(self, emb: Tensor, state: DecoderState) -> tuple[Tensor, DecoderState, Tensor]:
        """One decoder step from an (already dropped-out) input embedding [N, E]: returns the
        attentional vector [N, H], the new state and the attention weights [N, S]."""
        x = torch.cat((emb, state.feed), dim=-1) if self.cfg.input_feeding else emb
        out, hidden = self.decoder(x.unsqueeze(1), state.hidden)  # out [N, 1, H]
        context, weights = self.attention(out, state)
        attn_vec = torch.tanh(self.combine(torch.cat((context, out), dim=-1))).squeeze(1)
        weights = weights.squeeze(1)
        coverage = None if state.coverage is None else state.coverage + weights
        new_state = DecoderState(hidden, attn_vec, coverage, state.memory, state.mask, state.keys)
        return attn_vec, new_state, weights

    def decode_step(self, prev: Tensor, state: DecoderState) -> tuple[Tensor, DecoderState, Tensor]:
        """Feed the previous tokens [N]; returns logits [N, V_tgt], the new state and the attention
        weights [N, S] (summing to 1 over real source positions, exactly 0 on padding)."""
        attn_vec, state, weights = self._step(self.drop(self.tgt_embed(prev)), state)
        return self.out(self.drop(attn_vec)), state, weights

    def forward(self, batch: Batch, teacher_forcing: float | None = None) -> Tensor:
        """Logits [B, T, V_tgt] for batch["tgt_out"]; positions where tgt_out is PAD are not computed
        (zeros, or unspecified). The gold previous token is fed with probability `teacher_forcing`
        (default: cfg.teacher_forcing in training mode, always in eval mode)."""
        if teacher_forcing is None:
            teacher_forcing = self.cfg.teacher_forcing if self.training else 1.0
        state = self.encode(batch["src"], batch["src_len"])
        tgt_in = batch["tgt_in"]
        if teacher_forcing >= 1.0 and not self.cfg.input_feeding and not self.cfg.coverage:
            # Nothing flows from one step's attention into the next: the RNN runs over the whole
            # target in one call and attention is one batched matmul over all steps.
            out, _ = self.decoder(self.drop(self.tgt_embed(tgt_in)), state.hidden)
            context, _ = self.attention(out, state)
            return self.out(self.drop(torch.tanh(self.combine(torch.cat((context, out), dim=-1)))))
        return self._decode_loop(tgt_in, (batch["tgt_out"] != PAD).sum(1), state, teacher_forcing)

    def _decode_loop(self, tgt_in: Tensor, tgt_len: Tensor, state: DecoderState, ratio: float) -> Tensor:
        """Step through the targets, sorted longest first so that each step only runs the rows whose
        target is still going (as pack_padded_sequence does for the encoder): about 40 % less work
        than stepping every row to the longest target."""
        B, T = tgt_in.shape
        order = tgt_len.argsort(descending=True)
        tgt_len, tgt_in, state = tgt_len[order], tgt_in[order], state.index_select(order)
        valid = tgt_len.unsqueeze(1) > torch.arange(T, device=tgt_len.device)  # [B, T] real output positions
        active = valid.sum(0).tolist()  # rows still decoding at each step
        emb = self.drop(self.tgt_embed(tgt_in)) if ratio >= 1.0 else None  # all gold inputs at once
        pieces: list[Tensor] = []
        for t, n in enumerate(active):
            if n == 0:
                break
            if n < state.feed.size(0):
                state = _first_rows(state, n)
            if emb is not None:
                attn_vec, state, _ = self._step(emb[:n, t], state)
                pieces.append(attn_vec)
            else:
                # Scheduled sampling draws from torch's global RNG, which the Trainer seeds per step
                prev = tgt_in[:n, t]
                if t > 0:
                    prev = torch.where(torch.rand(n, device=prev.device) < ratio, prev, pieces[-1][:n].argmax(-1))
                logits, state, _ = self.decode_step(prev, state)
                pieces.append(logits)
        packed = torch.cat(pieces)  # [real positions, H or V], step-major
        if emb is not None:
            packed = self.out(self.drop(packed))  # one output matmul for the whole batch
        # valid.T in row-major order is step-major over the sorted rows: the order the pieces came in
        logits = packed.new_zeros(T, B, packed.size(-1)).index_put((valid.t(),), packed)
        return logits.transpose(0, 1).index_select(0, order.argsort())

    @torch.no_grad()
    def greedy(self, src: Tensor, src_len: Tensor, max_len: int) -> tuple[list[list[int]], Tensor]:
        """Batched greedy decoding: token lists (EOS excluded) and attention [B, T, S], T the steps
        taken; rows after an example's EOS are zero. Uses the module's current train/eval mode."""
        state = self.encode(src, src_len)
        B, S = src.shape
        prev = torch.full((B,), BOS, dtype=torch.long, device=src.device)
        finished = torch.zeros(B, dtype=torch.bool, device=src.device)
        tokens, attention = [], []
        for _ in range(max_len):
            logits, state, weights = self.decode_step(prev, state)
            prev = logits.argmax(-1)
            attention.append(weights.masked_fill(finished.unsqueeze(1), 0.0))
            tokens.append(prev)
            finished = finished | (prev == EOS)
            if bool(finished.all()):
                break
        rows = torch.stack(tokens, dim=1).tolist() if tokens else [[] for _ in range(B)]
        hyps = [row[:row.index(EOS)] if EOS in row else row for row in rows]
        attn = torch.stack(attention, dim=1) if attention else src.new_zeros(B, 0, S, dtype=torch.float)
        return hyps, attn

    # -- what the Trainer calls -------------------------------------------------------------------
    def training_step(self, batch: Batch) -> Tensor:
        """Mean token cross-entropy over non-PAD targets, with label smoothing."""
        logits = self(batch)
        return F.cross_entropy(logits.float().flatten(0, 1), batch["tgt_out"].flatten(), ignore_index=PAD,
                               label_smoothing=self.cfg.label_smoothing)

    def eval_step(self, batch: Batch) -> tuple[Tensor, int]:
        """Summed token NLL (gold history, no smoothing) and the number of non-PAD target tokens."""
        logits = self(batch, teacher_forcing=1.0)
        target = batch["tgt_out"].flatten()
        loss = F.cross_entropy(logits.float().flatten(0, 1), target, ignore_index=PAD, reduction="sum")
        return loss, int((target != PAD).sum())
