"""Token sampling shared by every modality's language models: a chain of small logits processors and one
model-agnostic sampling loop (text decoding in `muselab.text.decoding` builds on it; music-lm reuses it).

Each processor takes the ids so far `[B, T]` and next-token scores `[B, V]` and returns new scores; a
token it filters out gets -inf. `build_processors` turns sampling controls (any object with the fields of
`SamplingControls`) into the chain, and `generate_tokens` drives any model through a `step` closure that
owns the model and its KV cache.

Every processor keeps at least one token per row that had one, so sampling never sees an empty row.
Processors never modify their inputs in place: the caller's logits stay intact.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Protocol

import torch

from muselab.core.errors import ControlError

__all__ = [
    "LogitsProcessor",
    "LogitsProcessorList",
    "RepetitionPenaltyProcessor",
    "NoRepeatNGramProcessor",
    "TemperatureWarper",
    "TopKWarper",
    "TopPWarper",
    "MinPWarper",
    "SamplingControls",
    "StopCriteria",
    "build_processors",
    "generate_tokens",
]


class SamplingControls(Protocol):
    """What sampling reads from a modality's controls (text-lm's and music-lm's both have these fields)."""

    max_new_tokens: int
    temperature: float
    top_k: int
    top_p: float
    min_p: float
    repetition_penalty: float
    no_repeat_ngram_size: int
    seed: int | None
    stop: Sequence[str]


class StopCriteria(Protocol):
    """Ends rows early (text's `StopStrings`): `reset` before a run, `update` with each row's ids so far."""

    def reset(self) -> None: ...

    def update(self, row_token_lists: Sequence[Sequence[int]]) -> list[bool]: ...


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


def build_processors(controls: SamplingControls) -> LogitsProcessorList:
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
    controls: SamplingControls,
    *,
    generator: torch.Generator | None = None,
    processors: LogitsProcessorList | None = None,
    eos_id: int | None = None,
    stop_criteria: StopCriteria | None = None,
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
