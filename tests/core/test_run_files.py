"""A damaged run directory ends in one line naming the file and what is wrong, never a traceback."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import struct
from pathlib import Path

import pytest
import torch

from helpers import error_message
from muselab import api, cli
from muselab.core.checkpoint import save_tensors
from muselab.core.errors import CheckpointError, ConfigError
from muselab.core.rundir import RunDir


@pytest.fixture
def run(tiny_run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_run, tmp_path / "run"))


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(json.dumps(change(data)), encoding="utf-8")


def main(*args: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        status = cli.main(list(args))
    return status, err.getvalue()


@pytest.mark.parametrize(("change", "expected"), [
    (lambda c: [c], "the top level is a list, not a JSON object"),
    (lambda c: {**c, "config": {**c["config"], "train": 3}}, "'config.train' is a number, not an object"),
    (lambda c: {**c, "recipe": ["text-lm"]}, "'recipe' is a list, not a string"),
    (lambda c: {k: v for k, v in c.items() if k != "data"}, "no 'data' entry"),
    (lambda c: {**c, "data": {**c["data"], "spec": 7}}, "'data.spec' is a number, not a string"),
])
def test_config_of_the_wrong_shape_is_one_line_for_every_command(run: Path, change, expected: str) -> None:
    edit_json(run / "config.json", change)
    with pytest.raises(CheckpointError) as err:
        RunDir(run).read_config()
    assert expected in error_message(err)
    for args in (["info", str(run)], ["generate", str(run)], ["evaluate", str(run)],
                 ["train", "--out", str(run), "--resume", "--quiet"]):
        status, stderr = main(*args)
        assert status == 2 and stderr.count("muselab: error:") == 1 and expected in stderr, (args, stderr)


def test_config_value_of_the_wrong_type_is_refused_by_load_and_resume(run: Path) -> None:
    edit_json(run / "config.json", lambda c: {**c, "config": {**c["config"], "model": {
        **c["config"]["model"], "n_layer": "four"}}})
    with pytest.raises(CheckpointError) as err:
        api.load(run)
    assert "config" in error_message(err)
    with pytest.raises(ConfigError, match="model.n_layer: 'four'") as err:
        api.train(None, None, run, resume=True, quiet=True)
    error_message(err)


def test_trainer_state_json_of_the_wrong_types_is_one_line(run: Path) -> None:
    edit_json(run / "trainer_state.json", lambda s: {**s, "elapsed_s": "ten"})
    status, stderr = main("info", str(run))
    assert status == 2 and "'elapsed_s' is a string, not a number" in stderr


def test_damaged_training_log_lines_are_left_out(run: Path) -> None:
    log = run / "metrics.jsonl"
    good = log.read_bytes()
    log.write_bytes(good + b'{"step": 3, "loss": "x"}\n7\n\xff\xfe{"step"\n{"step": "9"}\n')
    records = RunDir(run).read_metrics()
    assert records and all(isinstance(r["step"], int) for r in records)
    assert len(records) == len([line for line in good.splitlines() if line.strip()])
    RunDir(run).truncate_metrics(10**9)
    assert log.read_bytes().count(b"\n") == len(records)


def _rewrite_state(run: Path, change_meta=None, change_tensors=None) -> None:
    from safetensors.torch import load_file

    path = run / "trainer_state.safetensors"
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    meta = json.loads(json.loads(raw[8:8 + length])["__metadata__"]["state"])
    tensors = load_file(str(path))
    save_tensors(path, change_tensors(tensors) if change_tensors else tensors,
                 metadata={"state": json.dumps(change_meta(meta) if change_meta else meta)})


def _set_betas(meta, value):
    meta["param_groups"]["main"][0]["betas"] = value
    return meta


def _drop_betas(meta):
    for group in meta["param_groups"]["main"]:
        del group["betas"]
    return meta


def _widen(tensors):
    name = next(k for k in tensors if k.startswith("opt.") and k.endswith("exp_avg"))
    return {**tensors, name: torch.zeros(3, 3)}


@pytest.mark.parametrize(("change_meta", "change_tensors", "expected"), [
    (lambda m: {**m, "step": -3}, None, "a counter is negative"),
    (lambda m: {**m, "elapsed_s": "soon"}, None, "'elapsed_s' is a string"),
    (lambda m: {k: v for k, v in m.items() if k != "param_groups"}, None, "no 'param_groups' entry"),
    (lambda m: {**m, "param_groups": {"generator": []}}, None, r"optimizers \['generator'\], expected \['main'\]"),
    (lambda m: _set_betas(m, "x"), None, "optimizer state .* does not fit this model"),
    (None, _widen, "optimizer state .* does not fit this model"),
    (None, lambda t: {**t, "opt.main.x.exp_avg": torch.zeros(1)}, "unknown entry 'opt.main.x.exp_avg'"),
    (None, lambda t: {k: v for k, v in t.items() if k != "model.lm_head.weight"}, "missing: lm_head.weight"),
])
def test_damaged_checkpoint_state_is_refused_before_training(run: Path, change_meta, change_tensors,
                                                             expected: str) -> None:
    _rewrite_state(run, change_meta, change_tensors)
    with pytest.raises(CheckpointError, match=expected) as err:
        api.train(None, None, run, resume=True, max_steps=40, quiet=True)
    error_message(err)


def test_optimizer_setting_missing_from_an_older_checkpoint_takes_todays_value(run: Path) -> None:
    _rewrite_state(run, _drop_betas)
    result = api.train(None, None, run, resume=True, max_steps=32, quiet=True)
    assert result.step == 32


def test_damaged_copy_index_is_one_line(run: Path) -> None:
    from muselab.text.metrics import load_copy_index

    path = run / "copy_index.safetensors"
    raw = path.read_bytes()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw[8:])
    with pytest.raises(CheckpointError, match="not a readable copy index .its header") as err:
        load_copy_index(path)
    error_message(err)
    status, stderr = main("generate", str(run), "--max-new-tokens", "4")
    assert status == 2 and stderr.count("muselab: error:") == 1 and "Traceback" not in stderr
