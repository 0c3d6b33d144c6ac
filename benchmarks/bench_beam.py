"""Batched beam search against decoding one hypothesis at a time, on 1,000 CMUdict test words.

    python benchmarks/bench_beam.py [--run G2P_RUN] [--words 1000] [--beam 5]

The batched search makes one model step per decoding step for all beams of all words; the reference
steps every live hypothesis of every word separately (batch of one). Both must return the same best
pronunciations. Without --run, a tiny model is trained first (speed does not depend on quality).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from common import print_table, time_call, write_result

from muselab import api
from muselab.data.pairs import load_pairs
from muselab.text.seq2seq_recipe import Seq2SeqControls
from muselab.text.vocab import BOS, EOS


def one_at_a_time(model, source_ids: list[int], beam: int, max_len: int) -> list[int]:
    """Textbook beam search: every hypothesis is its own batch of one."""
    state = model.encode(torch.tensor([source_ids]), torch.tensor([len(source_ids)]))
    live = [(0.0, [], state)]
    finished: list[tuple[float, list[int]]] = []
    for _ in range(max_len):
        candidates = []
        for score, tokens, hyp_state in live:
            prev = torch.tensor([tokens[-1] if tokens else BOS])
            logits, new_state, _ = model.decode_step(prev, hyp_state)
            logprobs = logits.log_softmax(-1)[0]
            top = logprobs.topk(beam)
            candidates += [(score + float(v), tokens + [int(i)], new_state) for v, i in zip(top.values, top.indices,
                                                                                              strict=True)]
        candidates.sort(key=lambda c: -c[0])
        live = []
        for score, tokens, hyp_state in candidates[:beam]:
            if tokens[-1] == EOS:
                finished.append((score, tokens[:-1]))
            else:
                live.append((score, tokens, hyp_state))
        if not live or (finished and max(f[0] for f in finished) >= live[0][0]):
            break
    finished += [(score, tokens) for score, tokens, _ in live]
    return max(finished, key=lambda f: f[0])[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run")
    parser.add_argument("--words", type=int, default=1000)
    parser.add_argument("--beam", type=int, default=5)
    args = parser.parse_args()
    run_dir = args.run
    if not run_dir:
        run_dir = str(Path(tempfile.mkdtemp(prefix="bench-beam-")) / "run")
        api.train("text-seq2seq", "builtin:cmudict", run_dir, preset="tiny", max_steps=200, quiet=True)
    run = api.load(run_dir)
    words = [w for w, _ in load_pairs("builtin:cmudict").test[: args.words]]
    controls = Seq2SeqControls(input=words, beam=args.beam)
    recipe, vocab = run.recipe, run.assets["source_vocab"]
    with torch.no_grad():
        batched_s, batched = time_call(
            lambda: [h[0].tokens for h in recipe.transduce(run.model, run.assets, words, controls)])
        single_s, single = time_call(
            lambda: [one_at_a_time(run.model, vocab.encode(w), args.beam, 2 * len(w) + 10) for w in words])
    agree = sum(a == b for a, b in zip(batched, single, strict=True)) / len(words)
    rows = [("words", len(words)), ("beam", args.beam), ("batched seconds", batched_s),
            ("one-at-a-time seconds", single_s), ("speed-up", single_s / batched_s),
            ("same best output", agree)]
    print_table(rows)
    print(f"written {write_result('beam', dict(rows))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
