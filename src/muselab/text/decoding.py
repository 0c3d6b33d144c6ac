"""Text decoding: stop strings and beam search on top of the shared sampling chain.

The logits processors and the sampling loop live in `muselab.sampling` (music-lm samples with them too)
and are re-exported here, so `muselab.text.decoding` keeps its names. `beam_search` runs batched beam
search over any step function, reusing the same processors.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch

from muselab.core.errors import ControlError
from muselab.sampling import (
    LogitsProcessor,
    LogitsProcessorList,
    MinPWarper,
    NoRepeatNGramProcessor,
    RepetitionPenaltyProcessor,
    TemperatureWarper,
    TopKWarper,
    TopPWarper,
    build_processors,
    generate_tokens,
)

__all__ = [
    "LogitsProcessor",
    "LogitsProcessorList",
    "RepetitionPenaltyProcessor",
    "NoRepeatNGramProcessor",
    "TemperatureWarper",
    "TopKWarper",
    "TopPWarper",
    "MinPWarper",
    "build_processors",
    "generate_tokens",
    "StopStrings",
    "Hypothesis",
    "beam_search",
]

_NEG_INF = float("-inf")


class StopStrings:
    """Ends a row once its decoded text contains any stop string; `truncate` cuts text before the first.

    Each update decodes only a tail window per row: enough tokens to cover the new tokens' text plus the
    longest stop string's length in characters before it, so a stop string split across tokens is found
    without decoding the whole row again. The window is widened when tokens decode to few characters.
    """

    def __init__(self, stop: Sequence[str], decode: Callable[[list[int]], str]) -> None:
        self.stop = list(stop)
        if any(s == "" for s in self.stop):
            raise ControlError("bad value for --stop: ''; stop strings must not be empty")
        self.decode = decode
        self._longest = max((len(s) for s in self.stop), default=0)
        self.reset()

    def reset(self) -> None:
        """Forget all rows; `generate_tokens` calls this before it starts."""
        self._checked: list[int] = []
        self._done: list[bool] = []

    def update(self, row_token_lists: Sequence[Sequence[int]]) -> list[bool]:
        """Given each row's generated ids so far, return which rows have reached a stop string."""
        if len(row_token_lists) != len(self._done):
            self._checked = [0] * len(row_token_lists)
            self._done = [False] * len(row_token_lists)
        if not self.stop:
            return list(self._done)
        for row, tokens in enumerate(row_token_lists):
            if self._done[row]:
                continue
            new = len(tokens) - self._checked[row]
            if new < 0:  # the row was restarted: check it from scratch
                new = len(tokens)
            if new == 0:
                continue
            self._checked[row] = len(tokens)
            self._done[row] = self._tail_has_stop(tokens, new)
        return list(self._done)

    def _tail_has_stop(self, tokens: Sequence[int], new: int) -> bool:
        # A stop string ending in the new text starts at most `longest - 1` characters before it; one more
        # character keeps it clear of the window's first character, which a decoder may render differently
        # (a byte-level token cut mid-character, or a stripped leading space).
        # Only tail slices are copied: copying whole rows every step would be quadratic in their length.
        need = len(self.decode(list(tokens[-new:]))) + self._longest
        width = new + self._longest
        while True:
            width = min(width, len(tokens))
            text = self.decode(list(tokens[-width:]))
            if len(text) >= need or width == len(tokens):
                break
            width *= 2
        return any(s in text for s in self.stop)

    def truncate(self, text: str) -> str:
        """`text` up to (not including) the earliest stop string; unchanged if none occurs."""
        cut = min((i for i in (text.find(s) for s in self.stop) if i >= 0), default=len(text))
        return text[:cut]


# ------------------------------------------------------------------------------------------ beam search

State = TypeVar("State")


@dataclass
class Hypothesis:
    """One beam-search result.

    `attention` holds the attention row of every step the hypothesis took: len(tokens) + 1 rows when it
    ended with EOS (the last row is the step that chose EOS), len(tokens) rows when max_len cut it
    (`ended_by_eos` is False then). It is None when the step function returns no attention.
    """

    tokens: list[int]  # EOS excluded
    score: float  # what hypotheses are ranked by: log_prob after the length and coverage penalties
    log_prob: float  # sum of the per-token scores the search used (model log-probs after the processors)
    attention: torch.Tensor | None
    ended_by_eos: bool = True


@dataclass(slots=True)
class _Ended:
    """A finished hypothesis before its attention is gathered: it ended at decoding `step`, and `row` is
    the beam row (in that step's layout) whose attention it used last."""

    score: float
    log_prob: float
    tokens: list[int]
    step: int
    row: int
    by_eos: bool


def _length_penalty(steps: int, alpha: float) -> float:
    # GNMT (Wu et al. 2016): ((5 + |Y|) / 6) ** alpha, with |Y| the number of scored steps (tokens + EOS).
    return ((5.0 + steps) / 6.0) ** alpha


def _coverage_penalty(coverage: torch.Tensor, mask: torch.Tensor | None, beta: float) -> list[float]:
    # GNMT: beta * sum_i log(min(sum_t a_ti, 1)). A source position never attended would give log 0 = -inf
    # and make all such hypotheses tie; the smallest normal float keeps them finite and comparable.
    capped = coverage.clamp(max=1.0).clamp(min=torch.finfo(coverage.dtype).tiny).log()
    if mask is not None:
        capped = capped.masked_fill(~mask, 0.0)
    return (beta * capped.sum(-1)).tolist()


def _admits(kept: list[_Ended], score: float, n_best: int) -> bool:
    # A tie with the worst kept hypothesis does not displace it: the earlier one stays.
    return len(kept) < n_best or score > kept[-1].score


def _keep(kept: list[_Ended], hyp: _Ended, n_best: int) -> None:
    kept.append(hyp)
    kept.sort(key=lambda h: -h.score)  # stable: among equal scores the earlier-found stays first
    del kept[n_best:]


def _trace_attention(
    steps: list[torch.Tensor], parents: list[torch.Tensor], ends: list[tuple[int, int]]
) -> list[torch.Tensor]:
    """Attention rows of each hypothesis `(last step, row)`, followed back through the beam parents.

    All hypotheses are traced together, one indexing per step: `cur` holds each one's row in the layout of
    step `s`; before a hypothesis's last step it holds a harmless row 0 whose rows are cut off afterwards.
    """
    if not ends:
        return []
    device = steps[0].device
    last = torch.tensor([s for s, _ in ends], device=device)
    start = torch.tensor([r for _, r in ends], device=device)
    n_steps = int(last.max()) + 1
    out = steps[0].new_zeros(len(ends), n_steps, steps[0].shape[1])
    cur = torch.zeros_like(start)
    for s in range(n_steps - 1, -1, -1):
        cur = torch.where(last == s, start, cur)
        out[:, s] = steps[s][cur]
        if s > 0:
            cur = parents[s - 1][cur]
    return [out[h, : s + 1] for h, (s, _) in enumerate(ends)]


def _check_beam_args(
    batch_size: int,
    beam_size: int,
    n_best: int,
    max_len: int,
    min_len: int,
    length_penalty: float,
    coverage_penalty: float,
    no_repeat_ngram_size: int,
    src_mask: torch.Tensor | None,
) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1; got {beam_size}")
    if not 1 <= n_best <= beam_size:
        raise ValueError(f"n_best must be between 1 and beam_size ({beam_size}); got {n_best}")
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1; got {max_len}")
    if not 0 <= min_len <= max_len:
        raise ValueError(f"min_len must be between 0 and max_len ({max_len}); got {min_len}")
    if not (length_penalty >= 0 and math.isfinite(length_penalty)):
        raise ValueError(f"length_penalty must be a finite number >= 0; got {length_penalty}")
    if not (coverage_penalty >= 0 and math.isfinite(coverage_penalty)):
        raise ValueError(f"coverage_penalty must be a finite number >= 0; got {coverage_penalty}")
    if no_repeat_ngram_size < 0:
        raise ValueError(f"no_repeat_ngram_size must be >= 0 (0 means off); got {no_repeat_ngram_size}")
    if src_mask is not None and (src_mask.dim() != 2 or src_mask.shape[0] != batch_size):
        raise ValueError(f"src_mask must have shape [{batch_size}, S_src]; got {tuple(src_mask.shape)}")


@torch.no_grad()
def beam_search(
    step: Callable[[torch.Tensor, State], tuple[torch.Tensor, State, torch.Tensor | None]],
    reorder: Callable[[State, torch.Tensor], State],
    state: State,
    batch_size: int,
    *,
    bos_id: int,
    eos_id: int,
    beam_size: int = 5,
    n_best: int = 1,
    max_len: int = 100,
    min_len: int = 0,
    length_penalty: float = 0.0,
    coverage_penalty: float = 0.0,
    no_repeat_ngram_size: int = 0,
    processors: LogitsProcessorList | None = None,
    src_mask: torch.Tensor | None = None,
    device: torch.device | str | None = None,
) -> list[list[Hypothesis]]:
    """Batched beam search: one `step` call per decoding step for all beams of all inputs.

    `step(prev [N], state)` returns logits `[N, V]`, the new state and attention `[N, S_src]` or None;
    `reorder(state, index [N'])` selects or repeats rows of the state along its batch dimension (for the
    seq2seq model: `lambda s, i: s.index_select(i)`). `state` holds `batch_size` rows; it is first
    expanded to `batch_size * beam_size` rows, each input's beams adjacent. Once an input is finished its
    rows are dropped, so N shrinks as inputs end. `prev`, the reorder indices and the search's own
    tensors live on `device` (default: `src_mask`'s device, else the CPU).

    Each step: log_softmax of the logits, then the no-repeat-ngram ban, then `processors` in order (they
    see the generated ids `[N, t]`, BOS excluded, and log-probabilities), then EOS is banned while fewer
    than `min_len` tokens exist. The ban comes last so that no processor sees EOS forbidden: a beam whose
    every other token is banned dies instead of having a ban lifted. Processors should only ban or
    penalise; sampling warpers have no meaning here.

    Beams are ranked by their summed scores. Of the 2 * beam_size best (beam, token) candidates per input,
    those that are EOS and among the top beam_size become finished hypotheses, and the best beam_size
    non-EOS ones become the next beams, so a finished beam's slot is refilled. A finished hypothesis is
    scored log_prob / lp + cp (GNMT length penalty lp over tokens + EOS, coverage penalty cp over the real
    positions of `src_mask`; both are off at 0). After max_len steps the live beams are finished too; a
    hypothesis thus has at most max_len tokens, at most max_len - 1 when it ends with EOS.

    An input stops once it has `n_best` finished hypotheses and its best live beam cannot beat the worst
    of them even in the best case (its summed score divided by the largest lp, max_len steps, with no
    coverage penalty). This bound is exact: stopping never changes the result, and with both penalties
    off it is the plain rule "best live score <= worst kept score". It assumes per-token scores <= 0,
    which holds for log-probabilities under bans and repetition penalties.

    With beam_size 1 and both penalties off this is exactly greedy decoding (argmax each step, stop at
    EOS). Returns, per input, up to `n_best` distinct hypotheses, best first: fewer only when fewer
    sequences exist (a tiny vocabulary, or processors that ban every continuation).
    """
    _check_beam_args(
        batch_size, beam_size, n_best, max_len, min_len, length_penalty, coverage_penalty,
        no_repeat_ngram_size, src_mask,
    )
    if device is None:
        device = src_mask.device if src_mask is not None else torch.device("cpu")
    k = beam_size
    chain = LogitsProcessorList()
    if no_repeat_ngram_size > 0:
        chain.append(NoRepeatNGramProcessor(no_repeat_ngram_size))
    if processors:
        chain.extend(processors)  # a copy: the caller's list is not modified
    eos_column = torch.tensor([eos_id], device=device)
    best_lp = _length_penalty(max_len, length_penalty)

    groups = list(range(batch_size))  # the input each group of k adjacent rows belongs to
    rows = torch.arange(batch_size, device=device).repeat_interleave(k)
    state = reorder(state, rows)
    prev = torch.full((batch_size * k,), bos_id, dtype=torch.long, device=device)
    # Only the first beam of each input is live at the start, so the k beams do not all pick the same token.
    beam_scores = torch.full((batch_size, k), _NEG_INF, device=device)
    beam_scores[:, 0] = 0.0
    beam_scores = beam_scores.view(-1)
    seqs = torch.empty(batch_size * k, 0, dtype=torch.long, device=device)
    mask = None
    if coverage_penalty > 0 and src_mask is not None:
        mask = src_mask.to(device=device, dtype=torch.bool)[rows]
    coverage: torch.Tensor | None = None  # [N, S_src] summed attention of each beam, including this step
    attn_steps: list[torch.Tensor] = []  # attention of every step, in that step's row layout
    parents: list[torch.Tensor] = []  # parents[t][row at step t+1] = its row at step t
    ended: list[list[_Ended]] = [[] for _ in range(batch_size)]

    for t in range(max_len):
        n_groups = len(groups)
        n_rows = n_groups * k
        logits, state, attn = step(prev, state)
        if logits.dim() != 2 or logits.shape[0] != n_rows:
            raise ValueError(f"step must return logits of shape [{n_rows}, V]; got {tuple(logits.shape)}")
        vocab = logits.shape[1]
        if t == 0:
            if not 0 <= eos_id < vocab:
                raise ValueError(f"eos_id {eos_id} is outside the vocabulary of {vocab} tokens")
            if coverage_penalty > 0 and attn is None:
                raise ValueError("coverage_penalty needs attention, but step returned None for it")
        elif (attn is None) != (not attn_steps):
            raise ValueError("step must return attention at every step or at none")
        if attn is not None:
            if attn.dim() != 2 or attn.shape[0] != n_rows:
                raise ValueError(f"step must return attention of shape [{n_rows}, S]; got {tuple(attn.shape)}")
            if mask is not None and mask.shape[1] != attn.shape[1]:
                raise ValueError(f"src_mask has {mask.shape[1]} source positions, attention {attn.shape[1]}")
            attn = attn.detach().to(device)
            attn_steps.append(attn)
            if coverage_penalty > 0:
                coverage = attn.float() if coverage is None else coverage + attn.float()

        scores = torch.log_softmax(logits.to(device=device, dtype=torch.float32), dim=-1)
        if chain:
            scores = chain(seqs, scores)
        if t < min_len:
            scores = scores.index_fill(1, eos_column, _NEG_INF)

        # Candidates: the 2k best (beam, token) pairs of each input; at most k of them are EOS.
        total = (beam_scores[:, None] + scores).view(n_groups, k * vocab)
        cand_scores, flat = total.topk(min(2 * k, k * vocab), dim=1)
        cand_tokens = flat % vocab
        cand_rows = flat // vocab + torch.arange(n_groups, device=device)[:, None] * k
        cand_eos = cand_tokens == eos_id
        # The next beams: the k best non-EOS candidates (a stable sort moves the EOS ones to the back).
        pick = torch.sort(cand_eos.to(torch.uint8), dim=1, stable=True).indices[:, :k]
        live_scores = cand_scores.gather(1, pick)
        live_tokens = cand_tokens.gather(1, pick)
        live_rows = cand_rows.gather(1, pick)
        # Only a vocabulary smaller than 2 leaves EOS in a beam slot; such a slot is dead.
        live_scores = live_scores.masked_fill(live_tokens == eos_id, _NEG_INF)

        lp = _length_penalty(t + 1, length_penalty)
        penalties = _coverage_penalty(coverage, mask, coverage_penalty) if coverage is not None else None

        # EOS among the top k finishes a hypothesis; one ranked lower would not have been kept in a beam
        # of k (and keeping it would break the beam-1 == greedy guarantee).
        hits = cand_eos[:, :k] & torch.isfinite(cand_scores[:, :k])
        if bool(hits.any()):
            hit_scores, hit_rows = cand_scores.tolist(), cand_rows.tolist()
            for g, c in hits.nonzero().tolist():
                row, log_prob = hit_rows[g][c], hit_scores[g][c]
                score = log_prob / lp + (penalties[row] if penalties is not None else 0.0)
                kept = ended[groups[g]]
                if _admits(kept, score, n_best):
                    _keep(kept, _Ended(score, log_prob, seqs[row].tolist(), t, row, True), n_best)

        if t == max_len - 1:  # out of steps: the live beams are finished as they are
            ls, lt, lr = live_scores.tolist(), live_tokens.tolist(), live_rows.tolist()
            for g, b in enumerate(groups):
                for j in range(k):
                    log_prob, row = ls[g][j], lr[g][j]
                    if not math.isfinite(log_prob):
                        continue
                    score = log_prob / lp + (penalties[row] if penalties is not None else 0.0)
                    if _admits(ended[b], score, n_best):
                        hyp = _Ended(score, log_prob, seqs[row].tolist() + [lt[g][j]], t, row, False)
                        _keep(ended[b], hyp, n_best)
            break

        best_live = live_scores.amax(dim=1).tolist()
        keep = []
        for g, b in enumerate(groups):
            if best_live[g] == _NEG_INF:  # every beam died: nothing more can finish
                continue
            kept = ended[b]
            if len(kept) >= n_best and best_live[g] / best_lp <= kept[-1].score:
                continue
            keep.append(g)
        if not keep:
            break
        if len(keep) < n_groups:  # drop finished inputs: the model stops spending time on them
            sel = torch.tensor(keep, device=device)
            live_scores, live_tokens, live_rows = live_scores[sel], live_tokens[sel], live_rows[sel]
            groups = [groups[g] for g in keep]
        parent = live_rows.reshape(-1)
        parents.append(parent)
        seqs = torch.cat([seqs[parent], live_tokens.reshape(-1, 1)], dim=1)
        beam_scores = live_scores.reshape(-1)
        if coverage is not None:
            coverage = coverage[parent]
        if mask is not None:
            mask = mask[parent]
        state = reorder(state, parent)
        prev = live_tokens.reshape(-1)

    flat_ended = [(b, h) for b in range(batch_size) for h in ended[b]]
    if attn_steps:
        attentions: list[torch.Tensor | None] = list(
            _trace_attention(attn_steps, parents, [(h.step, h.row) for _, h in flat_ended])
        )
    else:
        attentions = [None] * len(flat_ended)
    results: list[list[Hypothesis]] = [[] for _ in range(batch_size)]
    for (b, h), attention in zip(flat_ended, attentions, strict=True):
        results[b].append(Hypothesis(h.tokens, h.score, h.log_prob, attention, h.by_eos))
    return results
