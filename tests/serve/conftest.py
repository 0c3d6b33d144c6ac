"""Tiny runs of a text, an image and an audio recipe (plus a seq2seq for the attention picture), trained
once per session, and a server over them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn, python-multipart) is not installed")


@pytest.fixture(scope="session")
def serve_runs(tmp_path_factory: pytest.TempPathFactory, corpus_file: Path) -> dict[str, Path]:
    from muselab import api

    root = tmp_path_factory.mktemp("serve-runs")
    pairs = root / "pairs.tsv"
    words = ["cat", "dog", "bird", "fish", "lamp", "tree", "stone", "river", "cloud", "light"] * 8
    pairs.write_text("".join(f"{w}{i}\t{' '.join(reversed(w))}\n" for i, w in enumerate(words)), encoding="utf-8")
    runs = {"poems": ("text-lm", str(corpus_file), {}),
            "digits": ("image-gan", "builtin:digits", {"max_steps": 4, "overrides": ["model.conditional=true"]}),
            "flute": ("audio-ddsp", None, {"max_steps": 2}),
            "reverse": ("text-seq2seq", str(pairs), {"max_steps": 4})}
    out = {}
    for name, (recipe, data, extra) in runs.items():
        api.train(recipe, data, root / name, preset="tiny", quiet=True, **extra)
        out[name] = root / name
    return out


@pytest.fixture(scope="module")
def gallery_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gallery")


def _make_client(runs: dict[str, Path], gallery: Path, **options):
    from fastapi.testclient import TestClient

    from muselab.serve.app import create_app

    return TestClient(create_app(list(runs.values()), gallery=gallery, **options), raise_server_exceptions=False)


@pytest.fixture(scope="session")
def make_client():
    """A TestClient over these runs with these server options (use it in a `with`)."""
    return _make_client


@pytest.fixture(scope="module")
def client(serve_runs: dict[str, Path], gallery_dir: Path):
    from muselab.serve.models import Limits

    with _make_client(serve_runs, gallery_dir, limits=Limits(max_body_bytes=20_000, max_upload_bytes=200_000,
                                                             max_tokens=64, max_images=16, max_audio_seconds=4,
                                                             time_limit_s=30)) as c:
        yield c


# -- a real server in a subprocess (browser and crash tests) ----------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(runs: list[Path], gallery: Path, *extra: str, timeout: float = 120.0
                 ) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    log = open(gallery.parent / f"server-{port}.log", "w")  # noqa: SIM115 (the process writes it)
    process = subprocess.Popen([sys.executable, "-m", "muselab", "serve", *map(str, runs), "--port", str(port),
                                "--gallery", str(gallery), *extra], stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited: {Path(log.name).read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/v1/health", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("the server did not start in time")


@pytest.fixture(scope="session")
def server_process():
    """start_server(runs, gallery, *options) -> (process, url): `muselab serve` on a free loopback port."""
    return start_server
