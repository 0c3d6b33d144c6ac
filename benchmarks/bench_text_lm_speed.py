"""text-lm training speed against nanoGPT's model and loop, same shape, data, batch and precision, in one run.

    python benchmarks/bench_text_lm_speed.py [--nanogpt ../shared/baselines/nanogpt] [--steps 60] [--rounds 3]

nanoGPT's `model.py` (MIT, Karpathy) is imported from the folder given (default: ../shared/baselines/nanogpt
beside the checkout) and never copied here; without it the benchmark says so and exits 0. Its loop is
nanoGPT's train.py loop: random windows, forward under the precision's autocast, backward, gradient
clipping at 1.0, AdamW step, zero_grad(set_to_none=True), learning rate set every step. muselab's side is
`api.train` (the Trainer, with its logging, budget checks and per-step seeding) on the same data, timed as
a run of N more steps less a shorter run (the set-up, final validation and checkpoint cancel out). Shape: 4 layers x 128, 4 heads, context 64, batch 32, no dropout, builtin:words as
characters. Rounds alternate the two sides, each side's fastest round counts (the least disturbed by
other work on a shared machine), by wall clock and by this process's CPU time (with one thread, CPU time
leaves out the waits a shared machine adds: the steadier ratio); read the ratios, not the absolutes.
Precisions: fp32, bf16 autocast on both sides, and "auto": muselab's default (`train.precision=auto`, which
times both here) against nanoGPT's own CPU default (fp32; its train.py autocasts only on GPUs).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
from pathlib import Path

import torch
from common import clocked, print_table, write_result

from muselab import api
from muselab.data.text import load_text_corpus

SHAPE = {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 64}
BATCH = 32
WARM_UP = 5  # steps before the clock starts
DEFAULT_NANOGPT = Path(__file__).resolve().parents[2] / "shared" / "baselines" / "nanogpt"


def load_nanogpt(folder: Path):
    spec = importlib.util.spec_from_file_location("nanogpt_model", folder / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def nanogpt_ms_per_step(nanogpt, ids: torch.Tensor, vocab: int, steps: int, precision: str) -> tuple[float, float]:
    torch.manual_seed(0)
    model = nanogpt.GPT(nanogpt.GPTConfig(vocab_size=vocab, dropout=0.0, bias=False, **SHAPE))
    model.train()
    optimizer = model.configure_optimizers(0.1, 5e-3, (0.9, 0.99), "cpu")
    block = SHAPE["block_size"]
    context = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")

    def get_batch():
        starts = torch.randint(len(ids) - block, (BATCH,))
        x = torch.stack([ids[i:i + block] for i in starts])
        y = torch.stack([ids[i + 1:i + 1 + block] for i in starts])
        return x, y

    def step(i: int) -> None:
        for group in optimizer.param_groups:
            group["lr"] = 5e-3
        x, y = get_batch()
        with context:
            _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i % 10 == 0:
            loss.item()

    for i in range(WARM_UP):
        step(i)
    wall, cpu = clocked(lambda: [step(i) for i in range(steps)])
    return 1000 * wall / steps, 1000 * cpu / steps


def muselab_ms_per_step(data: Path, steps: int, precision: str, folder: Path) -> tuple[float, float]:
    """The Trainer's whole loop: a run of WARM_UP + steps steps less one of WARM_UP steps (the set-up, the final
    validation of one batch and the final checkpoint cancel out)."""
    overrides = [f"model.{k}={v}" for k, v in SHAPE.items()] + [
        "model.dropout=0.0", f"train.batch_size={BATCH}", "train.eval_every=0", "train.checkpoint_every=0",
        "train.eval_batches=1", f"train.precision={precision}"]

    def train(n: int) -> tuple[float, float]:
        return clocked(lambda: api.train("text-lm", str(data), folder / f"muselab_{precision}_{n}",
                                         overrides=overrides, max_steps=n, overwrite=True, quiet=True))

    short, long = train(WARM_UP), train(WARM_UP + steps)
    return 1000 * (long[0] - short[0]) / steps, 1000 * (long[1] - short[1]) / steps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nanogpt", type=Path, default=DEFAULT_NANOGPT, help="folder holding nanoGPT's model.py")
    parser.add_argument("--steps", type=int, default=60, help="timed steps per side and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--precisions", default="fp32,bf16,auto",
                        help="auto: muselab's train.precision=auto against nanoGPT as its train.py runs on a CPU "
                             "(fp32: it autocasts only on GPUs)")
    parser.add_argument("--name", default="text_lm_speed")
    args = parser.parse_args()
    if not (args.nanogpt / "model.py").is_file():
        print(f"skipped: nanoGPT's model.py not found in {args.nanogpt} (give --nanogpt FOLDER)")
        return 0
    nanogpt = load_nanogpt(args.nanogpt)
    folder = Path(tempfile.mkdtemp(prefix="bench-text-lm-speed-"))
    text = load_text_corpus("builtin:words").text[:230_000]
    data = folder / "words.txt"
    data.write_text(text, encoding="utf-8")
    chars = sorted(set(text))
    ids = torch.tensor([chars.index(c) + 1 for c in text], dtype=torch.long)  # 0 is the unknown character
    vocab = len(chars) + 1
    tokens_per_step = BATCH * SHAPE["block_size"]
    rows: list[tuple[str, object]] = [
        ("shape", "4x128, 4 heads, context 64, batch 32, no dropout"), ("steps per round", args.steps),
        ("rounds", args.rounds), ("threads", torch.get_num_threads())]
    for precision in args.precisions.split(","):
        nano, ours = [], []
        for _ in range(args.rounds):
            nano.append(nanogpt_ms_per_step(nanogpt, ids, vocab, args.steps, "fp32" if precision == "auto" else precision))
            ours.append(muselab_ms_per_step(data, args.steps, precision, folder))
        if precision == "auto":
            resolved = api.load(folder / f"muselab_auto_{WARM_UP + args.steps}").config.train.precision
            rows.append(("auto: muselab's precision auto chose", resolved))
        for clock, index in (("wall", 0), ("CPU", 1)):
            n, o = min(t[index] for t in nano), min(t[index] for t in ours)
            rows += [(f"{precision}: nanoGPT ms/step ({clock}; rounds)", f"{n:.1f}; " + ", ".join(
                         f"{t[index]:.1f}" for t in nano)),
                     (f"{precision}: muselab ms/step ({clock}; rounds)", f"{o:.1f}; " + ", ".join(
                         f"{t[index]:.1f}" for t in ours)),
                     (f"{precision}: nanoGPT tokens/s ({clock})", tokens_per_step * 1000 / n),
                     (f"{precision}: muselab tokens/s ({clock})", tokens_per_step * 1000 / o),
                     (f"{precision}: muselab / nanoGPT tokens/s ({clock})", n / o)]
    rows.append(("command", " ".join(["python benchmarks/bench_text_lm_speed.py", *sys.argv[1:]])))
    print_table(rows)
    print(f"written {write_result(args.name, dict(rows))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
