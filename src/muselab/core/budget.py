"""A wall-clock training budget: how much of it training steps may use, from measured costs.

`--max-minutes N` means the run ends within a few seconds of N minutes of wall clock, the final
validation and checkpoint included: training stops when the next step, and the validation or checkpoint
it brings, would run into the time those last two need. Their costs are measured as the run goes (the
first validation batch is timed before training starts) and step times are a running average.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TimeBudget:
    seconds: float  # the whole budget
    step_s: float = 0.0  # running average of one training step
    val_batch_s: float = 0.0  # one validation batch, as last measured
    final_batches: int = 0  # batches in a validation (train.eval_batches, or all of a small split)
    checkpoint_s: float = 0.0  # writing a checkpoint, as last measured (estimated before the first)
    snapshot_s: float = 0.0  # the recipe's after-validation hook (a sample grid), as last measured

    def observe_step(self, seconds: float) -> None:
        self.step_s = seconds if self.step_s == 0.0 else 0.8 * self.step_s + 0.2 * seconds

    def validation_s(self) -> float:
        return self.val_batch_s * self.final_batches

    def reserve_s(self) -> float:
        """What the end of the run takes: the final validation, its hook and the final checkpoint."""
        return self.validation_s() + self.snapshot_s + self.checkpoint_s

    def training_s(self) -> float:
        """Seconds of the budget that training (steps, periodic validations and checkpoints) may use."""
        return max(1e-3, self.seconds - self.reserve_s())
