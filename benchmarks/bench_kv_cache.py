"""Generation speed with and without the KV cache, 512 new tokens, side by side in one run.

    python benchmarks/bench_kv_cache.py [--run RUN] [--tokens 512]

Without --run it measures freshly initialised models of the text-lm `default` and `base` preset shapes
(speed does not depend on the weights). Also checks that greedy output is identical both ways within
the context window.
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


def timed(step_fn, prompt: torch.Tensor, tokens: int) -> tuple[float, list[list[int]]]:
    controls = TextGenerationControls(max_new_tokens=tokens, temperature=0)
    return time_call(lambda: generate_tokens(step_fn, prompt, controls))


def measure(name: str, model: GPT, tokens: int) -> list[tuple[str, object]]:
    prompt = torch.zeros(1, 1, dtype=torch.long)
    with torch.no_grad():
        timed(model.cached_step(1), prompt, 16)  # warm-up
        cached_s, cached = timed(model.cached_step(1), prompt, tokens)
        uncached_s, uncached = timed(model.uncached_step(), prompt, tokens)
        window = model.cfg.block_size - 1
        same = generate_tokens(model.cached_step(1), prompt, TextGenerationControls(
            max_new_tokens=window, temperature=0)) == generate_tokens(model.uncached_step(), prompt,
                                                                      TextGenerationControls(max_new_tokens=window,
                                                                                             temperature=0))
    return [(f"{name}: shape", f"{model.cfg.n_layer}x{model.cfg.n_embd}, context {model.cfg.block_size}"),
            (f"{name}: cached tokens/s", tokens / cached_s), (f"{name}: uncached tokens/s", tokens / uncached_s),
            (f"{name}: speed-up", uncached_s / cached_s),
            (f"{name}: greedy identical within the context", same)]


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
