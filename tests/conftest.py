"""Shared fixtures: small text the project makes itself, and one tiny trained run reused by many tests."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

# Test tensors are tiny and subprocess tests share the cores: one thread each costs less than contention.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory):
    """Decoded images and trained feature nets are cached; tests keep theirs out of the user's cache."""
    before = os.environ.get("MUSELAB_CACHE")
    os.environ["MUSELAB_CACHE"] = str(tmp_path_factory.mktemp("muselab-cache"))
    yield
    if before is None:
        os.environ.pop("MUSELAB_CACHE", None)
    else:
        os.environ["MUSELAB_CACHE"] = before


_WORDS = ("the quick brown fox jumps over a lazy dog while seven bright stars sing softly above "
          "old stone bridges and river boats drift past gardens of tall green trees").split()


def make_text(n_lines: int = 400, seed: int = 0) -> str:
    rng = random.Random(seed)
    lines = [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 10))).capitalize() + "."
             for _ in range(n_lines)]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "corpus.txt"
    path.write_text(make_text(), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, corpus_file: Path) -> Path:
    """A text-lm trained with the tiny preset; tests must not modify it (copy it first)."""
    from muselab import api

    out = tmp_path_factory.mktemp("runs") / "tiny"
    api.train("text-lm", str(corpus_file), out, preset="tiny", quiet=True)
    return out


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run the real `muselab` command line in a subprocess."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "muselab", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)
