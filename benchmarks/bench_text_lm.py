"""Train the default text-lm on tinyshakespeare under a wall-clock budget and report the quality bar.

    python benchmarks/bench_text_lm.py [--minutes 5] [--set model.n_layer=6 ...]

Split: first 90 % train, last 10 % validation (text-lm's data.val_fraction=0.1); the validation loss
is averaged over the whole split. Also reports tokens/s and model FLOPs utilisation against a matmul
peak measured in the same run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from common import SHARED_DATA, matmul_peak_gflops, print_table, write_result

from muselab import api
from muselab.core.rundir import RunDir


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(SHARED_DATA / "tinyshakespeare.txt"))
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--preset", default="default")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", help="keep the run here (default: a temporary folder)")
    parser.add_argument("--name", default="text_lm", help="result file name under benchmarks/results/")
    args = parser.parse_args()
    if not Path(args.data).is_file():
        print(f"skipped: {args.data} not found (it lives in ../shared/data beside the checkout)")
        return 0

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench-text-lm-")) / "run"
    result = api.train("text-lm", args.data, out, preset=args.preset, overrides=args.overrides,
                       max_minutes=args.minutes, overwrite=True, quiet=not sys.stderr.isatty())
    run = api.load(out)
    cfg = run.config
    records = [r for r in RunDir(out).read_metrics() if "examples_per_s" in r]
    steady = records[len(records) // 5:] or records  # skip warm-up
    examples_per_s = sum(r["examples_per_s"] for r in steady) / len(steady)
    tokens_per_s = examples_per_s * cfg.model.block_size
    achieved = run.model.flops_per_token() * tokens_per_s / 1e9
    peak = matmul_peak_gflops()
    command = (f"python benchmarks/bench_text_lm.py --minutes {args.minutes:g} --preset {args.preset}"
               + "".join(f" --set {o}" for o in args.overrides))
    rows = [
        ("val_loss (nats/char, whole split)", result.val_loss),
        ("target", 1.65),
        ("steps", result.step),
        ("minutes", result.elapsed_s / 60),
        ("parameters", run.model.num_parameters()),
        ("tokens/s", tokens_per_s),
        ("model GFLOP/s", achieved),
        ("fp32 matmul peak GFLOP/s", peak),
        ("MFU", achieved / peak),
        ("precision", cfg.train.precision),
        ("command", command),
    ]
    print_table(rows)
    path = write_result(args.name, {k: v for k, v in rows} | {"config": cfg.model_dump()})
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
