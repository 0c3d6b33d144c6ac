"""DDSP on builtin:tones: train the default audio-ddsp under a budget, then score it against a sine.

    python benchmarks/bench_ddsp.py [--minutes 10] [--set model.gru=128 ...]

Metrics (from `muselab evaluate`): `mrstft`, the multi-resolution STFT distance between held-out clips
and their resynthesis from their own f0 and loudness; `mrstft_sine_baseline`, the same distance for a
sine at the same f0 following the clip's frame energy at the best single gain; their ratio (target >=
2); `pitch_within_20_cents`, the share of pYIN-voiced frames of rendered notes across the trained range
within 20 cents of the request (target >= 0.95); `realtime_factor`, seconds of 16 kHz audio rendered per
second (decoder + synth, one batch, target >= 200) with the process's torch threads.
"""

from __future__ import annotations

import argparse

import torch
from common import budget_arguments, print_table, train_and_evaluate, write_result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    budget_arguments(parser, minutes=10.0, name="ddsp")
    args = parser.parse_args()
    result, metrics, out, command = train_and_evaluate("audio-ddsp", "builtin:tones", args, "bench_ddsp.py")
    rows = [("mrstft", metrics["mrstft"]), ("mrstft sine baseline", metrics["mrstft_sine_baseline"]),
            ("mrstft ratio", metrics["mrstft_ratio"]), ("pitch within 20 cents", metrics["pitch_within_20_cents"]),
            ("pitch voiced share", metrics["pitch_voiced_share"]),
            ("realtime factor", metrics["realtime_factor"]), ("torch threads", torch.get_num_threads()),
            ("targets", "ratio >= 2, pitch >= 0.95, realtime >= 200"), ("held-out clips", metrics["heldout_clips"]),
            ("steps", result.step), ("minutes", result.elapsed_s / 60), ("val_loss", result.val_loss),
            ("run", str(out)), ("command", command)]
    print_table(rows)
    print(f"written {write_result(args.name, dict(rows))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
