"""Grapheme-to-phoneme on CMUdict: train the default text-seq2seq under a budget, report WER and PER.

    python benchmarks/bench_g2p.py --split val --seeds 3 [--set model.coverage=false]   # to choose settings
    python benchmarks/bench_g2p.py --split test --seeds 3                               # to report, once

Splits: a word is a test word when int(md5(word.lower()), 16) % 20 == 0 and a validation word when it is 1
(stress digits stripped), so anyone can reproduce them. Settings are chosen on the validation split; the
test split is measured once per chosen configuration. WER is the share of words with any phoneme wrong;
PER is the edit distance over phonemes divided by the reference length; greedy and beam-5 numbers are both
reported. With --seeds N the configuration is trained N times (seeds 0..N-1, one after another) and the
summary gives mean and standard deviation with every run's step count; each run keeps its own result file.
"""

from __future__ import annotations

import argparse
import copy
import statistics

from common import budget_arguments, print_table, train_and_evaluate, write_result

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
    args = parser.parse_args()
    if args.seeds == 1:
        one_run(args, None)
        return 0
    runs = [one_run(args, seed) for seed in range(args.seeds)]
    summary = {"split": args.split, "seeds": args.seeds, "overrides": args.overrides, "minutes": args.minutes,
               "steps": [r["steps"] for r in runs], "runs": [f"{args.name}_seed{r['seed']}.json" for r in runs]}
    for key in SCORES:
        values = [r[key] for r in runs]
        summary[key] = {"mean": statistics.mean(values), "std": statistics.stdev(values), "values": values}
    print_table([(key, f"{100 * summary[key]['mean']:.2f} ± {100 * summary[key]['std']:.2f} %") for key in SCORES]
                + [("steps", summary["steps"])])
    print(f"written {write_result(args.name, summary)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
