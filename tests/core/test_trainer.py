import math

import pytest
import torch
from torch import nn

from muselab.core import rundir as files
from muselab.core.checkpoint import load_tensors
from muselab.core.config import TrainConfig
from muselab.core.errors import TrainingDiverged
from muselab.core.rundir import RunDir
from muselab.core.trainer import OptimizerPhase, PhaseCarry, Trainer, lr_at


class Regression:
    """y = 3x + 1 with noise: a batch source with a known answer."""

    def sample(self, batch_size, generator):
        x = torch.randn(batch_size, 1, generator=generator)
        return x, 3 * x + 1 + 0.01 * torch.randn(batch_size, 1, generator=generator)

    def eval_batches(self, batch_size, limit=0):
        gen = torch.Generator().manual_seed(123)
        for _ in range(limit or 4):
            yield self.sample(batch_size, gen)


class Crash(Exception):
    pass


class Line(nn.Module):
    def __init__(self, poison_steps=(), crash_at=None):
        super().__init__()
        self.fc = nn.Linear(1, 1)
        self.drop = nn.Dropout(0.02)
        self.calls, self.poison_steps, self.crash_at = 0, set(poison_steps), crash_at

    def training_step(self, batch):
        self.calls += 1
        if self.calls == self.crash_at:
            raise self.crash_at_error
        x, y = batch
        loss = ((self.fc(self.drop(x)) - y) ** 2).mean()
        return loss * float("nan") if self.calls in self.poison_steps else loss

    def eval_step(self, batch):
        x, y = batch
        return ((self.fc(x) - y) ** 2).sum(), y.numel()


def make(tmp_path, model=None, **overrides):
    settings = dict(max_steps=60, batch_size=16, lr=0.3, warmup_steps=2, weight_decay=0.0, eval_every=0, checkpoint_every=10,
                    log_every=5)
    cfg = TrainConfig(**{**settings, **overrides})
    run = RunDir(tmp_path)
    run.path.mkdir(parents=True, exist_ok=True)
    if model is None:
        torch.manual_seed(0)
        model = Line()
    return Trainer(model, cfg, run, Regression(), Regression(), device=torch.device("cpu"), quiet=True)


def test_learns_and_writes_checkpoint_and_metrics(tmp_path):
    result = make(tmp_path).fit()
    assert result.step == 60 and result.val_loss < 0.1
    weights = load_tensors(tmp_path / files.MODEL)
    assert abs(float(weights["fc.weight"]) - 3) < 0.3
    lines = RunDir(tmp_path).read_metrics()
    assert any("val_loss" in r for r in lines) and lines[0]["step"] == 5


@pytest.mark.parametrize("interruption", [Crash, KeyboardInterrupt])
def test_resume_is_exact(tmp_path, interruption):
    full = make(tmp_path / "full", max_steps=40)
    full.fit()
    torch.manual_seed(0)  # same initial weights as the uninterrupted run
    model = Line(crash_at=25)
    model.crash_at_error = interruption
    with pytest.raises(interruption):
        make(tmp_path / "part", model=model, max_steps=40).fit()
    resumed = make(tmp_path / "part", max_steps=40)
    resumed.fit(resume=True)
    for name, value in full.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
    steps = [r["step"] for r in RunDir(tmp_path / "part").read_metrics() if "loss" in r]
    assert steps == sorted(set(steps)), "resume must not duplicate log lines"


def test_non_finite_steps_are_skipped_and_counted(tmp_path):
    torch.manual_seed(0)
    model = Line(poison_steps={3, 4})
    result = make(tmp_path, model=model).fit()
    assert result.bad_steps == 2
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert result.val_loss < 0.1
    skipped = [r["step"] for r in RunDir(tmp_path).read_metrics() if r.get("skipped")]
    assert skipped == [3, 4]


def test_repeated_non_finite_steps_stop_training_with_checkpoint_intact(tmp_path):
    model = Line(poison_steps=set(range(13, 100)))
    trainer = make(tmp_path, model=model, max_steps=40, max_bad_steps=3)
    with pytest.raises(TrainingDiverged, match="step 10"):
        trainer.fit()
    weights = load_tensors(tmp_path / files.MODEL)
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert RunDir(tmp_path).read_json(files.TRAINER_STATE_JSON)["step"] == 10


def test_schedule_warms_up_then_decays_to_the_floor():
    cfg = TrainConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.1, max_steps=100)
    assert lr_at(cfg, 5, 0.05) == pytest.approx(0.5)
    assert lr_at(cfg, 10, 0.1) == pytest.approx(1.0)
    assert lr_at(cfg, 100, 1.0) == pytest.approx(0.1)
    values = [lr_at(cfg, s, s / 100) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_time_budget_stops_training(tmp_path):
    result = make(tmp_path, max_steps=10**6, max_minutes=0.02).fit()
    assert result.stopped_by == "time" and result.step < 10**6


def test_ema_weights_are_saved(tmp_path):
    trainer = make(tmp_path, ema_decay=0.9)
    trainer.fit()
    saved = load_tensors(tmp_path / files.MODEL)
    raw = trainer.model.state_dict()
    assert not torch.equal(saved["fc.weight"], raw["fc.weight"])
    assert math.isclose(float(saved["fc.weight"]), float(raw["fc.weight"]), abs_tol=0.5)


class RecordingLine(Line):
    """A Line without dropout that keeps every training batch it is given."""

    def __init__(self):
        super().__init__()
        self.drop.p = 0.0
        self.seen = []

    def training_step(self, batch):
        self.seen.append(batch)
        return super().training_step(batch)


def test_gradient_accumulation_gives_the_large_batch_gradient(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = RecordingLine()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    grads = []
    clip = torch.nn.utils.clip_grad_norm_

    def record_then_clip(params, max_norm, *args, **kwargs):
        params = list(params)
        grads.append([p.grad.clone() for p in params])
        return clip(params, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", record_then_clip)
    make(tmp_path, model=model, grad_accum=2, batch_size=8, max_steps=1).fit()
    assert len(model.seen) == 2 and len(grads) == 1
    # the same 16 samples as one batch, from the same starting weights
    big = RecordingLine()
    big.load_state_dict(start)
    x, y = (torch.cat(parts) for parts in zip(*model.seen, strict=True))
    big.training_step((x, y)).backward()
    for accumulated, param in zip(grads[0], big.parameters(), strict=True):
        torch.testing.assert_close(accumulated, param.grad, rtol=1e-5, atol=1e-6)


def test_gradient_accumulation_learns(tmp_path):
    result = make(tmp_path, grad_accum=2, batch_size=8).fit()
    assert result.val_loss < 0.1


def test_tensorboard_log(tmp_path):
    pytest.importorskip("tensorboard")
    make(tmp_path, max_steps=10, tensorboard=True).fit()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


class TwoPlayers(nn.Module):
    """Two optimizers, stepped in order on one batch: `first` fits y, `second` fits 2y from `first`'s
    detached output, so the second phase depends on the first having stepped."""

    def __init__(self, lr_scale=1.0, interrupt_at_call=None):
        super().__init__()
        self.first = nn.Linear(1, 1)
        self.second = nn.Linear(1, 1)
        self.lr_scale, self.phases_seen, self.interrupt_at_call = lr_scale, [], interrupt_at_call
        self.carries_seen = []

    def optimizer_phases(self):
        return [OptimizerPhase("first", ("first.",)), OptimizerPhase("second", ("second.",), self.lr_scale)]

    def training_step(self, batch, phase, carry):
        self.phases_seen.append(phase)
        self.carries_seen.append(carry)
        if len(self.phases_seen) == self.interrupt_at_call:
            raise KeyboardInterrupt
        x, y = batch
        if phase == "first":
            loss = ((self.first(x) - y) ** 2).mean()
            carry.metrics["first_bias"] = self.first.bias.detach()
            return loss
        return ((self.second(self.first(x).detach()) - 2 * y) ** 2).mean()

    def eval_step(self, batch):
        x, y = batch
        return ((self.second(self.first(x)) - 2 * y) ** 2).sum(), y.numel()


def test_phases_step_their_own_parameters_in_order(tmp_path):
    torch.manual_seed(0)
    model = TwoPlayers()
    result = make(tmp_path, model=model, lr=0.1, max_steps=80).fit()
    assert model.phases_seen[:4] == ["first", "second", "first", "second"]
    assert abs(float(model.first.weight.detach()) - 3) < 0.2 and abs(float(model.second.weight.detach()) - 2) < 0.2
    assert result.val_loss < 0.2
    record = next(r for r in RunDir(tmp_path).read_metrics() if "loss_first" in r)
    assert {"loss_first", "loss_second", "first_bias"} <= set(record) and "loss" not in record


def test_the_phases_of_a_micro_batch_share_one_fresh_carry(tmp_path):
    model = TwoPlayers()
    make(tmp_path, model=model, lr=0.1, max_steps=2, grad_accum=2).fit()
    seen = model.carries_seen  # per step: first phase on micro-batches 0, 1, then the second phase on both
    assert len(seen) == 8 and all(isinstance(c, PhaseCarry) for c in seen)
    assert seen[0] is seen[2] and seen[1] is seen[3] and seen[4] is seen[6] and seen[5] is seen[7]
    assert len({id(c) for c in seen}) == 4  # nothing is carried from one micro-batch or step to the next


def test_phase_lr_scale_applies_to_its_optimizer(tmp_path):
    torch.manual_seed(0)
    trainer = make(tmp_path, model=TwoPlayers(lr_scale=0.0), lr=0.1, max_steps=5)
    second_before = trainer.model.second.weight.detach().clone()
    trainer.fit()
    assert torch.equal(trainer.model.second.weight, second_before)  # scale 0: never moves
    assert trainer.optimizers["second"].param_groups[0]["lr"] == 0.0


def test_multi_phase_resume_is_exact(tmp_path):
    torch.manual_seed(0)
    full = make(tmp_path / "full", model=TwoPlayers(), lr=0.1, max_steps=30)
    full.fit()
    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):  # in the second phase of step 21: the checkpoint holds step 20
        make(tmp_path / "part", model=TwoPlayers(interrupt_at_call=42), lr=0.1, max_steps=30).fit()
    assert RunDir(tmp_path / "part").read_json(files.TRAINER_STATE_JSON)["step"] == 20
    resumed = make(tmp_path / "part", model=TwoPlayers(), lr=0.1, max_steps=30)
    resumed.fit(resume=True)
    for name, value in full.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name


def test_validation_hook_sees_the_saved_weights(tmp_path):
    seen = []
    torch.manual_seed(0)
    model = Line()
    cfg = TrainConfig(max_steps=20, batch_size=8, lr=0.1, warmup_steps=0, eval_every=10, ema_decay=0.9)
    run = RunDir(tmp_path)
    trainer = Trainer(model, cfg, run, Regression(), Regression(), device=torch.device("cpu"), quiet=True,
                      on_validate=lambda step, weights: seen.append((step, weights["fc.weight"].clone())))
    trainer.fit()
    assert [step for step, _ in seen] == [10, 20]
    assert torch.equal(seen[-1][1], trainer.ema["fc.weight"])


class ProgressLine(Line):
    """A Line that records the share of training done that the Trainer hands it before each step."""

    def __init__(self):
        super().__init__()
        self.progress = []

    def set_training_progress(self, progress):
        self.progress.append(progress)


def test_a_model_that_asks_is_told_the_share_of_training_done_before_each_step(tmp_path):
    model = ProgressLine()
    make(tmp_path, model=model, max_steps=20).fit()
    assert model.progress == pytest.approx([step / 20 for step in range(20)])
