"""The one Trainer. Models say how to compute their loss; this knows everything else.

Devices, bf16 autocast, gradient accumulation, clipping, EMA, the warm-up + cosine schedule, validation,
wall-clock budgets, atomic checkpoints, exact resume, non-finite-loss guards, logging, progress and
data-parallel training under torchrun.

Most models have one optimizer. A model with several (a GAN's discriminator and generator) lists them
in `optimizer_phases()`; each step then runs the phases in order on the same batch, each with its own
loss (`training_step(batch, phase=name, carry=carry)`), gradient clipping and AdamW. What the phases of
one micro-batch share (a GAN's generated images) travels in a `PhaseCarry` made fresh for that
micro-batch, never on the model, so a phase's result depends only on its explicit inputs.

Exact resume rests on one rule: nothing random depends on history. The batch drawn at step s and the
dropout masks of step s come from generators seeded by (seed, step, micro-batch, rank), so a run resumed
from a checkpoint at step s replays steps s+1... exactly as the uninterrupted run did.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from muselab.core import rundir as files
from muselab.core.budget import TimeBudget
from muselab.core.checkpoint import load_into, load_tensors, read_metadata, save_tensors, weights_fingerprint
from muselab.core.config import TrainConfig
from muselab.core.errors import CheckpointError, ConfigError, TrainingDiverged
from muselab.core.io import Fields, field_problem
from muselab.core.precision import PrecisionChoice, resolve_precision
from muselab.core.progress import TrainingProgress
from muselab.core.rundir import RunDir
from muselab.core.runtime import Distributed, autocast, derive_seed, make_generator

log = logging.getLogger(__name__)


class BatchSource(Protocol):
    """Training data as the Trainer sees it."""

    def sample(self, batch_size: int, generator: torch.Generator) -> Any: ...

    def eval_batches(self, batch_size: int, limit: int = 0) -> Iterable[Any]: ...


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


@dataclass(frozen=True)
class OptimizerPhase:
    """One optimizer of a multi-optimizer model: the parameters whose names start with `prefixes`,
    trained at lr x `lr_scale` (e.g. a faster discriminator, the two-time-scale update rule)."""

    name: str
    prefixes: tuple[str, ...]
    lr_scale: float = 1.0


SINGLE_PHASE = "main"


@dataclass
class PhaseCarry:
    """What the optimizer phases of one micro-batch hand each other within one step, and the numbers they
    log beside the losses (a GAN's mean scores on real and fake images). `values` holds e.g. a GAN's
    generated images, made by whichever phase needs them first and reused by the others. The Trainer
    makes a fresh one for every micro-batch of every step; a phase called without one gets its own."""

    values: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


def optimizer_phases(model: nn.Module) -> list[OptimizerPhase]:
    if hasattr(model, "optimizer_phases"):
        return list(model.optimizer_phases())
    return [OptimizerPhase(SINGLE_PHASE, ("",))]


class _TrainingStep(nn.Module):
    """Routes DDP's forward to the model's training_step, so gradients are synchronised."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Any, phase: str = SINGLE_PHASE, carry: PhaseCarry | None = None) -> torch.Tensor:
        # The carry is passed by reference (DDP copies only tensors and containers) and never returned, so
        # DDP looks for used parameters in the loss's graph alone.
        if phase == SINGLE_PHASE:
            return self.model.training_step(batch)
        return self.model.training_step(batch, phase=phase, carry=carry)


@torch.no_grad()
def mean_loss(model: nn.Module, data: BatchSource, batch_size: int, device: torch.device, precision: str = "fp32",
              limit: int = 0) -> float | None:
    """Loss per predicted item over `limit` batches of `data` (0 = all of it), via the model's eval_step."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for batch in data.eval_batches(batch_size, limit):
        with autocast(device, precision):
            loss_sum, n = model.eval_step(to_device(batch, device))
        total += float(loss_sum)
        count += int(n)
    model.train(was_training)
    return total / count if count else None


WARMUP_SHARE = 0.05  # under a time budget, warm-up ends by this share of the training time at the latest
VALIDATIONS_PER_BUDGET = 10  # under a time budget, validate at least this often over the training time


class _CountedBatches:
    """A validation source that counts the batches it hands out (to time one batch)."""

    def __init__(self, data: BatchSource) -> None:
        self.data, self.count = data, 0

    def eval_batches(self, batch_size: int, limit: int = 0) -> Iterable[Any]:
        for batch in self.data.eval_batches(batch_size, limit):
            self.count += 1
            yield batch


def lr_at(cfg: TrainConfig, step: int, progress: float, clock: float | None = None) -> float:
    """Linear warm-up to the peak, then cosine decay to min_lr_ratio x peak at progress 1.

    `clock` is the share of a time budget's training time spent (None without a budget): warm-up then ends
    after `warmup_steps` steps or WARMUP_SHARE of the time, whichever comes first, so slow steps cannot
    spend the budget warming up."""
    warm = step / max(1, cfg.warmup_steps)
    if clock is not None:
        warm = max(warm, clock / WARMUP_SHARE)
    if step <= cfg.warmup_steps and warm <= 1.0:
        return cfg.lr * warm
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * cosine)


@dataclass
class TrainResult:
    step: int
    val_loss: float | None  # validation loss of the weights kept in model.safetensors
    elapsed_s: float
    bad_steps: int
    stopped_by: str  # "max_steps" | "time" | "patience"
    best_val_loss: float | None = None
    best_step: int | None = None
    final_val_loss: float | None = None  # of the last weights, on the same validation batches
    kept: str = "last"  # "best": model.safetensors holds the best validated weights; "last": the last ones


def _phase_parameters(params: dict[str, nn.Parameter], phases: list[OptimizerPhase]) -> dict[str, list[str]]:
    """Parameter names per phase; every trainable parameter belongs to exactly one phase."""
    owners: dict[str, list[str]] = {phase.name: [] for phase in phases}
    for name in params:
        matching = [phase.name for phase in phases if name.startswith(phase.prefixes)]
        if len(matching) != 1:
            raise RuntimeError(f"parameter '{name}' belongs to {len(matching)} optimizer phases, not one")
        owners[matching[0]].append(name)
    empty = [phase for phase, names in owners.items() if not names]
    if empty:
        raise ConfigError(f"no trainable parameters left for the '{empty[0]}' optimizer: --freeze matched all of them")
    return owners


_CHECKPOINT_META = Fields(required={"step": "int", "elapsed_s": "finite", "bad_steps": "int", "bad_in_row": "int",
                                   "param_groups": "object"})


def _checkpoint_meta(path: Path, raw: str | None, phases: set[str]) -> dict[str, Any]:
    """The counters and optimizer settings stored in a checkpoint's metadata, checked before use."""
    if raw is None:
        raise CheckpointError(f"'{path}' has no trainer state; it cannot be resumed")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError:
        meta = None
    problem = "it is not JSON" if meta is None else field_problem(meta, _CHECKPOINT_META)
    if problem is None and min(meta["step"], meta["bad_steps"], meta["bad_in_row"], meta["elapsed_s"]) < 0:
        problem = "a counter is negative"
    if problem is None and set(meta["param_groups"]) != phases:
        problem = f"optimizers {sorted(meta['param_groups'])}, expected {sorted(phases)}"
    if problem:
        raise CheckpointError(f"the trainer state in '{path}' is damaged ({problem}); restore it or start again "
                              "with --overwrite")
    return meta


def _same_structure(saved: Any, fresh: Any) -> bool:
    """Whether a value read back from JSON has the shape of the one a fresh optimizer holds (numbers for
    numbers, lists as long for tuples), so that loading it cannot break a later step."""
    if isinstance(fresh, bool) or fresh is None or isinstance(fresh, str):
        return type(saved) is type(fresh)
    if isinstance(fresh, (int, float)):
        return isinstance(saved, (int, float)) and not isinstance(saved, bool) and math.isfinite(saved)
    if isinstance(fresh, (list, tuple)):
        return (isinstance(saved, (list, tuple)) and len(saved) == len(fresh)
                and all(_same_structure(a, b) for a, b in zip(saved, fresh, strict=True)))
    return True  # a tensor or other object the optimizer made itself


def _checked_optimizer_state(saved: dict[str, Any], optimizer: torch.optim.Optimizer, path: Path) -> dict[str, Any]:
    """The saved state of one optimizer, checked against a fresh one. A setting the saved groups lack (one a
    newer torch added) takes the fresh optimizer's value; one it does not know is left out."""
    fresh_groups = optimizer.state_dict()["param_groups"]
    groups = saved["param_groups"]
    ok = isinstance(groups, list) and len(groups) == len(fresh_groups) and all(
        isinstance(g, dict) and all(_same_structure(g[k], f[k]) for k in f if k in g)
        for g, f in zip(groups, fresh_groups, strict=True))
    if ok:
        groups = [{**f, **{k: v for k, v in g.items() if k in f}} for g, f in zip(groups, fresh_groups, strict=True)]
        # each state tensor must fit the parameter its id stands for
        shapes = dict(zip((i for g in fresh_groups for i in g["params"]),
                          (p.shape for g in optimizer.param_groups for p in g["params"]), strict=True))
        ok = [i for g in groups for i in g["params"]] == list(shapes) and all(
            index in shapes and all(torch.is_tensor(v) and v.is_floating_point()
                                    and (v.dim() == 0 or v.shape == shapes[index]) for v in state.values())
            for index, state in saved["state"].items())
    if not ok:
        raise CheckpointError(f"optimizer state in '{path}' does not fit this model; restore it or start again "
                              "with --overwrite")
    return {"state": saved["state"], "param_groups": groups}


def _check_same_tensors(saved: dict[str, torch.Tensor], fresh: dict[str, torch.Tensor], path: Path,
                        what: str) -> None:
    if set(saved) != set(fresh) or any(saved[k].shape != fresh[k].shape for k in fresh):
        raise CheckpointError(f"the {what} in '{path}' do not fit this model; restore it or start again with "
                              "--overwrite")


class Trainer:
    def __init__(
        self,
        model: nn.Module,
        cfg: TrainConfig,
        run: RunDir,
        train_data: BatchSource,
        val_data: BatchSource | None,
        *,
        device: torch.device,
        dist: Distributed | None = None,
        quiet: bool = False,
        on_validate: Callable[[int, dict[str, torch.Tensor]], None] | None = None,
        clock_start: float | None = None,
    ) -> None:
        """`clock_start`: the `time.monotonic()` at which the run's wall clock started (e.g. before the data
        was prepared), so a time budget covers that too; by default the clock starts when fit() does."""
        self.cfg, self.run, self.device = cfg, run, device
        self.dist = dist or Distributed()
        self.model = model.to(device)
        self.train_data, self.val_data = train_data, val_data
        self.quiet = quiet or not self.dist.is_main
        # Called after each validation with the step and the weights a checkpoint would hold (the EMA
        # where there is one): e.g. a sample grid, so a person can watch the model learn
        self.on_validate = on_validate
        self.params = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        if not self.params:
            raise ConfigError("no trainable parameters left: --freeze matched every parameter")
        self.phases = optimizer_phases(self.model)
        self.phase_params = {phase: [self.params[n] for n in names]
                             for phase, names in _phase_parameters(self.params, self.phases).items()}
        self.optimizers = {phase.name: self._make_optimizer(self.phase_params[phase.name]) for phase in self.phases}
        self.ema = ({n: p.detach().clone() for n, p in self.model.state_dict().items()
                     if p.dtype.is_floating_point} if cfg.ema_decay > 0 else None)
        self.step = 0
        self.elapsed = 0.0
        self.bad_total = 0
        self.bad_in_row = 0
        self.last_checkpoint = 0
        self.clock_start = clock_start
        # The best validation so far and its weights (what model.safetensors keeps); part of the checkpoint
        self.best_loss: float | None = None
        self.best_step: int | None = None
        self.best_weights: dict[str, torch.Tensor] | None = None
        self.since_best = 0  # validations without a new best, for train.patience
        self.final_loss: float | None = None
        self.latest_loss: float | None = None
        self._saved_best_step: int | None = None
        self.budget = TimeBudget(60.0 * cfg.max_minutes) if cfg.max_minutes else None
        self._probe_batch: Any = None
        self.precision_choice = self._choose_precision()
        self._probe_batch = None
        self.precision = self.precision_choice.value
        step_module = _TrainingStep(self.model)
        if cfg.compile:
            step_module = torch.compile(step_module)
        if self.dist.enabled:
            ids = [device.index] if device.type == "cuda" else None
            # In a multi-phase step each backward reaches only part of the model
            step_module = DistributedDataParallel(step_module, device_ids=ids,
                                                  find_unused_parameters=len(self.phases) > 1)
        self.step_module = step_module
        self._tb = None

    # -- precision --------------------------------------------------------------------------------
    def _choose_precision(self) -> PrecisionChoice:
        shapes = ",".join(f"{tuple(p.shape)}" for p in self.model.parameters())
        model_key = f"{type(self.model).__name__}|{hashlib.sha256(shapes.encode()).hexdigest()[:12]}|" \
                    f"{self.cfg.batch_size}|{self.device.type}"
        # Rank 0 alone times steps (the others would only compete with it for the cores) and tells the rest
        probe = self.time_step if self.dist.is_main else None
        choice = resolve_precision(self.cfg.precision, self.device, probe, model_key)
        if self.dist.enabled:  # every rank trains as rank 0 decided
            import torch.distributed as dist

            flag = torch.tensor([1.0 if choice.value == "bf16" else 0.0],
                                device=self.device if self.device.type == "cuda" else "cpu")
            dist.broadcast(flag, src=0)
            if (flag.item() > 0) != (choice.value == "bf16"):
                choice = PrecisionChoice("bf16" if flag.item() > 0 else "fp32", "as rank 0 chose")
        if self.cfg.precision == "auto" and self.dist.is_main:
            log.info("precision auto: %s (%s)", choice.value, choice.reason)
        return choice

    def time_step(self, precision: str, repeats: int = 3) -> float:
        """Seconds of one forward + backward of this model on a real batch under `precision`, timed on a copy
        of the model so the run itself (weights, buffers, random numbers) is untouched."""
        cfg = self.cfg
        copy_model = copy.deepcopy(self.model).train()
        step_module = _TrainingStep(copy_model)
        if self._probe_batch is None:  # one batch for every timing: both precisions see the same work
            self._probe_batch = to_device(self.train_data.sample(cfg.batch_size, make_generator(cfg.seed, "probe")),
                                          self.device)
        batch = self._probe_batch
        cpu_rng = torch.get_rng_state()

        def once() -> float:
            started = time.perf_counter()
            carry = PhaseCarry()
            for phase in self.phases:
                with autocast(self.device, precision):
                    loss = step_module(batch, phase.name, carry)
                loss.backward()
                copy_model.zero_grad(set_to_none=True)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            return time.perf_counter() - started

        try:
            first = once()  # warm-up: allocations, kernels chosen
            times = [once() for _ in range(1 if first > 0.3 else repeats)]
        finally:
            torch.set_rng_state(cpu_rng)
        return min(times)

    def estimate_steps(self, spent_s: float = 0.0, probe_steps: int = 3) -> tuple[int | None, float]:
        """(steps, seconds per step) this run would train: `probe_steps` real optimizer steps are timed after a
        warm-up one (they change the weights: for a dry run, which saves nothing), and a time budget, less
        `spent_s` already gone and the validations' share, is divided by their average. None steps: no end
        but the clock, and no budget either (cannot happen: the config needs one of them)."""
        self.model.train()
        self._train_step(1)
        started = time.monotonic()
        for step in range(2, 2 + probe_steps):
            self._train_step(step)
        step_s = (time.monotonic() - started) / probe_steps
        if self.budget is None:
            return self.cfg.max_steps, step_s
        # a validation batch is a forward pass, about a third of a training step
        validation_share = (self.cfg.eval_batches or 20) / (3 * max(1, self.cfg.eval_every or 1000))
        steps = int(max(0.0, self.budget.seconds - spent_s) / (step_s * (1 + validation_share)))
        return (min(steps, self.cfg.max_steps) if self.cfg.max_steps else steps), step_s

    def _make_optimizer(self, params: list[nn.Parameter]) -> torch.optim.AdamW:
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups = [{"params": group, "weight_decay": wd}
                  for group, wd in ((decay, self.cfg.weight_decay), (no_decay, 0.0)) if group]
        # The fused kernel: one pass over all tensors (for a 4x128 text model on a CPU, 1.5 ms a step against
        # 8 ms for the per-tensor loop, about a tenth of the step)
        fused = self.device.type in ("cpu", "cuda")
        return torch.optim.AdamW(groups, lr=self.cfg.lr, betas=(self.cfg.beta1, self.cfg.beta2), fused=fused)

    # -- checkpoints ----------------------------------------------------------------------------
    def weights_for_saving(self) -> dict[str, torch.Tensor]:
        state = self.model.state_dict()
        if self.ema is not None:
            state = {**state, **self.ema}
        return state

    def _sync_buffers(self) -> None:
        """Make every rank's buffers (BatchNorm running statistics) rank 0's: DDP broadcasts them only on
        synchronised forwards, so with gradient accumulation the ranks' copies drift apart."""
        if self.dist.enabled:
            import torch.distributed as dist

            for buffer in self.model.buffers():
                dist.broadcast(buffer, src=0)

    def kept_weights(self) -> tuple[dict[str, torch.Tensor], str]:
        """What model.safetensors holds: the best validated weights when there are any, else the last."""
        if self.best_weights is not None:
            return self.best_weights, "best"
        return self.weights_for_saving(), "last"

    def save_checkpoint(self) -> None:
        started = time.monotonic()
        self._sync_buffers()
        if self.dist.is_main:
            tensors: dict[str, torch.Tensor] = {f"model.{k}": v for k, v in self.model.state_dict().items()}
            if self.ema is not None:
                tensors.update({f"ema.{k}": v for k, v in self.ema.items()})
            if self.best_weights is not None:
                tensors.update({f"best.{k}": v for k, v in self.best_weights.items()})
            param_groups = {}
            for phase, optimizer in self.optimizers.items():
                opt_state = optimizer.state_dict()
                param_groups[phase] = opt_state["param_groups"]
                for index, state in opt_state["state"].items():
                    for key, value in state.items():
                        tensors[f"opt.{phase}.{index}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
            meta = {"step": self.step, "elapsed_s": self.elapsed, "bad_steps": self.bad_total,
                    "bad_in_row": self.bad_in_row, "best_val_loss": self.best_loss, "best_step": self.best_step,
                    "validations_since_best": self.since_best, "param_groups": param_groups}
            # One file holds weights, optimizer, counters and the best weights so far, so it is consistent by
            # construction; model.safetensors is rewritten from it on resume
            save_tensors(self.run / files.TRAINER_STATE, tensors, metadata={"state": json.dumps(meta)})
            self._write_model()
            self.run.write_json(files.TRAINER_STATE_JSON, {k: v for k, v in meta.items() if k != "param_groups"})
        self.last_checkpoint = self.step
        self._saved_best_step = self.best_step
        self.dist.barrier()
        if self.budget is not None:
            self.budget.checkpoint_s = time.monotonic() - started

    def _write_model(self) -> None:
        weights, kept = self.kept_weights()
        step = self.best_step if kept == "best" else self.step
        save_tensors(self.run / files.MODEL, weights, metadata={"step": str(step), "weights": kept})

    def load_checkpoint(self) -> None:
        path = self.run / files.TRAINER_STATE
        meta = _checkpoint_meta(path, read_metadata(path).get("state"), set(self.optimizers))
        tensors = load_tensors(path)
        model_state = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        load_into(self.model, model_state, path)
        if self.ema is not None:
            ema = {k[4:]: v.to(self.device) for k, v in tensors.items() if k.startswith("ema.")}
            if ema:
                _check_same_tensors(ema, self.ema, path, "EMA weights")
                self.ema = ema
        opt_states: dict[str, dict[str, Any]] = {phase: {"state": {}, "param_groups": groups}
                                                 for phase, groups in meta["param_groups"].items()}
        for key, value in tensors.items():
            if key.startswith("opt."):
                parts = key.split(".", 3)
                if len(parts) != 4 or parts[1] not in opt_states or not parts[2].isdigit():
                    raise CheckpointError(f"optimizer state in '{path}' has an unknown entry '{key}'; restore it "
                                          "or start again with --overwrite")
                opt_states[parts[1]]["state"].setdefault(int(parts[2]), {})[parts[3]] = value
        for phase, optimizer in self.optimizers.items():
            optimizer.load_state_dict(_checked_optimizer_state(opt_states[phase], optimizer, path))
        self.step, self.elapsed = meta["step"], float(meta["elapsed_s"])
        self.bad_total, self.bad_in_row = meta["bad_steps"], meta["bad_in_row"]
        best_loss, best_step = meta.get("best_val_loss"), meta.get("best_step")
        since_best = meta.get("validations_since_best", 0)
        if (not (best_loss is None or (isinstance(best_loss, (int, float)) and not isinstance(best_loss, bool)))
                or not (best_step is None or (isinstance(best_step, int) and not isinstance(best_step, bool)))
                or not isinstance(since_best, int) or isinstance(since_best, bool)):
            raise CheckpointError(f"'{path}' has a damaged best-weights record; restore it or start again "
                                  "with --overwrite")
        self.best_loss, self.best_step, self.since_best = best_loss, best_step, since_best
        best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
        self.best_weights = best if best and self.best_step is not None else None
        self.last_checkpoint, self._saved_best_step = self.step, self.best_step
        if self.dist.is_main:  # a run killed after a later save may hold other weights: back to the checkpoint's
            self._write_model()

    # -- validation ---------------------------------------------------------------------------
    def validate(self, limit: int) -> float | None:
        if self.val_data is None:
            return None
        started = time.monotonic()
        counted = _CountedBatches(self.val_data)
        loss = mean_loss(self.model, counted, self.cfg.batch_size, self.device, self.precision, limit)
        if self.budget is not None and counted.count:
            self.budget.val_batch_s = (time.monotonic() - started) / counted.count
        return loss

    def _record_validation(self, loss: float | None, final: bool = False) -> None:
        """Keep the weights if `loss` is the best so far, count validations without a new best, and log both."""
        self.latest_loss = loss
        if loss is None:
            return
        if self.best_loss is None or loss < self.best_loss:
            self.best_loss, self.best_step, self.since_best = loss, self.step, 0
            if self.dist.is_main:  # a copy: the live weights move on
                self.best_weights = {k: v.detach().to("cpu", copy=True) for k, v in self.weights_for_saving().items()}
        else:
            self.since_best += 1
        record: dict[str, Any] = {"step": self.step, "val_loss": loss, "best_val_loss": self.best_loss,
                                  "best_step": self.best_step}
        self._log({**record, "final": True} if final else record)

    # -- the loop -------------------------------------------------------------------------------
    def _clock(self) -> float | None:
        """Share of the time budget's training time spent (None without a budget)."""
        if self.budget is None:
            return None
        return self.elapsed / max(1e-9, self.budget.training_s())

    def _progress(self) -> float:
        clock = self._clock()
        by_steps = self.step / self.cfg.max_steps if self.cfg.max_steps else 0.0
        return by_steps if clock is None else max(by_steps, clock)

    def _now(self, base_elapsed: float, started: float) -> float:
        return base_elapsed + time.monotonic() - started

    def _validation_due(self, step: int, elapsed: float, last_validation: float) -> bool:
        """After `step`: every eval_every steps and, under a budget, at least VALIDATIONS_PER_BUDGET times."""
        if self.cfg.max_steps is not None and step >= self.cfg.max_steps:
            return False  # the final validation follows
        if self.cfg.eval_every and step % self.cfg.eval_every == 0:
            return True
        if self.budget is None or self.val_data is None:
            return False
        return elapsed - last_validation >= self.budget.training_s() / VALIDATIONS_PER_BUDGET

    def _out_of_time(self, elapsed: float, last_validation: float) -> bool:
        """Whether the next step, with the validation or checkpoint it brings, would end past the time left
        for training (the budget less what the final validation and checkpoint will take)."""
        budget = self.budget
        assert budget is not None
        after = elapsed + budget.step_s
        extra = budget.validation_s() if self._validation_due(
            self.step + 1, after, last_validation) else 0.0
        if self.cfg.checkpoint_every and (self.step + 1) % self.cfg.checkpoint_every == 0:
            extra += budget.checkpoint_s
        return after + extra > budget.training_s()

    def _prepare_budget(self) -> None:
        """Measure what the end of a budgeted run will cost: the final validation (its batch count, and one
        batch timed) and a checkpoint (estimated from the state's size until one is written)."""
        budget = self.budget
        assert budget is not None
        state_bytes = sum(t.numel() * t.element_size() for t in self.model.state_dict().values())
        budget.checkpoint_s = 0.05 + 5 * state_bytes / 200e6  # weights, EMA, optimizer moments, best weights
        if self.val_data is not None:
            budget.final_batches = sum(1 for _ in self.val_data.eval_batches(self.cfg.batch_size,
                                                                              self.cfg.eval_batches))
            self.validate(limit=1)
            self.model.train()

    def _snapshot(self) -> None:
        if self.on_validate is not None and self.dist.is_main:
            started = time.monotonic()
            was_training = self.model.training
            self.on_validate(self.step, self.weights_for_saving())
            self.model.train(was_training)
            if self.budget is not None:
                self.budget.snapshot_s = time.monotonic() - started

    def _log(self, record: dict[str, Any]) -> None:
        if not self.dist.is_main:
            return
        self.run.append_metrics(record)
        if self._tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, record["step"])

    def _open_tensorboard(self) -> None:
        if not (self.cfg.tensorboard and self.dist.is_main):
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("train.tensorboard=true needs TensorBoard: pip install 'muselab[tensorboard]'") from None
        self._tb = SummaryWriter(log_dir=str(self.run / "tensorboard"))

    def _train_step(self, step: int) -> tuple[dict[str, float], dict[str, float], float, bool]:
        """One optimizer step per phase, all on the same micro-batches. Returns the loss of each phase, the
        phases' metrics on the last micro-batch, the largest gradient norm, and whether a phase was skipped
        for a non-finite loss or gradient."""
        cfg = self.cfg
        torch.manual_seed(derive_seed(cfg.seed, "dropout", step, self.dist.rank))
        batches = [to_device(self.train_data.sample(cfg.batch_size, make_generator(cfg.seed, "batch", step, micro,
                                                                                   self.dist.rank)), self.device)
                   for micro in range(cfg.grad_accum)]
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        carries = [PhaseCarry() for _ in batches]
        losses: dict[str, float] = {}
        norms: list[float] = []
        any_bad = False
        for phase in self.phases:
            total_loss = 0.0
            for micro, batch in enumerate(batches):
                sync = micro == len(batches) - 1 or not self.dist.enabled
                with nullcontext() if sync else self.step_module.no_sync():
                    with autocast(self.device, cfg.precision):
                        loss = self.step_module(batch, phase.name, carries[micro])
                    (loss / cfg.grad_accum).backward()
                total_loss += float(loss.detach()) / cfg.grad_accum
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.phase_params[phase.name], max_norm))
            bad = self.dist.any(not (math.isfinite(total_loss) and math.isfinite(grad_norm)))
            if not bad:
                self.optimizers[phase.name].step()
            # All gradients, not just this phase's: a generator loss also reaches the discriminator
            self.model.zero_grad(set_to_none=True)
            losses[phase.name] = total_loss
            norms.append(grad_norm)
            any_bad = any_bad or bad
        if not any_bad and self.ema is not None:
            self._update_ema(step)
        metrics = {name: float(value) for name, value in carries[-1].metrics.items()}
        return losses, metrics, max(norms), any_bad

    def _loss_record(self, losses: dict[str, float], metrics: dict[str, float]) -> dict[str, float]:
        if len(losses) == 1:
            return {"loss": next(iter(losses.values()))}
        # Numbers a multi-phase model wants watched (a GAN's scores on real and fake images)
        return {**{f"loss_{phase}": value for phase, value in losses.items()}, **metrics}

    @torch.no_grad()
    def _update_ema(self, step: int) -> None:
        # Warm-up of the decay keeps early EMA weights from being dominated by the random init
        decay = min(self.cfg.ema_decay, (1 + step) / (10 + step))
        state = self.model.state_dict()
        names = list(self.ema)
        # One fused update over all tensors: per-tensor calls cost more than the arithmetic for small models
        torch._foreach_lerp_([self.ema[n] for n in names], [state[n].to(self.ema[n].dtype) for n in names],
                             1.0 - decay)

    def fit(self, resume: bool = False) -> TrainResult:
        cfg = self.cfg
        if resume:
            self.load_checkpoint()
            if self.dist.is_main:
                self.run.truncate_metrics(self.step)
        self._open_tensorboard()
        self.model.train()
        if self.val_data is None and self.dist.is_main:
            log.info("no validation data for this recipe: the run keeps its last weights")
        start_step, base_elapsed = self.step, self.elapsed
        started = self.clock_start if self.clock_start is not None else time.monotonic()
        if self.budget is not None:
            self._prepare_budget()
        self.elapsed = self._now(base_elapsed, started)
        last_validation = self.elapsed
        validated_at: int | None = None
        stopped_by = "max_steps"
        window_start, window_steps = time.monotonic(), 0
        progress = TrainingProgress(cfg.max_steps, start_step, enabled=not self.quiet,
                                    budget_s=self.budget.seconds if self.budget else None)
        try:
            with progress:
                while cfg.max_steps is None or self.step < cfg.max_steps:
                    if self.budget is not None and self.step > start_step and self.dist.any(
                            self._out_of_time(self._now(base_elapsed, started), last_validation)):
                        stopped_by = "time"
                        break
                    step = self.step + 1
                    self.elapsed = self._now(base_elapsed, started)
                    lr = lr_at(cfg, step, self._progress(), self._clock())
                    for phase in self.phases:
                        for group in self.optimizers[phase.name].param_groups:
                            group["lr"] = lr * phase.lr_scale
                    if hasattr(self.model, "set_training_progress"):  # models whose loss changes over training
                        self.model.set_training_progress(self._progress())
                    step_started = time.monotonic()
                    losses, metrics, grad_norm, bad = self._train_step(step)
                    if self.budget is not None:
                        self.budget.observe_step(time.monotonic() - step_started)
                    self.step = step  # only a finished step counts: an interrupt mid-step saves the one before
                    self.elapsed = self._now(base_elapsed, started)
                    window_steps += 1
                    if bad:
                        self.bad_total += 1
                        self.bad_in_row += 1
                        self._log({"step": self.step, "skipped": True, "loss": None})
                        progress.log(f"step {self.step}: non-finite loss or gradient, step skipped")
                        if self.bad_in_row >= cfg.max_bad_steps:
                            raise TrainingDiverged(
                                f"training diverged: {self.bad_in_row} non-finite steps in a row at step "
                                f"{self.step}; the last good checkpoint (step {self.last_checkpoint}) in "
                                f"'{self.run}' is intact: lower train.lr or use train.precision=fp32, then --resume")
                        continue
                    self.bad_in_row = 0
                    rate = window_steps / max(1e-9, time.monotonic() - window_start)
                    loss_record = self._loss_record(losses, metrics)
                    progress.update(self.step, "  ".join(f"{k} {v:.4f}" for k, v in loss_record.items()
                                                         if k.startswith("loss")), rate, self.elapsed)
                    if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                        self._log({"step": self.step, **loss_record, "lr": lr, "grad_norm": grad_norm,
                                   "steps_per_s": rate, "examples_per_s": rate * cfg.batch_size
                                   * cfg.grad_accum * self.dist.world_size, "elapsed_s": self.elapsed})
                        window_start, window_steps = time.monotonic(), 0
                    due = self._validation_due(self.step, self.elapsed, last_validation)
                    if self.budget is not None:  # the clock can differ between ranks: they must agree
                        due = self.dist.any(due)
                    if due:
                        val_loss = self.validate(cfg.eval_batches)
                        self._record_validation(val_loss)
                        if val_loss is not None:
                            progress.log(f"step {self.step}: val_loss {val_loss:.4f} (best {self.best_loss:.4f} "
                                         f"at step {self.best_step})")
                        self._snapshot()
                        validated_at, last_validation = self.step, self._now(base_elapsed, started)
                        if cfg.patience and self.dist.any(self.since_best >= cfg.patience):
                            stopped_by = "patience"
                            break
                    if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                        self.save_checkpoint()
        except KeyboardInterrupt:
            if self.step > self.last_checkpoint and self.bad_in_row == 0:
                self.save_checkpoint()
            raise
        # The last weights, measured on the same batches as every validation before, compete for the best
        if validated_at == self.step and self.val_data is not None:
            self.final_loss = self.latest_loss
            self._log({"step": self.step, "val_loss": self.final_loss, "best_val_loss": self.best_loss,
                       "best_step": self.best_step, "final": True})
        else:
            self.final_loss = self.validate(cfg.eval_batches)
            self._record_validation(self.final_loss, final=True)
            self._snapshot()
        self.elapsed = self._now(base_elapsed, started)
        if (self.step > self.last_checkpoint or self.best_step != self._saved_best_step
                or not self.run.has_checkpoint()):
            self.save_checkpoint()
        self.elapsed = self._now(base_elapsed, started)
        if self.dist.enabled:
            self._record_rank_fingerprints()
        if self._tb is not None:
            self._tb.close()
        kept = "best" if self.best_loss is not None else "last"
        return TrainResult(self.step, self.best_loss if kept == "best" else None, self.elapsed, self.bad_total,
                           stopped_by, best_val_loss=self.best_loss, best_step=self.best_step,
                           final_val_loss=self.final_loss, kept=kept)

    def _record_rank_fingerprints(self) -> None:
        """Every rank must end with the same weights; record each rank's fingerprint to prove it."""
        import torch.distributed as dist

        self._sync_buffers()
        mine = weights_fingerprint(self.model.state_dict())
        gathered: list[str | None] = [None] * self.dist.world_size
        dist.all_gather_object(gathered, mine)
        if self.dist.is_main:
            state = self.run.read_json(files.TRAINER_STATE_JSON)
            state["rank_fingerprints"] = gathered
            self.run.write_json(files.TRAINER_STATE_JSON, state)
        if len(set(gathered)) != 1:
            raise RuntimeError(f"ranks ended with different weights: {gathered}")
