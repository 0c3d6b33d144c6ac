"""Small data, one budget: the sized default preset against the old fixed one, side by side in one run.

    python benchmarks/bench_small_data.py [--minutes 5] [--chars 230000]

Data: builtin:words (English words, one per line, shuffled) cut to its first `--chars` characters at a
line end; the last 10 % is the validation split. Both arms train text-lm for `--minutes` of wall clock
with the same seed and precision auto:
- "sized": the default preset as it is now (its sizing rule picks the model for the data and budget);
- "old default": the preset before the rule, as explicit --set overrides (4x128, context 64, dropout 0,
  batch 32, lr 5e-3, max_steps=2000, which ended training before the budget did).
The bar (issue 15): the sized arm's final validation loss is within 1 % of its best, and at least 0.05 nats
below the old default's (its last weights, which it kept then; its best weights are reported too).
Validation losses are over the whole split (nats per character).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from common import print_table, write_result

from muselab import api
from muselab.data.text import load_text_corpus

OLD_DEFAULT = [
    "model.n_layer=4", "model.n_head=4", "model.n_embd=128", "model.block_size=64", "model.dropout=0.0",
    "train.max_steps=2000", "train.batch_size=32", "train.lr=5e-3", "train.warmup_steps=100",
    "train.min_lr_ratio=0.05", "train.weight_decay=0.1", "train.beta2=0.99", "train.eval_every=250",
    "train.eval_batches=20", "train.checkpoint_every=250",
]


def cut_words(chars: int, folder: Path) -> Path:
    text = load_text_corpus("builtin:words").text[:chars]
    path = folder / f"words_{chars}.txt"
    path.write_text(text[: text.rfind("\n") + 1], encoding="utf-8")
    return path


def arm(name: str, data: Path, folder: Path, minutes: float, overrides: list[str]) -> dict[str, object]:
    out = folder / name.replace(" ", "_")
    result = api.train("text-lm", str(data), out, overrides=overrides, max_minutes=minutes, overwrite=True,
                       quiet=not sys.stderr.isatty())
    run = api.load(out)
    model = run.config.model
    sizing = run.saved.get("sizing") or {}
    rule = f"{sizing['rule']} ({len(sizing['overridden'])} of {len(sizing['chose'])} choices overridden)" \
        if sizing else "none"
    return {"shape": f"{model.n_layer}x{model.n_embd}, context {model.block_size}, dropout {model.dropout}",
            "rule": rule, "steps": result.step,
            "minutes": result.elapsed_s / 60, "stopped_by": result.stopped_by, "best_val_loss": result.best_val_loss,
            "best_step": result.best_step, "final_val_loss": result.final_val_loss,
            "precision": run.config.train.precision}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=5.0, help="budget of each arm")
    parser.add_argument("--chars", type=int, default=230_000)
    parser.add_argument("--out", help="keep the data and both runs here (default: a temporary folder)")
    parser.add_argument("--variant", action="append", default=[], metavar="KEY=VALUE[,KEY=VALUE]",
                        help="also train the sized default with these overrides (an arm per --variant), to see "
                             "whether a change to the rule would do better")
    parser.add_argument("--name", default="small_data")
    args = parser.parse_args()
    folder = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench-small-data-"))
    folder.mkdir(parents=True, exist_ok=True)
    data = cut_words(args.chars, folder)
    sized = arm("sized", data, folder, args.minutes, [])
    old = arm("old default", data, folder, args.minutes, OLD_DEFAULT)
    variants = {f"sized + {v}": arm(f"variant_{i}", data, folder, args.minutes, v.split(","))
                for i, v in enumerate(args.variant)}
    final, best = sized["final_val_loss"], sized["best_val_loss"]
    rows: list[tuple[str, object]] = [("data", f"builtin:words, first {len(data.read_text()):,} characters"),
                                      ("budget per arm (minutes)", args.minutes)]
    for name, values in (("sized", sized), ("old default", old), *variants.items()):
        rows += [(f"{name}: {key}", value) for key, value in values.items()]
    rows += [
        ("sized: final within 1 % of best", final <= 1.01 * best),
        ("gain over the old default's last weights (nats)", old["final_val_loss"] - final),
        ("gain over the old default's best weights (nats)", old["best_val_loss"] - final),
        ("bar met (within 1 % and >= 0.05 nats over its last weights)",
         final <= 1.01 * best and old["final_val_loss"] - final >= 0.05),
        ("command", f"python benchmarks/bench_small_data.py --minutes {args.minutes:g} --chars {args.chars}"
                    + "".join(f" --variant {v}" for v in args.variant)),
    ]
    print_table(rows)
    print(f"written {write_result(args.name, dict(rows))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
