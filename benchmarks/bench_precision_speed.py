"""Training steps/s of the image and audio recipes in fp32 and bf16 autocast, and what precision auto picks.

    python benchmarks/bench_precision_speed.py [--recipes image-gan,image-vae,image-diffusion,audio-ddsp,audio-vocoder]
                                               [--preset default] [--steps 10] [--rounds 3]

Each recipe's default data is prepared once; then, rounds alternating, a fresh model (same seed) takes
`--steps` real optimizer steps through the Trainer in each precision after a warm-up step (what
`muselab train --dry-run` times). Each precision's fastest round counts; on a shared machine read the
ratios. `auto` is what `train.precision=auto` resolves to here, with its reason (a timed probe on
CPUs with bf16 units, cached per machine and model shape).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from common import print_table, write_result

from muselab import api
from muselab.core.rundir import RunDir
from muselab.core.trainer import Trainer

RECIPES = "image-gan,image-vae,image-diffusion,audio-ddsp,audio-vocoder"


def step_seconds(recipe, cfg, prepared, precision: str, steps: int, folder: Path) -> tuple[float, float, Trainer]:
    """(wall, CPU) seconds per optimizer step in `precision`, and the Trainer that took them."""
    cfg = cfg.model_copy(deep=True)
    cfg.train.precision = precision
    torch.manual_seed(0)
    model = recipe.build_model(cfg, prepared.assets)
    trainer = Trainer(model, cfg.train, RunDir(folder), prepared.train, prepared.val, device=torch.device("cpu"),
                      quiet=True)
    cpu = time.process_time()
    _, wall = trainer.estimate_steps(probe_steps=steps)
    return wall, (time.process_time() - cpu) / (steps + 1), trainer  # CPU time includes the warm-up step


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", default=RECIPES)
    parser.add_argument("--preset", default="default")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--name", default="precision_speed")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-precision-"))
    rows: list[tuple[str, object]] = [("preset", args.preset), ("steps per round", args.steps),
                                      ("rounds", args.rounds), ("threads", torch.get_num_threads())]
    for name in args.recipes.split(","):
        recipe, cfg, prepared, _ = api.prepare_run(name, preset=args.preset, max_steps=1000)
        times: dict[str, list[tuple[float, float]]] = {"fp32": [], "bf16": []}
        try:
            for _ in range(args.rounds):
                for precision in times:
                    wall, cpu, _ = step_seconds(recipe, cfg, prepared, precision, args.steps, folder)
                    times[precision].append((wall, cpu))
        except (RuntimeError, TypeError) as err:  # an op without bf16 support
            rows.append((f"{name}: bf16 fails", str(err).splitlines()[0]))
            continue
        auto = step_seconds(recipe, cfg, prepared, "auto", 1, folder)[2].precision_choice
        fp32_wall, bf16_wall = (min(t[0] for t in times[p]) for p in ("fp32", "bf16"))
        fp32_cpu, bf16_cpu = (min(t[1] for t in times[p]) for p in ("fp32", "bf16"))
        rows += [(f"{name}: fp32 steps/s", 1 / fp32_wall), (f"{name}: bf16 steps/s", 1 / bf16_wall),
                 (f"{name}: bf16 / fp32 (wall)", fp32_wall / bf16_wall),
                 (f"{name}: bf16 / fp32 (CPU)", fp32_cpu / bf16_cpu),
                 (f"{name}: auto chose", f"{auto.value} ({auto.reason})")]
    rows.append(("command", f"python benchmarks/bench_precision_speed.py --recipes {args.recipes} --preset "
                            f"{args.preset} --steps {args.steps} --rounds {args.rounds}"))
    print_table(rows)
    print(f"written {write_result(args.name, dict(rows))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
