"""DDSP: train the default audio-ddsp under a budget, then score it against two baselines.

    python benchmarks/bench_ddsp.py [--minutes 10] [--data builtin:soundfont] [--set model.gru=128 ...]

Data: builtin:tones (muselab's synthetic instruments, the default) or builtin:soundfont (a real sampled
instrument, violin unless `--set data.instrument=flute`; results go to ddsp_soundfont-INSTRUMENT.json).

Metrics (from `muselab evaluate`): `mrstft`, the multi-resolution STFT distance between held-out clips
and their resynthesis from their own f0 and loudness; `mrstft_sine_baseline`, the same distance for a
sine at the same f0 following the clip's frame energy at the best single gain; their ratio (target >=
2); `mrstft_avg_spectrum_baseline`, the same distance for the training set's average harmonic spectrum and
noise played through muselab's synth at the clip's f0 and loudness (the stronger baseline);
`timbre_mfcc_dtw`, a timbre measure apart from the training loss: the mean distance between librosa MFCCs
(c1..c19) of the resynthesis and the real clip along their DTW path, with the same for both baselines, and
`timbre_mfcc_dtw_ratio` (average-spectrum baseline / model, > 1 means the model is closer to the real
timbre); `pitch_within_20_cents`, the share of pYIN-voiced frames of rendered notes across the trained range
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
    parser.add_argument("--data", default="builtin:tones", help="builtin:tones, builtin:soundfont or a folder")
    args = parser.parse_args()
    if args.data == "builtin:soundfont" and args.name == "ddsp":
        instrument = next((o.split("=", 1)[1] for o in args.overrides if o.startswith("data.instrument=")), "violin")
        args.name = f"ddsp_soundfont-{instrument.replace(' ', '-')}"
    result, metrics, out, command = train_and_evaluate("audio-ddsp", args.data, args, "bench_ddsp.py")
    command += f" --data {args.data}" if args.data != "builtin:tones" else ""
    rows = [("mrstft", metrics["mrstft"]), ("mrstft sine baseline", metrics["mrstft_sine_baseline"]),
            ("mrstft ratio", metrics["mrstft_ratio"]),
            ("mrstft avg spectrum baseline", metrics["mrstft_avg_spectrum_baseline"]),
            ("timbre mfcc dtw", metrics["timbre_mfcc_dtw"]),
            ("timbre mfcc dtw avg spectrum baseline", metrics["timbre_mfcc_dtw_avg_spectrum_baseline"]),
            ("timbre mfcc dtw sine baseline", metrics["timbre_mfcc_dtw_sine_baseline"]),
            ("timbre mfcc dtw ratio", metrics["timbre_mfcc_dtw_ratio"]), ("pitch within 20 cents", metrics["pitch_within_20_cents"]),
            ("pitch voiced share", metrics["pitch_voiced_share"]),
            ("realtime factor", metrics["realtime_factor"]), ("torch threads", torch.get_num_threads()),
            ("targets", "mrstft ratio >= 2, timbre ratio > 1, pitch >= 0.95, realtime >= 200"), ("held-out clips", metrics["heldout_clips"]), ("data", args.data),
            ("steps", result.step), ("minutes", result.elapsed_s / 60), ("val_loss", result.val_loss),
            ("run", str(out)), ("command", command)]
    print_table(rows)
    print(f"written {write_result(args.name, dict(rows))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
