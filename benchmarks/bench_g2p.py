"""Grapheme-to-phoneme on CMUdict: train the default text-seq2seq under a budget, report WER and PER.

    python benchmarks/bench_g2p.py [--minutes 30] [--set model.hidden=384 ...]

Test split: a word is a test word when int(md5(word.lower()), 16) % 20 == 0 (stress digits stripped),
so anyone can reproduce it. WER is the share of test words with any phoneme wrong; PER is the edit
distance over phonemes divided by the reference length. Both greedy and beam-5 numbers are reported.
"""

from __future__ import annotations

import argparse

from common import budget_arguments, print_table, train_and_evaluate, write_result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    budget_arguments(parser, minutes=30.0, name="g2p")
    args = parser.parse_args()
    result, metrics, out, command = train_and_evaluate("text-seq2seq", "builtin:cmudict", args, "bench_g2p.py")
    rows = [("WER beam 5", metrics["wer_beam5"]), ("PER beam 5", metrics["per_beam5"]),
            ("WER greedy", metrics["wer_greedy"]), ("PER greedy", metrics["per_greedy"]),
            ("targets", "WER <= 0.30, PER <= 0.08"), ("test words", metrics["test_pairs"]),
            ("steps", result.step), ("minutes", result.elapsed_s / 60), ("val_loss", metrics["val_loss"]),
            ("run", str(out)), ("command", command)]
    print_table(rows)
    print(f"written {write_result(args.name, dict(rows))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
