"""Every user error ends in one line on stderr, exit status 2, no traceback, nothing left behind."""

import pickle
import shutil

import pytest
import torch

from conftest import run_cli


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def train_args(data, out):
    return ["train", "text-lm", "--data", str(data), "--out", str(out), "--preset", "tiny", "--quiet"]


def test_missing_data_path(tmp_path):
    result = run_cli(*train_args(tmp_path / "nope.txt", tmp_path / "run"))
    assert_one_line_error(result, "nope.txt", "does not exist")
    assert not (tmp_path / "run").exists()


def test_empty_file(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    result = run_cli(*train_args(tmp_path / "empty.txt", tmp_path / "run"))
    assert_one_line_error(result, "empty.txt")
    assert not (tmp_path / "run").exists()


def test_non_utf8_file(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1") * 20)
    result = run_cli(*train_args(tmp_path / "latin1.txt", tmp_path / "run"))
    assert_one_line_error(result, "latin1.txt", "UTF-8")
    assert not (tmp_path / "run").exists()


def test_unknown_recipe(tmp_path, corpus_file):
    result = run_cli("train", "text-gpt9", "--data", str(corpus_file), "--out", str(tmp_path / "run"))
    assert_one_line_error(result, "unknown recipe 'text-gpt9'", "text-lm")
    assert not (tmp_path / "run").exists()


def test_unknown_config_key(tmp_path, corpus_file):
    result = run_cli(*train_args(corpus_file, tmp_path / "run"), "--set", "model.n_layr=2")
    assert_one_line_error(result, "model.n_layr", "n_layer")
    assert not (tmp_path / "run").exists()


def test_bad_option_is_one_line(tmp_path, corpus_file):
    result = run_cli(*train_args(corpus_file, tmp_path / "run"), "--max-steps", "lots")
    assert_one_line_error(result, "--max-steps")


@pytest.mark.parametrize("option, value, fragment", [
    ("--temperature", "-0.5", "--temperature"),
    ("--top-p", "0", "--top-p"),
    ("--top-p", "1.5", "--top-p"),
])
def test_bad_generation_controls(tiny_run, tmp_path, option, value, fragment):
    result = run_cli("generate", str(tiny_run), option, value, "--out", str(tmp_path / "out"))
    assert_one_line_error(result, fragment)
    assert not (tmp_path / "out").exists()


def test_out_that_holds_a_run(tiny_run, tmp_path, corpus_file):
    before = sorted(p.name for p in tiny_run.iterdir())
    result = run_cli(*train_args(corpus_file, tiny_run))
    assert_one_line_error(result, "already holds a run", "--overwrite")
    assert sorted(p.name for p in tiny_run.iterdir()) == before


def test_missing_weights(tiny_run, tmp_path):
    broken = tmp_path / "run"
    shutil.copytree(tiny_run, broken)
    (broken / "model.safetensors").unlink()
    assert_one_line_error(run_cli("generate", str(broken)), "model.safetensors", "missing")


def test_corrupt_weights(tiny_run, tmp_path):
    broken = tmp_path / "run"
    shutil.copytree(tiny_run, broken)
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert_one_line_error(run_cli("evaluate", str(broken)), "model.safetensors")


def test_pickle_passed_as_checkpoint(tiny_run, tmp_path):
    broken = tmp_path / "run"
    shutil.copytree(tiny_run, broken)
    torch.save({"wte.weight": torch.zeros(3)}, broken / "model.safetensors")
    result = run_cli("generate", str(broken))
    assert_one_line_error(result, "not a safetensors file", "pickle")

    (broken / "model.safetensors").write_bytes(pickle.dumps({"a": 1}))
    assert_one_line_error(run_cli("generate", str(broken)), "pickle")


def test_not_a_run_directory(tmp_path):
    assert_one_line_error(run_cli("info", str(tmp_path / "nothing")), "does not exist")
