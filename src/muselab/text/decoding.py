"""Text decoding: a chain of small logits processors and one model-agnostic sampling loop.

Each processor takes the ids so far `[B, T]` and next-token scores `[B, V]` and returns new scores; a
token it filters out gets -inf. `build_processors` turns `TextGenerationControls` into the chain, and
`generate_tokens` drives any model through a `step` closure that owns the model and its KV cache.
`beam_search` runs batched beam search over any step function, reusing the same processors.

Every processor keeps at least one token per row that had one, so sampling never sees an empty row.
Processors never modify their inputs in place: the caller's logits stay intact.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch

from muselab.core.errors import ControlError
from muselab.text.controls import TextGenerationControls

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


class LogitsProcessor(ABC):
    """One transformation of next-token scores, applied at every decoding step."""

    @abstractmethod
    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """Given ids so far `[B, T]` (prompt included) and scores `[B, V]`, return new scores `[B, V]`."""


class LogitsProcessorList(list[LogitsProcessor]):
    """A plain list of processors, applied in order; append to it to add a step."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for processor in self:
            scores = processor(input_ids, scores)
        return scores


class RepetitionPenaltyProcessor(LogitsProcessor):
    """CTRL-style penalty: positive scores of already-seen tokens are divided by `penalty`, negative ones
    multiplied, so a penalty above 1 always makes a seen token less likely."""

    def __init__(self, penalty: float) -> None:
        if not (penalty > 0 and math.isfinite(penalty)):
            raise ControlError(f"bad value for --repetition-penalty: {penalty!r}; must be > 0")
        self.penalty = float(penalty)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[1] == 0:
            return scores
        seen = scores.gather(1, input_ids)
        penalised = torch.where(seen > 0, seen / self.penalty, seen * self.penalty)
        # An extreme penalty must not overflow: +inf breaks softmax, and -inf would ban instead of penalise.
        finfo = torch.finfo(scores.dtype)
        penalised = torch.where(torch.isneginf(seen), seen, penalised.clamp(finfo.min, finfo.max))
        # Repeated ids scatter the same value, so duplicates in input_ids are harmless.
        return scores.scatter(1, input_ids, penalised)


class NoRepeatNGramProcessor(LogitsProcessor):
    """Ban every token that would complete an n-gram already present in that row's ids.

    If the ban would leave a row with no token at all (a tiny vocabulary that has used up every
    continuation), that row is left unbanned for this step: the constraint cannot be met, and an empty row
    cannot be sampled from.
    """

    def __init__(self, n: int) -> None:
        if n < 1:
            raise ControlError(f"bad value for --no-repeat-ngram-size: {n!r}; must be >= 1 (0 means off)")
        self.n = int(n)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        n = self.n
        batch, length = input_ids.shape
        if length < n:  # no complete n-gram yet
            return scores
        windows = input_ids.unfold(1, n, 1)  # [B, W, n], a view: every n-gram in each row
        prefix = input_ids[:, length - n + 1 :]  # [B, n-1]: what the next token would extend
        matches = (windows[:, :, :-1] == prefix[:, None, :]).all(-1)  # [B, W]
        # Count matches per candidate token; scatter_add is safe with repeated indices, plain scatter is not.
        hits = torch.zeros(scores.shape, dtype=torch.int32, device=scores.device)
        hits.scatter_add_(1, windows[:, :, -1], matches.to(torch.int32))
        banned = hits > 0
        left = (~torch.isneginf(scores) & ~banned).any(-1, keepdim=True)
        return scores.masked_fill(banned & left, _NEG_INF)


class TemperatureWarper(LogitsProcessor):
    """Divide scores by the temperature: below 1 sharpens the distribution, above 1 flattens it.

    Each row's maximum is subtracted first. Softmax does not change, but a tiny temperature then drives
    the other tokens towards -inf (the greedy limit) instead of overflowing the likeliest one to +inf.
    """

    def __init__(self, temperature: float) -> None:
        if not (temperature > 0 and math.isfinite(temperature)):
            raise ControlError(
                f"bad value for --temperature: {temperature!r}; must be > 0 here (0 means greedy, no warper)"
            )
        self.temperature = float(temperature)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        # clamp: a row that is all -inf must stay -inf, not become NaN (-inf - -inf).
        top = scores.amax(-1, keepdim=True).clamp(min=torch.finfo(scores.dtype).min)
        return (scores - top) / self.temperature


class TopKWarper(LogitsProcessor):
    """Keep the k highest-scoring tokens; tokens tied with the k-th are kept too."""

    def __init__(self, k: int) -> None:
        if k < 1:
            raise ControlError(f"bad value for --top-k: {k!r}; must be >= 1 (0 means off)")
        self.k = int(k)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        k = min(self.k, scores.shape[-1])
        kth = scores.topk(k, dim=-1).values[:, -1:]
        return scores.masked_fill(scores < kth, _NEG_INF)


class TopPWarper(LogitsProcessor):
    """Nucleus sampling: keep the smallest set of likeliest tokens whose probability adds up to at least p.

    The likeliest token is always kept.
    """

    def __init__(self, p: float) -> None:
        if not (0 < p <= 1):
            raise ControlError(f"bad value for --top-p: {p!r}; must be > 0 and <= 1")
        self.p = float(p)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.p >= 1.0:
            return scores
        ordered, order = scores.sort(dim=-1, descending=True, stable=True)
        probs = ordered.float().softmax(-1)
        # Mass of the tokens strictly before each one: a token is needed while that mass is still below p.
        # Shifting the inclusive cumsum avoids the rounding of `cumsum - probs`.
        cumulative = probs.cumsum(-1)
        before = torch.cat([torch.zeros_like(cumulative[:, :1]), cumulative[:, :-1]], dim=-1)
        drop_sorted = before >= self.p
        drop = drop_sorted.scatter(1, order, drop_sorted)
        return scores.masked_fill(drop, _NEG_INF)


class MinPWarper(LogitsProcessor):
    """Drop tokens whose probability is below p times the probability of the likeliest token."""

    def __init__(self, p: float) -> None:
        if not (0 <= p < 1):
            raise ControlError(f"bad value for --min-p: {p!r}; must be >= 0 and < 1")
        self.p = float(p)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.p == 0.0:
            return scores
        top = scores.amax(-1, keepdim=True)
        # prob_i < p * prob_max  <=>  score_i < score_max + log p; comparing scores cannot underflow.
        return scores.masked_fill(scores < top + math.log(self.p), _NEG_INF)


def build_processors(controls: TextGenerationControls) -> LogitsProcessorList:
    """The processor chain for `controls`: penalties first, then (when sampling) temperature, top-k,
    top-p, min-p. Controls that are off add nothing; at temperature 0 the warpers are skipped because the
    loop takes the argmax, which they cannot change."""
    processors = LogitsProcessorList()
    if controls.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyProcessor(controls.repetition_penalty))
    if controls.no_repeat_ngram_size > 0:
        processors.append(NoRepeatNGramProcessor(controls.no_repeat_ngram_size))
    if controls.temperature > 0:
        if controls.temperature != 1.0:
            processors.append(TemperatureWarper(controls.temperature))
        if controls.top_k > 0:
            processors.append(TopKWarper(controls.top_k))
        if controls.top_p < 1.0:
            processors.append(TopPWarper(controls.top_p))
        if controls.min_p > 0.0:
            processors.append(MinPWarper(controls.min_p))
    return processors


class _IdBuffer:
    """Prompt + generated ids `[B, T]`, grown by doubling so appending a column is amortised O(B)."""

    def __init__(self, prompt_ids: torch.Tensor, max_new_tokens: int) -> None:
        batch, self.length = prompt_ids.shape
        self.limit = self.length + max_new_tokens
        capacity = min(self.limit, self.length + 256)
        self.data = torch.empty(batch, capacity, dtype=torch.long, device=prompt_ids.device)
        self.data[:, : self.length] = prompt_ids

    def view(self) -> torch.Tensor:
        return self.data[:, : self.length]

    def append(self, tokens: torch.Tensor) -> None:
        if self.length == self.data.shape[1]:
            capacity = min(self.limit, 2 * self.data.shape[1])
            grown = torch.empty(self.data.shape[0], capacity, dtype=torch.long, device=self.data.device)
            grown[:, : self.length] = self.data
            self.data = grown
        self.data[:, self.length] = tokens
        self.length += 1


@torch.no_grad()
def generate_tokens(
    step: Callable[[torch.LongTensor], torch.Tensor],
    prompt_ids: torch.LongTensor,
    controls: TextGenerationControls,
    *,
    generator: torch.Generator | None = None,
    processors: LogitsProcessorList | None = None,
    eos_id: int | None = None,
    stop_criteria: StopStrings | None = None,
    on_tokens: Callable[[torch.LongTensor], None] | None = None,
) -> list[list[int]]:
    """Sample up to `controls.max_new_tokens` tokens for each row of `prompt_ids` `[B, T0]`.

    `step(ids)` returns logits `[B, V]` for the last position: it first gets the whole prompt, then the
    `[B, 1]` tokens just chosen, and keeps its own KV cache. Randomness comes from `generator` only; when
    it is None and `controls.seed` is set, a generator seeded with it is made on the logits' device.

    A row ends at `eos_id` (not included in its output), when `stop_criteria` reports a stop string (the
    completing token is included; `StopStrings.truncate` cuts the text), or when the processors leave it no
    allowed token. Finished rows are fed a filler token (`eos_id`, else 0) and skip the processors and
    sampling. `on_tokens` gets the `[B]` tokens fed back each step (fillers for finished rows, and the
    eos itself on the step a row picks it). Returns the generated ids per row, prompt excluded.
    """
    if prompt_ids.dim() != 2 or prompt_ids.shape[0] < 1 or prompt_ids.shape[1] < 1:
        raise ValueError(f"prompt_ids must have shape [B, T0] with B, T0 >= 1; got {tuple(prompt_ids.shape)}")
    if controls.stop and stop_criteria is None:
        # Silently ignoring the user's stop strings would be worse than failing loudly here.
        raise ValueError(
            "controls.stop is set but stop_criteria is None; pass StopStrings(controls.stop, decode)"
        )
    if processors is None:
        processors = build_processors(controls)
    if stop_criteria is not None:
        stop_criteria.reset()

    prompt_ids = prompt_ids.long()
    batch = prompt_ids.shape[0]
    device = prompt_ids.device
    greedy = controls.temperature == 0
    filler = eos_id if eos_id is not None else 0
    ids = _IdBuffer(prompt_ids, controls.max_new_tokens)
    generated: list[list[int]] = [[] for _ in range(batch)]
    finished = [False] * batch
    new_ids: torch.Tensor = prompt_ids

    for index in range(controls.max_new_tokens):
        logits = step(new_ids)
        if logits.dim() != 2 or logits.shape[0] != batch:
            raise ValueError(f"step must return logits of shape [{batch}, V]; got {tuple(logits.shape)}")
        active = [row for row in range(batch) if not finished[row]]
        history, scores = ids.view(), logits.float()
        if len(active) < batch:  # finished rows cost nothing beyond the model's own batched step
            rows = torch.tensor(active, device=device)
            history, scores = history[rows], scores[rows.to(scores.device)]
        if processors:
            scores = processors(history, scores)
            allowed = (~torch.isneginf(scores).all(-1)).tolist()
        else:  # nothing can ban a token: every row has one (no per-token work beyond the pick)
            allowed = [True] * len(active)
        if greedy:
            picks = scores.argmax(-1)
        else:
            if generator is None and controls.seed is not None:
                generator = torch.Generator(device=scores.device).manual_seed(controls.seed)
            probs = scores.softmax(-1)
            # Rows with nothing allowed end below; give them a harmless distribution so multinomial accepts it.
            if not all(allowed):
                mask = torch.tensor(allowed, device=probs.device)[:, None]
                probs = torch.where(mask, probs, torch.ones_like(probs))
            picks = torch.multinomial(probs, 1, generator=generator).squeeze(1)

        fed = [filler] * batch
        for row, token, ok in zip(active, picks.tolist(), allowed, strict=True):
            if not ok:
                finished[row] = True
            elif token == eos_id:
                finished[row] = True
                fed[row] = token
            else:
                generated[row].append(token)
                fed[row] = token
        if stop_criteria is not None:
            for row, hit in enumerate(stop_criteria.update(generated)):
                finished[row] = finished[row] or hit
        tokens = torch.tensor(fed, dtype=torch.long, device=device)
        if on_tokens is not None:
            on_tokens(tokens)
        if all(finished) or index == controls.max_new_tokens - 1:
            break
        ids.append(tokens)
        new_ids = tokens[:, None]
    return generated


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
