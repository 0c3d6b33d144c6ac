"""Generation speed against Hugging Face transformers' GPT-2 `generate`, same shape, side by side in one run.

    python benchmarks/bench_generation_speed.py [--tokens 63] [--rounds 5]

Both models are freshly initialised (speed does not depend on the weights) at text-lm's default shape:
4 layers x 128, 4 heads, context 64, 65 characters. Greedy decoding from a one-token prompt, the same
number of new tokens (the context window's worth, so both stay inside it), batch 1 and 8. muselab's side is
its decoding loop with the KV cache (`generate_tokens(model.cached_step(B), ...)`, what `muselab generate`
runs per batch); HF's is `GPT2LMHeadModel.generate(do_sample=False, use_cache=True)`. transformers is a
benchmark-only dependency (the `bench` extra); without it the benchmark says so and exits 0. Rounds
alternate the sides and each side's fastest round counts, by wall clock and by this process's CPU time
(with one thread the CPU time leaves out the waits a shared machine adds: the steadier ratio). Also
checks that muselab's greedy output is the same with and without its cache.
"""

from __future__ import annotations

import argparse
import sys

import torch
from common import clocked, print_table, write_result

from muselab.text.controls import TextGenerationControls
from muselab.text.decoding import generate_tokens
from muselab.text.lm import GPT, GPTConfig

SHAPE = {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 64}
VOCAB = 65


def ours(model: GPT, batch: int, tokens: int) -> tuple[float, float]:
    prompt = torch.zeros(batch, 1, dtype=torch.long)
    controls = TextGenerationControls(max_new_tokens=tokens, temperature=0)
    with torch.inference_mode():
        return clocked(lambda: generate_tokens(model.cached_step(batch), prompt, controls))


def theirs(model, batch: int, tokens: int) -> tuple[float, float]:
    prompt = torch.zeros(batch, 1, dtype=torch.long)
    with torch.inference_mode():
        return clocked(lambda: model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=tokens,
                                              min_new_tokens=tokens, do_sample=False, use_cache=True, pad_token_id=0))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=SHAPE["block_size"] - 1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--name", default="generation_speed")
    args = parser.parse_args()
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
        from transformers.utils import logging as hf_logging
    except ImportError:
        print("skipped: transformers is not installed (pip install 'muselab[bench]')")
        return 0
    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=VOCAB, dropout=0.0, **SHAPE)).eval()
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=SHAPE["block_size"], n_embd=SHAPE["n_embd"],
                                    n_layer=SHAPE["n_layer"], n_head=SHAPE["n_head"])).eval()
    rows: list[tuple[str, object]] = [("shape", "4x128, 4 heads, context 64, vocabulary 65"),
                                      ("new tokens", args.tokens), ("rounds", args.rounds),
                                      ("threads", torch.get_num_threads())]
    for batch in (int(b) for b in args.batches.split(",")):
        ours(model, batch, 8)  # warm-up
        theirs(hf, batch, 8)
        mine, hfs = [], []
        for _ in range(args.rounds):
            mine.append(ours(model, batch, args.tokens))
            hfs.append(theirs(hf, batch, args.tokens))
        new = batch * args.tokens
        for clock, index in (("wall", 0), ("CPU", 1)):
            m, h = min(t[index] for t in mine), min(t[index] for t in hfs)
            rows += [(f"batch {batch}: muselab tokens/s ({clock})", new / m),
                     (f"batch {batch}: HF transformers tokens/s ({clock})", new / h),
                     (f"batch {batch}: muselab / HF ({clock})", h / m)]
    prompt = torch.zeros(2, 1, dtype=torch.long)
    controls = TextGenerationControls(max_new_tokens=2 * SHAPE["block_size"], temperature=0)
    with torch.inference_mode():
        same = generate_tokens(model.cached_step(2), prompt, controls) == generate_tokens(
            model.uncached_step(), prompt, controls)
    rows.append(("greedy identical with and without the cache (2 rows, 128 tokens)", same))
    rows.append(("command", " ".join(["python benchmarks/bench_generation_speed.py", *sys.argv[1:]])))
    print_table(rows)
    print(f"written {write_result(args.name, dict(rows))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
