"""Crash safety and data-parallel training, driven through the real command line."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from muselab.core.checkpoint import load_tensors, weights_fingerprint

STEPS = 40
EVERY = 5


def train_command(data, out, *extra):
    return [sys.executable, "-m", "muselab", "train", "text-lm", "--data", str(data), "--out", str(out),
            "--preset", "tiny", "--max-steps", str(STEPS), "--set", f"train.checkpoint_every={EVERY}",
            "--set", "train.eval_every=0", "--seed", "11", "--quiet", *extra]


def checkpoint_step(run):
    state = run / "trainer_state.json"
    return json.loads(state.read_text())["step"] if state.is_file() else 0


@pytest.mark.slow
def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path, corpus_file):
    reference = tmp_path / "reference"
    subprocess.run(train_command(corpus_file, reference), check=True, capture_output=True)

    killed = tmp_path / "killed"
    process = subprocess.Popen(train_command(corpus_file, killed), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    # kill at a random moment after the first checkpoint and before the end
    target = random.Random().randint(EVERY, STEPS - EVERY)
    deadline = time.monotonic() + 120
    while checkpoint_step(killed) < target and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    interrupted_at = checkpoint_step(killed)
    assert 0 < interrupted_at < STEPS, f"the run was not interrupted mid-way ({interrupted_at})"

    subprocess.run(train_command(corpus_file, killed, "--resume"), check=True, capture_output=True)
    final, expected = load_tensors(killed / "model.safetensors"), load_tensors(reference / "model.safetensors")
    assert final.keys() == expected.keys()
    for name in expected:
        assert torch.equal(final[name], expected[name]), name
    logged = [r["step"] for r in map(json.loads, (killed / "metrics.jsonl").read_text().splitlines())
              if "loss" in r and r.get("loss") is not None]
    assert logged == sorted(set(logged))


@pytest.mark.slow
def test_resume_refuses_changed_data(tmp_path, corpus_file):
    data = tmp_path / "data.txt"
    shutil.copy(corpus_file, data)
    run = tmp_path / "run"
    subprocess.run(train_command(data, run, "--max-steps", "5"), check=True, capture_output=True)
    data.write_text(data.read_text() + "More words.\n")
    result = subprocess.run(train_command(data, run, "--resume"), capture_output=True, text=True)
    assert result.returncode == 2 and "changed" in result.stderr


@pytest.mark.slow
def test_torchrun_two_processes_end_with_identical_weights(tmp_path, corpus_file):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--no-python",
               sys.executable, "-m", "muselab", "train", "text-lm", "--data", str(corpus_file), "--out", str(out),
               "--preset", "tiny", "--max-steps", "10", "--quiet"]
    # the console script form (`torchrun ... --no-python muselab train ...`) is what the README shows;
    # `python -m muselab` is the same entry point without relying on PATH
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    state = json.loads((out / "trainer_state.json").read_text())
    fingerprints = state["rank_fingerprints"]
    assert len(fingerprints) == 2 and fingerprints[0] == fingerprints[1]
    assert fingerprints[0] == weights_fingerprint(load_tensors(out / "model.safetensors"))


@pytest.mark.slow
def test_torchrun_ranks_train_on_different_batches(tmp_path):
    # Data parallelism only helps when each rank draws its own samples: every micro-batch of every step
    # must differ between the ranks (and the two ranks still end with the same weights)
    worker = Path(__file__).with_name("ddp_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", str(worker), str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    ranks = [json.loads((tmp_path / f"batches_rank{r}.json").read_text()) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 3 * 2  # steps x micro-batches
    assert all(len(batch) == 4 for batches in ranks for batch in batches)
    seen_by_rank0 = {tuple(batch) for batch in ranks[0]}
    assert not seen_by_rank0 & {tuple(batch) for batch in ranks[1]}
    assert len(seen_by_rank0) == len(ranks[0])  # and micro-batches differ within a rank
    fingerprints = json.loads((tmp_path / "trainer_state.json").read_text())["rank_fingerprints"]
    assert len(fingerprints) == 2 and fingerprints[0] == fingerprints[1]
