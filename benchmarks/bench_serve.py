"""Load test of `muselab serve` on loopback: many concurrent clients asking a tiny text model for text.

    python benchmarks/bench_serve.py [--clients 50] [--seconds 60] [--tokens 32] [--queue 8] [--workers 1]
                                     [--run RUN] [--name serve]

Trains a tiny text-lm (a few seconds; or serves --run), starts `muselab serve` on 127.0.0.1 in a subprocess
with a fresh gallery, and runs --clients clients for --seconds: each sends POST /v1/models/NAME/generate
({"prompt": "the", "max_new_tokens": --tokens, "seed": n}) and, as soon as the answer comes, the next one.
A 429 (the model's queue is full: the server refusing work on purpose) is counted apart from errors, and
its client waits as Retry-After says (at most 2 s) before asking again. Everything else that is not a 200
(another status, a dropped connection, a client timeout of 120 s) is an error.

Reports throughput (completed generations and generated tokens per second), latency of completed requests
(p50, p90, p99, max; queueing included), 429s and errors, and writes benchmarks/results/NAME.json with the
CPU model and thread count. Every completed request also went through the pipeline and into the gallery.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from common import Timer, print_table, write_result

TEXT = ("the quick brown fox jumps over a lazy dog while seven bright stars sing softly above old stone bridges "
        "and river boats drift past gardens of tall green trees\n")


def _tiny_run(folder: Path) -> Path:
    from muselab import api

    corpus = folder / "corpus.txt"
    corpus.write_text(TEXT * 200, encoding="utf-8")
    api.train("text-lm", str(corpus), folder / "tiny", preset="tiny", quiet=True)
    return folder / "tiny"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(run: Path, gallery: Path, queue: int, workers: int) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    log = open(gallery.parent / "server.log", "w")  # noqa: SIM115 (the server writes it)
    process = subprocess.Popen([sys.executable, "-m", "muselab", "serve", str(run), "--port", str(port),
                                "--gallery", str(gallery), "--queue", str(queue), "--workers", str(workers)],
                               stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited: {Path(log.name).read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/v1/health", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.3)
    process.kill()
    raise SystemExit("the server did not start within 3 minutes")


async def _load(url: str, model: str, clients: int, seconds: float, tokens: int) -> dict:
    latencies: list[float] = []
    refused, errors, kinds = 0, 0, {}
    stop_at = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=clients + 10, max_keepalive_connections=clients + 10)

    async def client(index: int, http: httpx.AsyncClient) -> None:
        nonlocal refused, errors
        n = 0
        while time.monotonic() < stop_at:
            body = {"prompt": "the", "max_new_tokens": tokens, "seed": index * 1_000_000 + n}
            n += 1
            start = time.perf_counter()
            try:
                reply = await http.post(f"/v1/models/{model}/generate", json=body)
            except httpx.HTTPError as err:
                errors += 1
                kinds[type(err).__name__] = kinds.get(type(err).__name__, 0) + 1
                continue
            if reply.status_code == 200:
                latencies.append(time.perf_counter() - start)
            elif reply.status_code == 429:
                refused += 1
                await asyncio.sleep(min(2.0, float(reply.headers.get("retry-after", "1"))))
            else:
                errors += 1
                kinds[str(reply.status_code)] = kinds.get(str(reply.status_code), 0) + 1

    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        clock = Timer()
        await asyncio.gather(*(client(i, http) for i in range(clients)))
        elapsed = clock.stop()
    return {"latencies": latencies, "refused": refused, "errors": errors, "error_kinds": kinds, "elapsed": elapsed}


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--tokens", type=int, default=32, help="max_new_tokens per request")
    parser.add_argument("--queue", type=int, default=8, help="the server's --queue (requests waiting per model)")
    parser.add_argument("--workers", type=int, default=1, help="the server's --workers")
    parser.add_argument("--run", help="serve this run instead of training a tiny text-lm")
    parser.add_argument("--name", default="serve")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as folder:
        root = Path(folder)
        run = Path(args.run) if args.run else _tiny_run(root)
        process, url = _start(run, root / "gallery", args.queue, args.workers)
        try:
            model = httpx.get(f"{url}/v1/models").json()[0]["name"]
            httpx.post(f"{url}/v1/models/{model}/generate", json={"max_new_tokens": 4}, timeout=120)  # warm up
            load = asyncio.run(_load(url, model, args.clients, args.seconds, args.tokens))
            gallery_total = httpx.get(f"{url}/v1/gallery", params={"limit": 1}).json()["total"]
        finally:
            process.terminate()
            process.wait(30)

    done = len(load["latencies"])
    result = {
        "command": (f"python benchmarks/bench_serve.py --clients {args.clients} --seconds {args.seconds:g} "
                    f"--tokens {args.tokens} --queue {args.queue} --workers {args.workers}"),
        "clients": args.clients, "seconds": round(load["elapsed"], 2), "tokens_per_request": args.tokens,
        "queue": args.queue, "workers": args.workers, "completed": done,
        "requests_per_s": round(done / load["elapsed"], 3),
        "tokens_per_s": round(done * args.tokens / load["elapsed"], 1),
        "latency_s": {name: (round(v, 4) if v is not None else None) for name, v in (
            ("p50", _quantile(load["latencies"], 0.5)), ("p90", _quantile(load["latencies"], 0.9)),
            ("p99", _quantile(load["latencies"], 0.99)),
            ("max", max(load["latencies"]) if load["latencies"] else None))},
        "refused_429": load["refused"], "errors": load["errors"], "error_kinds": load["error_kinds"],
        "gallery_rows": gallery_total,
    }
    print_table([("clients", args.clients), ("seconds", result["seconds"]), ("completed", done),
                 ("requests/s", result["requests_per_s"]), ("tokens/s (at most)", result["tokens_per_s"]),
                 ("p50 latency s", result["latency_s"]["p50"]), ("p99 latency s", result["latency_s"]["p99"]),
                 ("429 (deliberate)", load["refused"]), ("errors", load["errors"]), ("gallery rows", gallery_total)])
    print(f"wrote {write_result(args.name, result)}")


if __name__ == "__main__":
    main()
