"""text-lm's model: the decoder-only Transformer of `muselab.transformer`, shared with music-lm (the
modalities never import each other, so it lives below them). Its names stay importable from here."""

import torch
from torch import nn

from muselab.transformer import (
    GPT,
    MLP,
    Block,
    CausalSelfAttention,
    GPTConfig,
    KVCache,
    apply_rotary,
    rotary_tables,
)

__all__ = ["GPT", "GPTConfig", "KVCache", "Block", "CausalSelfAttention", "MLP", "apply_rotary", "rotary_tables"]


class NextTokenLogits(nn.Module):
    """One decoding step without a cache, as a plain network for export: token ids [B, T] (the last
    `block_size` tokens of the text so far, 1 <= T <= block_size) -> float logits of the next token
    [B, vocab_size]. The same logits as `GPT.uncached_step` (and the cached step, which equals it)."""

    def __init__(self, model: GPT) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, last_only=True)[:, -1, :].float()
