"""A decoder-only Transformer language model, in one file (text-lm and music-lm both build on it).

Pre-norm blocks, causal self-attention through `scaled_dot_product_attention`, rotary position
embeddings, weight tying between the token embedding and the output layer, dropout, and a key/value
cache for generation. Read top to bottom: config, cache, modules, model, loss.

The cache holds at most `block_size` tokens. Past the context window, generation continues by
recomputing the last `block_size` tokens every step: a cache that merely dropped its oldest entries
would keep keys and values that layers above the first computed while the dropped tokens were still in
view, so its output would drift from the model's on the window. Cached decoding is therefore exact
everywhere, fast inside the window, and past it costs what recomputing costs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from muselab.core.config import Section


class GPTConfig(Section):
    vocab_size: int = Field(0, ge=0, description="set from the tokenizer")
    block_size: int = Field(256, ge=2, description="context length in tokens")
    n_layer: int = Field(4, ge=1, description="Transformer blocks")
    n_head: int = Field(4, ge=1, description="attention heads per block")
    n_embd: int = Field(256, ge=8, description="model width; divisible by n_head")
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout on attention and residual paths")
    bias: bool = Field(False, description="bias terms in linear layers and norms")
    rope_base: float = Field(10000.0, gt=1, description="rotary embedding base")


class KVCache:
    """Keys and values of every layer for a batch of sequences, up to `block_size` tokens."""

    def __init__(self, cfg: GPTConfig, batch_size: int, device: torch.device, dtype: torch.dtype) -> None:
        head_dim = cfg.n_embd // cfg.n_head
        shape = (cfg.n_layer, batch_size, cfg.n_head, cfg.block_size, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self._layers = [(self.k[i], self.v[i]) for i in range(cfg.n_layer)]  # views, made once
        self.capacity = cfg.block_size
        self.length = 0  # filled slots, which is also the position of the next token

    def fits(self, n_new: int) -> bool:
        return self.length + n_new <= self.capacity

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.length + k.size(2)
        keys, values = self._layers[layer]
        keys.narrow(2, self.length, k.size(2)).copy_(k)
        values.narrow(2, self.length, v.size(2)).copy_(v)
        return keys.narrow(2, 0, end), values.narrow(2, 0, end)

    def advance(self, n_new: int) -> None:
        self.length += n_new


def rotary_tables(positions: torch.Tensor, head_dim: int, base: float, real: bool = False) -> torch.Tensor:
    """The rotation of each position: complex numbers `[T, head_dim // 2]` (cos + i sin of its angles), or with
    `real` the same as `[T, head_dim // 2, 2]` (cos, sin), for exporters (ONNX has no complex tensors)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=positions.device).float() / head_dim))
    angles = positions.float()[:, None] * inv_freq[None, :]
    if real:
        return torch.stack((angles.cos(), angles.sin()), dim=-1)
    return torch.polar(torch.ones_like(angles), angles)


def apply_rotary(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Rotate each pair of channels (0, 1), (2, 3), ... of `x` `[..., head_dim]` by the positions' angles
    (`rotation` from `rotary_tables`, broadcast against the pairs). A pair is one complex number, so the
    rotation is one multiplication: fewer operations per decoded token than the real form exporters need."""
    if rotation.is_complex():
        pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
        return torch.view_as_real(pairs * rotation).flatten(-2).type_as(x)
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = rotation.unbind(-1)
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2).type_as(x)


def _dropout(module: nn.Dropout, x: torch.Tensor) -> torch.Tensor:
    """`module(x)`, without the call when it would return `x` (generation: a module call per token adds up)."""
    return module(x) if module.training and module.p > 0 else x


def _attend_causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout: float) -> torch.Tensor:
    """Causal attention. On a CPU under bf16 autocast it runs in fp32: CPUs' bf16 attention kernels (the backward
    above all) are several times slower than their fp32 ones at these sizes, even where bf16 matmuls are faster."""
    if q.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            y = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), dropout_p=dropout, is_causal=True)
        return y.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig, layer: int) -> None:
        super().__init__()
        if cfg.n_embd % cfg.n_head:
            raise ValueError("n_embd must be divisible by n_head")
        self.layer, self.n_head, self.dropout = layer, cfg.n_head, cfg.dropout
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, rotation: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        B, T, C = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.n_head, C // self.n_head)
        q, k = apply_rotary(qkv[:, :, :2], rotation[:, None, None, :]).transpose(1, 3).unbind(2)  # [B, H, T, D]
        v = qkv[:, :, 2].transpose(1, 2)
        dropout = self.dropout if self.training else 0.0
        if cache is None:
            y = _attend_causal(q, k, v, dropout)
        else:
            k, v = cache.write(self.layer, k.to(cache.k.dtype), v.to(cache.v.dtype))
            k, v = k.to(q.dtype), v.to(q.dtype)
            if T == 1:
                y = F.scaled_dot_product_attention(q, k, v)
            else:
                # query i sits at slot (L - T + i) and may see every slot up to it
                L = k.size(2)
                mask = torch.ones(T, L, dtype=torch.bool, device=x.device).tril(diagonal=L - T)
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return _dropout(self.resid_dropout, self.proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _dropout(self.dropout, self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig, layer: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg, layer)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, rotation: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), rotation, cache)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        if cfg.vocab_size < 1:
            raise ValueError("GPTConfig.vocab_size must be set from the tokenizer")
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying
        self._rotation: torch.Tensor | None = None
        self.apply(self._init_weights)
        # residual projections start small so deep stacks begin close to the identity
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / (2 * cfg.n_layer) ** 0.5)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def _rotary(self, device: torch.device) -> torch.Tensor:
        """The rotation of every position of the window, made once per device (not weights: not saved); made
        afresh in real form while torch.export traces the model."""
        head_dim = self.cfg.n_embd // self.cfg.n_head
        if torch.compiler.is_exporting():
            return rotary_tables(torch.arange(self.cfg.block_size, device=device), head_dim, self.cfg.rope_base,
                                 real=True)
        if self._rotation is None or self._rotation.device != device:
            positions = torch.arange(self.cfg.block_size, device=device)
            self._rotation = rotary_tables(positions, head_dim, self.cfg.rope_base)
        return self._rotation

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self) -> float:
        """Training FLOPs (forward + backward) per token, as in the PaLM paper's appendix."""
        c = self.cfg
        return 6 * self.num_parameters() + 12 * c.n_layer * c.n_embd * c.block_size

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None, last_only: bool = False) -> torch.Tensor:
        B, T = idx.shape
        start = cache.length if cache is not None else 0
        if start + T > self.cfg.block_size:  # a cache never slides: see the module docstring
            held = f" after {start} cached" if cache is not None else ""
            raise ValueError(f"{T} tokens{held} exceed block_size {self.cfg.block_size}")
        rotation = self._rotary(idx.device)[start:start + T]
        x = _dropout(self.drop, self.wte(idx))
        for block in self.blocks:
            x = block(x, rotation, cache)
        if cache is not None:
            cache.advance(T)
        if last_only:
            x = x[:, -1:, :]
        return self.lm_head(self.ln_f(x))

    # -- what the Trainer calls -------------------------------------------------------------------
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1))

    def eval_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, int]:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1), reduction="sum")
        return loss, y.numel()

    # -- what decoding calls ----------------------------------------------------------------------
    def cached_step(self, batch_size: int, dtype: torch.dtype | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
        """A step function for `decoding.generate_tokens` that keeps a KV cache while the context fits the
        window, then recomputes the last `block_size` tokens each step, exactly as `uncached_step` does."""
        weight = self.wte.weight
        block = self.cfg.block_size
        cache: KVCache | None = KVCache(self.cfg, batch_size, weight.device, dtype or weight.dtype)
        fed: list[torch.Tensor] = []  # what the cache holds; joined into a window only once it overflows

        def step(new_ids: torch.Tensor) -> torch.Tensor:
            nonlocal cache
            new_ids = new_ids.to(weight.device)
            fed.append(new_ids)
            if cache is not None and cache.fits(new_ids.size(1)):
                return self(new_ids, cache=cache, last_only=True)[:, -1, :].float()
            # Past the window every layer above the first must see only the window, so nothing cached
            # stays valid: recompute, and free the cache for good.
            cache = None
            window = torch.cat(fed, dim=1)[:, -block:]
            fed[:] = [window]
            return self(window, last_only=True)[:, -1, :].float()

        return step

    def uncached_step(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """A step function that recomputes the whole (cropped) context every token."""
        history: list[torch.Tensor] = []

        def step(new_ids: torch.Tensor) -> torch.Tensor:
            history.append(new_ids)
            context = torch.cat(history, dim=1)[:, -self.cfg.block_size:]
            return self(context, last_only=True)[:, -1, :].float()

        return step
