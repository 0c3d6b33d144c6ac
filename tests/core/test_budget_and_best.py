"""Time budgets that mean "train for N minutes", the best validated weights kept, early stopping."""

import json
import math

import pytest
import torch

from helpers import Line
from muselab import api
from muselab.core import rundir as files
from muselab.core.checkpoint import load_tensors, read_metadata
from muselab.core.config import TrainConfig, budget_layer
from muselab.core.rundir import RunDir
from muselab.core.trainer import Trainer, lr_at

BUDGET_MIN = 0.05  # 3 s
BUDGET_S = 60 * BUDGET_MIN
SLACK_S = 1.5  # a loaded 2-core machine: the run ends within budget + this, and after 0.9 x budget


class Regression:
    def sample(self, batch_size, generator):
        x = torch.randn(batch_size, 1, generator=generator)
        return x, 3 * x + 1

    def eval_batches(self, batch_size, limit=0):
        gen = torch.Generator().manual_seed(123)
        for _ in range(limit or 4):
            yield self.sample(batch_size, gen)


class Scripted(Line):
    """Validation losses follow a script (one value per validation), so the best step is known."""

    def __init__(self, script):
        super().__init__()
        self.script, self.validations = list(script), -1  # eval() counts before the first eval_step

    def eval_step(self, batch):
        loss = self.script[min(self.validations, len(self.script) - 1)]
        return torch.tensor(loss), 1

    def eval(self):  # one validation = one switch to eval mode
        self.validations += 1
        return super().eval()


def make(path, model=None, val=True, **settings):
    cfg = TrainConfig(**{**dict(max_steps=40, batch_size=8, lr=0.05, warmup_steps=2, eval_every=10,
                                eval_batches=1, checkpoint_every=10, log_every=5, precision="fp32"), **settings})
    run = RunDir(path)
    run.path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    return Trainer(model or Line(), cfg, run, Regression(), Regression() if val else None,
                   device=torch.device("cpu"), quiet=True)


# -- the budget rule -----------------------------------------------------------------------------
def test_a_user_budget_without_steps_lifts_the_step_limit():
    assert budget_layer([{"train": {"max_minutes": 5}}]) == {"train": {"max_steps": None}}
    assert budget_layer([{"train": {"max_minutes": 5}}, {"train": {"max_steps": 100}}]) == {}
    assert budget_layer([{"train": {"max_steps": 100, "max_minutes": 5}}]) == {}
    assert budget_layer([{"model": {"n_layer": 2}}]) == {}
    assert budget_layer([{"train": {"max_minutes": 5}}, {"train": {"max_minutes": None}}]) == {}


def test_warm_up_follows_the_clock_under_a_budget():
    cfg = TrainConfig(lr=1.0, warmup_steps=1000, min_lr_ratio=0.1, max_steps=None, max_minutes=1)
    assert lr_at(cfg, 10, 0.01, clock=0.01) == pytest.approx(0.2)  # 1 % of the time is a fifth of the warm-up
    assert lr_at(cfg, 10, 0.06, clock=0.06) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(0.06 * math.pi)))
    assert lr_at(cfg, 10_000, 1.0, clock=1.0) == pytest.approx(0.1)


def test_trainer_budget_ends_on_time_with_final_validation_included(tmp_path):
    trainer = make(tmp_path, max_steps=None, max_minutes=BUDGET_MIN, eval_every=0)
    result = trainer.fit()
    assert result.stopped_by == "time"
    assert 0.9 * BUDGET_S <= result.elapsed_s <= BUDGET_S + SLACK_S
    assert result.step > 40 and result.final_val_loss is not None
    lrs = [r["lr"] for r in RunDir(tmp_path).read_metrics() if "lr" in r]
    assert lrs[-1] < 0.3 * max(lrs), "the cosine decay follows the clock to its floor"
    # validations happen by the clock too, often enough to draw a curve
    assert sum(1 for r in RunDir(tmp_path).read_metrics() if "val_loss" in r) >= 5


def _run_seconds(out):
    return json.loads((out / files.TRAINER_STATE_JSON).read_text())["elapsed_s"]


def test_text_lm_budget_means_train_for_that_long(tmp_path, corpus_file):
    # a first short run pays the one-time costs (imports, caches) that the timed run should not measure
    api.train("text-lm", str(corpus_file), tmp_path / "warm", preset="tiny", max_steps=1, quiet=True)
    out = tmp_path / "run"
    result = api.train("text-lm", str(corpus_file), out, preset="tiny", max_minutes=BUDGET_MIN, quiet=True)
    assert result.stopped_by == "time"
    assert 0.9 * BUDGET_S <= result.elapsed_s <= BUDGET_S + SLACK_S
    assert json.loads((out / files.CONFIG).read_text())["config"]["train"]["max_steps"] is None
    assert result.step > 30, "the tiny preset's 30 steps no longer end a budgeted run"


def test_image_gan_budget_means_train_for_that_long(tmp_path):
    api.train("image-gan", "builtin:digits", tmp_path / "warm", preset="tiny", max_steps=1, quiet=True)
    out = tmp_path / "run"
    result = api.train("image-gan", "builtin:digits", out, preset="tiny", max_minutes=BUDGET_MIN, quiet=True)
    assert result.stopped_by == "time"
    assert 0.9 * BUDGET_S <= result.elapsed_s <= BUDGET_S + SLACK_S
    assert result.kept == "last" and result.best_val_loss is None  # a GAN has no validation loss


@pytest.mark.parametrize("how", ["flag", "set"])
def test_explicit_max_steps_still_wins_over_a_budget(tmp_path, corpus_file, how):
    steps = {"max_steps": 7} if how == "flag" else {"overrides": ["train.max_steps=7"]}
    result = api.train("text-lm", str(corpus_file), tmp_path / "run", preset="tiny", max_minutes=1.0, quiet=True,
                       **steps)
    assert result.step == 7 and result.stopped_by == "max_steps"


# -- best weights ---------------------------------------------------------------------------------
def test_the_best_validated_weights_are_kept_and_both_losses_reported(tmp_path):
    seen = {}
    trainer = make(tmp_path, model=Scripted([3.0, 1.0, 2.0, 4.0]))
    trainer.on_validate = lambda step, weights: seen.setdefault(step, {k: v.clone() for k, v in weights.items()})
    result = trainer.fit()
    assert (result.best_val_loss, result.best_step, result.final_val_loss, result.kept) == (1.0, 20, 4.0, "best")
    saved = load_tensors(tmp_path / files.MODEL)
    for name, value in seen[20].items():
        assert torch.equal(saved[name], value), name
    assert read_metadata(tmp_path / files.MODEL)["weights"] == "best"
    state = RunDir(tmp_path).read_json(files.TRAINER_STATE_JSON)
    assert (state["best_val_loss"], state["best_step"]) == (1.0, 20)
    vals = [(r["step"], r["val_loss"], r["best_val_loss"]) for r in RunDir(tmp_path).read_metrics() if "val_loss" in r]
    assert vals == [(10, 3.0, 3.0), (20, 1.0, 1.0), (30, 2.0, 1.0), (40, 4.0, 1.0)]


def test_patience_stops_after_validations_without_a_new_best(tmp_path):
    result = make(tmp_path, model=Scripted([3.0, 1.0, 2.0, 2.5, 0.5]), patience=2, max_steps=100).fit()
    assert result.stopped_by == "patience" and result.step == 40 and result.best_step == 20


def test_without_validation_the_last_weights_are_kept(tmp_path):
    trainer = make(tmp_path, val=False)
    result = trainer.fit()
    assert result.kept == "last" and result.best_val_loss is None and result.val_loss is None
    saved = load_tensors(tmp_path / files.MODEL)
    assert torch.equal(saved["fc.weight"], trainer.model.fc.weight.detach())


class Crash(Exception):
    pass


class CrashingLine(Line):
    def __init__(self, at):
        super().__init__()
        self.calls, self.at = 0, at

    def training_step(self, batch):
        self.calls += 1
        if self.calls == self.at:
            raise Crash
        return super().training_step(batch)


def test_resume_keeps_the_best_so_far_exactly(tmp_path):
    settings = dict(lr=0.5, eval_every=5, checkpoint_every=10, max_steps=40)  # lr high enough to get worse
    full = make(tmp_path / "full", **settings)
    expected = full.fit()
    torch.manual_seed(0)  # the same initial weights as the uninterrupted run
    crashing = CrashingLine(at=27)
    with pytest.raises(Crash):
        make(tmp_path / "part", model=crashing, **settings).fit()
    # the best-so-far (loss, step, weights) travels in the checkpoint
    resumed = make(tmp_path / "part", **settings).fit(resume=True)
    assert (resumed.best_val_loss, resumed.best_step, resumed.final_val_loss) == (
        expected.best_val_loss, expected.best_step, expected.final_val_loss)
    a, b = load_tensors(tmp_path / "full" / files.MODEL), load_tensors(tmp_path / "part" / files.MODEL)
    assert all(torch.equal(a[k], b[k]) for k in a)
