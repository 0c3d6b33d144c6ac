"""Generation speed with and without the KV cache, 512 new tokens, side by side in one run.

    python benchmarks/bench_kv_cache.py [--run RUN] [--tokens 512]

Without --run it measures freshly initialised models of the text-lm `default` and `base` preset shapes
(speed does not depend on the weights). Steps inside the context window and past it are timed apart:
past the window the cached step recomputes the window, as the uncached one does. Also checks that
greedy output is identical both ways over all new tokens.
"""

from __future__ import annotations

import argparse

import torch
from common import print_table, time_call, write_result

from muselab import api
from muselab.core.config import build_config
from muselab.text.controls import TextGenerationControls
from muselab.text.decoding import generate_tokens
from muselab.text.lm import GPT
from muselab.text.lm_recipe import TextLMConfig, TextLMRecipe


def preset_model(preset: str, vocab: int = 65) -> GPT:
    cfg = build_config(TextLMConfig, [TextLMRecipe.presets[preset]])
    torch.manual_seed(0)
    return GPT(cfg.model.model_copy(update={"vocab_size": vocab})).eval()


def timed(step_fn, prompt: torch.Tensor, tokens: int, block: int) -> tuple[list[float], int, list[list[int]]]:
    """Seconds per step, how many steps ran with the whole context inside the window, and the output."""
    seconds: list[float] = []
    fed = 0

    def step(new_ids: torch.Tensor) -> torch.Tensor:
        nonlocal fed
        fed += new_ids.size(1)
        elapsed, logits = time_call(lambda: step_fn(new_ids))
        seconds.append(elapsed)
        return logits

    out = generate_tokens(step, prompt, TextGenerationControls(max_new_tokens=tokens, temperature=0))
    inside = min(tokens, block - prompt.size(1) + 1)
    return seconds, inside, out


def measure(name: str, model: GPT, tokens: int) -> list[tuple[str, object]]:
    prompt = torch.zeros(1, 1, dtype=torch.long)
    block = model.cfg.block_size
    with torch.no_grad():
        timed(model.cached_step(1), prompt, 16, block)  # warm-up
        cached_s, inside, cached = timed(model.cached_step(1), prompt, tokens, block)
        uncached_s, _, uncached = timed(model.uncached_step(), prompt, tokens, block)
    rows: list[tuple[str, object]] = [(f"{name}: shape", f"{model.cfg.n_layer}x{model.cfg.n_embd}, context {block}")]
    for part, steps in (("all", slice(None)), ("inside the window", slice(0, inside)),
                        ("past the window", slice(inside, None))):
        count = len(cached_s[steps])
        if not count:
            continue
        c, u = sum(cached_s[steps]), sum(uncached_s[steps])
        rows += [(f"{name}: {part}: tokens", count), (f"{name}: {part}: cached tokens/s", count / c),
                 (f"{name}: {part}: uncached tokens/s", count / u), (f"{name}: {part}: speed-up", u / c)]
    return rows + [(f"{name}: greedy identical over all new tokens", cached == uncached)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="a trained text-lm run directory")
    parser.add_argument("--tokens", type=int, default=512)
    args = parser.parse_args()
    models = {"run": api.load(args.run).model} if args.run else {p: preset_model(p) for p in ("default", "base")}
    rows: list[tuple[str, object]] = [("new tokens", args.tokens)]
    for name, model in models.items():
        rows += measure(name, model, args.tokens)
    print_table(rows)
    print(f"written {write_result('kv_cache', dict(rows))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
