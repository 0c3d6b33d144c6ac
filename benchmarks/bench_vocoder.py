"""Neural vocoder vs Griffin-Lim on builtin:tones: train the default audio-vocoder under a budget, then
score both on the held-out clips from the same mels.

    python benchmarks/bench_vocoder.py [--minutes 8] [--set model.adversarial=true ...]

Held-out clips: a tenth of each instrument's clips, chosen by the shared stable-hash rule (muselab.data.tones.tones_split),
60 s scored.
MRSTFT is the multi-resolution STFT distance to the original (6 resolutions, spectral convergence +
log magnitude), MCD the mel cepstral distortion in dB (24 coefficients); lower is better for both.
Speed is seconds of audio made per wall-clock second on this machine's CPU threads (x real time).
"""

from __future__ import annotations

import argparse

import torch
from common import budget_arguments, print_table, train_and_evaluate, write_result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    budget_arguments(parser, minutes=8.0, name="vocoder")
    args = parser.parse_args()
    result, metrics, out, command = train_and_evaluate("audio-vocoder", "builtin:tones", args, "bench_vocoder.py")

    side_by_side = [("MRSTFT (lower is better)", metrics["mrstft"], metrics["mrstft_griffin_lim"]),
                    ("MCD dB (lower is better)", metrics["mcd"], metrics["mcd_griffin_lim"]),
                    ("x real time (higher is better)", metrics["realtime_factor"],
                     metrics["realtime_factor_griffin_lim"])]
    print(f"{'':<31}{'vocoder':>10}{'Griffin-Lim-32':>16}{'ratio':>8}")
    for label, ours, baseline in side_by_side:
        print(f"{label:<31}{ours:>10.3f}{baseline:>16.3f}{ours / baseline:>8.2f}")
    rows = [("mrstft", metrics["mrstft"]), ("mrstft_griffin_lim", metrics["mrstft_griffin_lim"]),
            ("mcd", metrics["mcd"]), ("mcd_griffin_lim", metrics["mcd_griffin_lim"]),
            ("realtime_factor", metrics["realtime_factor"]),
            ("realtime_factor_griffin_lim", metrics["realtime_factor_griffin_lim"]),
            ("targets", "MRSTFT and MCD below Griffin-Lim-32, >= 20x real time"),
            ("eval seconds", metrics["eval_seconds"]), ("generator parameters", metrics["generator_parameters"]),
            ("threads", torch.get_num_threads()), ("steps", result.step), ("minutes", result.elapsed_s / 60),
            ("val_loss (log-mel L1)", result.val_loss), ("run", str(out)), ("command", command)]
    print_table(rows)
    print(f"written {write_result(args.name, dict(rows))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
