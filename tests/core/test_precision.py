"""precision=auto: the decision rule under faked capabilities, its cache, and the same training either way."""

import json

import pytest
import torch

from muselab import api
from muselab.core import rundir as files
from muselab.core.precision import cached_probe, decide_precision, resolve_precision
from muselab.core.rundir import RunDir

from .test_budget_and_best import make


def never(_precision):
    raise AssertionError("no probe is needed here")


def test_gpus_with_bf16_use_it_without_a_probe():
    assert decide_precision("cuda", cuda_bf16=True, probe=never).value == "bf16"
    assert decide_precision("cuda", cuda_bf16=False, probe=never).value == "fp32"


def test_cpus_without_bf16_units_stay_fp32_without_a_probe():
    choice = decide_precision("cpu", flags=frozenset({"avx2", "avx512f"}), probe=never)
    assert choice.value == "fp32" and "AMX" in choice.reason
    assert decide_precision("mps", flags=frozenset({"amx_bf16"}), probe=never).value == "fp32"


@pytest.mark.parametrize("flag", ["amx_bf16", "avx512_bf16"])
def test_cpus_with_bf16_units_follow_the_timed_step(flag):
    fast = {"fp32": 0.010, "bf16": 0.006}
    slow = {"fp32": 0.010, "bf16": 0.0117}  # a small model: bf16 17 % slower
    barely = {"fp32": 0.010, "bf16": 0.0095}  # within noise: not worth it
    assert decide_precision("cpu", flags=frozenset({flag}), probe=fast.__getitem__).value == "bf16"
    assert decide_precision("cpu", flags=frozenset({flag}), probe=slow.__getitem__).value == "fp32"
    assert decide_precision("cpu", flags=frozenset({flag}), probe=barely.__getitem__).value == "fp32"
    assert decide_precision("cpu", flags=frozenset({flag}), probe=None).value == "fp32"


def test_a_model_that_fails_under_bf16_stays_fp32():
    def probe(precision):
        if precision == "bf16":
            raise RuntimeError("expected dtype c10::BFloat16 for `weight` but got dtype float")
        return 0.01

    choice = decide_precision("cpu", flags=frozenset({"amx_bf16"}), probe=probe)
    assert choice.value == "fp32" and "fails under bf16" in choice.reason


def test_the_probe_is_cached_per_machine_and_model(tmp_path, monkeypatch):
    monkeypatch.setenv("MUSELAB_CACHE", str(tmp_path))
    calls = []

    def probe(precision):
        calls.append(precision)
        return 0.01

    for _ in range(2):
        assert cached_probe(probe, "model-a")("fp32") == 0.01
    cached_probe(probe, "model-b")("fp32")
    assert calls == ["fp32", "fp32"]
    assert len(json.loads((tmp_path / "precision.json").read_text())) == 2


def test_an_explicit_precision_is_kept():
    assert resolve_precision("bf16", torch.device("cpu"), never).value == "bf16"
    assert resolve_precision("fp32", torch.device("cpu"), never).value == "fp32"


def _losses(path):
    return [r["loss"] for r in RunDir(path).read_metrics() if r.get("loss") is not None]


@pytest.mark.parametrize("other", ["auto", "bf16"])
def test_auto_and_bf16_train_like_fp32(tmp_path, other):
    # auto resolves to whatever is fast here; bf16 is forced too so the comparison is made on every machine
    reference = make(tmp_path / "fp32", eval_every=0, precision="fp32", log_every=1)
    reference.fit()
    trainer = make(tmp_path / other, eval_every=0, precision=other, log_every=1)
    assert trainer.precision in {"fp32", "bf16"}
    trainer.fit()
    assert _losses(tmp_path / other) == pytest.approx(_losses(tmp_path / "fp32"), rel=0.05, abs=2e-3)


def test_config_json_records_the_resolved_precision(tmp_path, corpus_file):
    out = tmp_path / "run"
    api.train("text-lm", str(corpus_file), out, preset="tiny", max_steps=3, overrides=["train.precision=auto"],
              quiet=True)
    saved = json.loads((out / files.CONFIG).read_text())
    assert saved["precision"]["requested"] == "auto"
    assert saved["precision"]["resolved"] == saved["config"]["train"]["precision"] in {"fp32", "bf16"}
    assert saved["precision"]["reason"]
