"""Helpers shared by the benchmarks: the one timer, a measured matmul peak and result files."""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

RESULTS = Path(__file__).resolve().parent / "results"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

T = TypeVar("T")


def _sync() -> None:
    # GPU work is asynchronous: wait for it so the clock measures the work, not its launch.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


class Timer:
    """The benchmarks' one wall-clock timer (perf_counter, GPU-synchronised): starts when made;
    `stop()` returns the seconds; also a `with` block, after which `seconds` holds the block's time."""

    def __init__(self) -> None:
        self.restart()

    def restart(self) -> None:
        _sync()
        self._start, self._stop = time.perf_counter(), None

    def stop(self) -> float:
        _sync()
        self._stop = time.perf_counter()
        return self.seconds

    @property
    def seconds(self) -> float:
        return (self._stop if self._stop is not None else time.perf_counter()) - self._start

    def __enter__(self) -> Timer:
        self.restart()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def time_call(fn: Callable[[], T]) -> tuple[float, T]:
    """(seconds, result) of one call of `fn`."""
    clock = Timer()
    result = fn()
    return clock.stop(), result


def clocked(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call of `fn`: with one thread the CPU time leaves out
    the waits other work on a shared machine adds."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def best_of(fn: Callable[[], object], repeats: int) -> float:
    """The fastest of `repeats` calls of `fn`, in seconds (the least disturbed by other work)."""
    return min(time_call(fn)[0] for _ in range(repeats))


def matmul_peak_gflops(dtype: torch.dtype = torch.float32, size: int = 1024, seconds: float = 2.0) -> float:
    """Best sustained square-matmul rate on this machine now, the denominator of MFU."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    best, clock = 0.0, Timer()
    while clock.seconds < seconds:
        best = max(best, 2 * size**3 / time_call(lambda: a @ b)[0] / 1e9)
    return best


def cpu_model() -> str:
    """The CPU's model name (platform.processor() is empty on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_result(name: str, result: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    result = {**result, "machine": {"python": platform.python_version(), "torch": torch.__version__,
                                    "threads": torch.get_num_threads(), "cpu": cpu_model()}}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def print_table(rows: list[tuple[str, Any]]) -> None:
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {shown}")


def budget_arguments(parser: argparse.ArgumentParser, minutes: float, name: str) -> None:
    """The options of a "train the default preset under a budget, then evaluate" benchmark."""
    parser.add_argument("--minutes", type=float, default=minutes)
    parser.add_argument("--preset", default="default")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", help="keep the run here (default: a temporary folder)")
    parser.add_argument("--name", default=name)


def train_and_evaluate(recipe: str, data: str, args: argparse.Namespace, script: str
                       ) -> tuple[Any, dict[str, Any], Path, str]:
    """Train `recipe` on `data` as the budget arguments say, evaluate it; returns the training result, the
    metrics, the run directory and the command line that reproduces it."""
    from muselab import api

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix=f"bench-{args.name}-")) / "run"
    result = api.train(recipe, data, out, preset=args.preset, overrides=args.overrides, max_minutes=args.minutes,
                       overwrite=True, quiet=not sys.stderr.isatty())
    metrics = api.evaluate(out)
    command = (f"python benchmarks/{script} --minutes {args.minutes:g} --preset {args.preset}"
               + "".join(f" --set {o}" for o in args.overrides))
    return result, metrics, out, command
