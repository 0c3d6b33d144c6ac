"""How long builtin:speech takes to build from an empty cache, and how much speech it holds.

    python benchmarks/bench_speech_data.py [--counts 1600 2860] [--workers N]

Each count is built into its own empty temporary cache (flite runs `--workers` at once, default one per
CPU), then loaded again from the cache. Wall time depends on what else the machine is doing, so the CPU
time of the flite processes and of Python is recorded too, with the load average: CPU seconds divided by
the cores gives the wall time on an idle machine.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

from common import print_table, write_result

from muselab.data.speech import load_speech


def cpu_seconds() -> tuple[float, float]:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", type=int, nargs="+", default=[1600, 2860])
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    runs = []
    for count in args.counts:
        cache = Path(tempfile.mkdtemp(prefix="bench-speech-"))
        try:
            load_before = os.getloadavg()[0]
            own0, children0 = cpu_seconds()
            start = time.perf_counter()
            data = load_speech("builtin:speech", utterances=count, workers=args.workers, cache_dir=cache)
            build = time.perf_counter() - start
            own1, children1 = cpu_seconds()
            start = time.perf_counter()
            load_speech("builtin:speech", utterances=count, cache_dir=cache)
            cached = time.perf_counter() - start
            minutes = data.info["minutes_per_speaker"]
            runs.append({
                "utterances": count, "build_wall_s": round(build, 1),
                "build_cpu_s": {"flite": round(children1 - children0, 1), "python": round(own1 - own0, 1)},
                "idle_estimate_s": round((children1 - children0 + own1 - own0) / (os.cpu_count() or 1), 1),
                "load_average_before": round(load_before, 1), "load_average_after": round(os.getloadavg()[0], 1),
                "cached_load_s": round(cached, 2), "minutes_per_speaker": minutes,
                "total_minutes": round(sum(minutes.values()), 1), "train": data.info["train"],
                "held_out": data.info["held_out"],
                "cache_mb": round(sum(f.stat().st_size for f in cache.rglob("*") if f.is_file()) / 1e6, 1),
            })
        finally:
            shutil.rmtree(cache, ignore_errors=True)
        run = runs[-1]
        print_table([(f"{count} utterances: {k}", v) for k, v in run.items() if k != "utterances"])
        print()
    path = write_result("speech_data", {
        "command": "python benchmarks/bench_speech_data.py --counts " + " ".join(map(str, args.counts)),
        "flite": data.info["flite"], "cpu_model": cpu_model(), "cpus": os.cpu_count(), "runs": runs})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
