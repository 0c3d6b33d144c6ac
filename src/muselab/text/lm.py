"""text-lm's model: the decoder-only Transformer of `muselab.transformer`, shared with music-lm (the
modalities never import each other, so it lives below them). Its names stay importable from here."""

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
