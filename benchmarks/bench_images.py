"""Image quality targets: train the default preset under a budget, evaluate offline, report.

    python benchmarks/bench_images.py digits-gan     # conditional GAN, builtin:digits, 5 minutes
    python benchmarks/bench_images.py digits-vae     # conditional VAE, builtin:digits, 5 minutes
    python benchmarks/bench_images.py shapes-gan     # conditional GAN, builtin:shapes 32x32, 15 minutes

Control accuracy is judged by a classifier muselab trains on the data alone (never by the run it
judges); its own test accuracy is reported beside it. 1,000 samples per label. `fd_muselab` and
`kid_muselab` are the Fréchet and kernel distances on that classifier's features, not Inception's: they
are not FID or KID and compare only with each other on the same data.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from common import print_table, write_result

from muselab import api

TARGETS = {
    "digits-gan": ("image-gan", "builtin:digits", 5.0, "control_accuracy >= 0.90"),
    "digits-vae": ("image-vae", "builtin:digits", 5.0, "control_accuracy >= 0.85"),
    "shapes-gan": ("image-gan", "builtin:shapes", 15.0, "control_accuracy >= 0.80"),
}
SHOWN = ("control_accuracy", "classifier_test_accuracy", "fd_muselab", "kid_muselab", "precision", "recall",
         "memorization_share", "test_neg_elbo_nats", "test_reconstruction_mse")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", choices=sorted(TARGETS))
    parser.add_argument("--minutes", type=float, help="training budget (default: the target's)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", help="keep the run here (default: a temporary folder)")
    args = parser.parse_args()
    recipe, data, minutes, goal = TARGETS[args.target]
    minutes = args.minutes or minutes
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix=f"bench-{args.target}-")) / "run"
    overrides = ["model.conditional=true", *args.overrides]
    result = api.train(recipe, data, out, overrides=overrides, max_minutes=minutes, overwrite=True,
                       quiet=not sys.stderr.isatty())
    metrics = api.evaluate(out)
    command = (f"python benchmarks/bench_images.py {args.target} --minutes {minutes:g}"
               + "".join(f" --set {o}" for o in args.overrides))
    rows = [(key, metrics[key]) for key in SHOWN if key in metrics]
    rows += [("target", goal), ("samples", metrics["samples"]), ("steps", result.step),
             ("minutes", result.elapsed_s / 60), ("run", str(out)), ("command", command)]
    print_table(rows)
    print(f"written {write_result(f'images_{args.target}', dict(rows))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
