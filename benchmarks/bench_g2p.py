"""Grapheme-to-phoneme on CMUdict: train the default text-seq2seq under a budget, report WER and PER.

    python benchmarks/bench_g2p.py --split val --seeds 3 [--set model.coverage=false]   # to choose settings
    python benchmarks/bench_g2p.py --split test --seeds 3                               # to report, once

Splits: a word is a test word when int(md5(word.lower()), 16) % 20 == 0 and a validation word when it is 1
(stress digits stripped), so anyone can reproduce them. Settings are chosen on the validation split; the
test split is measured once per chosen configuration. WER is the share of words with any phoneme wrong;
PER is the edit distance over phonemes divided by the reference length; greedy and beam-5 numbers are both
reported. With --seeds N the configuration is trained N times (seeds 0..N-1, or from --first-seed, one
after another); each run keeps its own result file (NAME_seedK.json) and the summary (NAME.json) gives mean
and standard deviation over every NAME_seedK.json there is, with each run's step count, so seeds run in
several sittings add up (--first-seed 2 --seeds 1 adds a third seed to two).
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import statistics

from common import RESULTS, budget_arguments, print_table, train_and_evaluate, write_result

SCORES = ("wer", "per", "wer_greedy", "per_greedy")  # wer, per: with the preset's beam (5 by default)


def one_run(args: argparse.Namespace, seed: int | None) -> dict:
    run_args = copy.copy(args)
    run_args.overrides = [*args.overrides, f"eval.split={args.split}", *([f"train.seed={seed}"] if seed is not None
                                                                        else [])]
    if seed is not None:
        run_args.name = f"{args.name}_seed{seed}"
        if args.out:
            run_args.out = f"{args.out}_seed{seed}"
    result, metrics, out, command = train_and_evaluate("text-seq2seq", "builtin:cmudict", run_args, "bench_g2p.py")
    record = {**{k: metrics[k] for k in SCORES}, "split": args.split, "words": metrics[f"{args.split}_pairs"],
              "decoding": metrics["decoding"], "seed": seed, "steps": result.step, "minutes": result.elapsed_s / 60, "val_loss": metrics["val_loss"],
              "run": str(out), "command": command}
    print_table(list(record.items()))
    print(f"written {write_result(run_args.name, record)}")
    return record


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    budget_arguments(parser, minutes=30.0, name="g2p")
    parser.add_argument("--split", choices=["val", "test"], default="val",
                        help="val to choose settings (default), test to report a chosen configuration once")
    parser.add_argument("--seeds", type=int, default=1, help="train this many times, seeds 0..N-1")
    parser.add_argument("--first-seed", type=int, default=None, help="start the seeds here (default 0)")
    args = parser.parse_args()
    if args.seeds == 1 and args.first_seed is None:
        one_run(args, None)
        return 0
    first = args.first_seed or 0
    for seed in range(first, first + args.seeds):
        one_run(args, seed)
    # every seed of this name measured so far, this sitting's and earlier ones'
    seeded = re.compile(rf"{re.escape(args.name)}_seed(\d+)")
    found = [(int(m.group(1)), f) for f in RESULTS.glob("*.json") if (m := seeded.fullmatch(f.stem))]
    files = [f for _, f in sorted(found)]
    runs = [json.loads(f.read_text()) for f in files]
    if len(runs) < 2:
        print(f"one seed of {args.name} so far: no summary")
        return 0
    summary = {"split": args.split, "seeds": [r["seed"] for r in runs], "overrides": args.overrides,
               "minutes": args.minutes, "steps": [r["steps"] for r in runs], "runs": [f.name for f in files]}
    for key in SCORES:
        values = [r[key] for r in runs]
        summary[key] = {"mean": statistics.mean(values), "std": statistics.stdev(values), "values": values}
    print_table([(key, f"{100 * summary[key]['mean']:.2f} ± {100 * summary[key]['std']:.2f} %") for key in SCORES]
                + [("steps", summary["steps"])])
    print(f"written {write_result(args.name, summary)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
