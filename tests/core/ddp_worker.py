"""Run under torchrun by tests/core/test_resume_and_ddp.py: a few Trainer steps with DDP on a linear model
whose data source records every batch it hands out, written per rank to OUT/batches_rank{R}.json."""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for the shared helpers
from helpers import Line  # noqa: E402
from muselab.core.config import TrainConfig  # noqa: E402
from muselab.core.rundir import RunDir  # noqa: E402
from muselab.core.runtime import init_distributed, shutdown_distributed  # noqa: E402
from muselab.core.trainer import Trainer  # noqa: E402


class Recorded:
    def __init__(self):
        self.batches = []

    def sample(self, batch_size, generator):
        x = torch.randn(batch_size, 1, generator=generator)
        self.batches.append(x.flatten().tolist())
        return x, 3 * x + 1

    def eval_batches(self, batch_size, limit=0):
        gen = torch.Generator().manual_seed(123)
        for _ in range(limit or 2):
            x = torch.randn(batch_size, 1, generator=gen)
            yield x, 3 * x + 1


def main(out: Path) -> None:
    dist = init_distributed("cpu")
    torch.manual_seed(0)
    data = Recorded()
    cfg = TrainConfig(max_steps=3, batch_size=4, grad_accum=2, lr=0.1, warmup_steps=0, eval_every=0,
                      checkpoint_every=0, log_every=1, precision="fp32")  # auto's probe would draw a batch
    run = RunDir(out)
    run.path.mkdir(parents=True, exist_ok=True)
    Trainer(Line(), cfg, run, data, Recorded(), device=torch.device("cpu"), dist=dist, quiet=True).fit()
    (out / f"batches_rank{dist.rank}.json").write_text(json.dumps(data.batches))
    shutdown_distributed()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
