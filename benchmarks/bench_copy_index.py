"""Speed of CopyIndex (suffix array) against a plain substring search, on Tiny Shakespeare.

    python benchmarks/bench_copy_index.py [--text PATH] [--samples 20] [--chars 500] [--json OUT]

Samples are built like model output that partly copies its training data: a verbatim span from
the text, some made-up characters, then another verbatim span. Both methods must agree exactly.
The baseline is the obvious exact method: binary search on the span length, checking every span
of that length with ``in`` over the whole text. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import platform
import random
import sys
from pathlib import Path

from common import time_call

from muselab.core.io import atomic_write_json
from muselab.text.metrics import CopyIndex

DEFAULT_TEXT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tinyshakespeare.txt"
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "copy_index.json"


def baseline_longest_copy(sample: str, text: str) -> tuple[int, int]:
    """Exact but slow: binary search on length k, each step scanning the text once per span."""

    def first_hit(k: int) -> int | None:
        for start in range(len(sample) - k + 1):
            if sample[start : start + k] in text:
                return start
        return None

    lo, lo_start, hi = 0, 0, len(sample)  # a span of length lo occurs; none longer than hi does
    while lo < hi:
        mid = (lo + hi + 1) // 2
        hit = first_hit(mid)
        if hit is None:
            hi = mid - 1
        else:
            lo, lo_start = mid, hit
    return lo, lo_start


def make_samples(text: str, count: int, chars: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    samples = []
    for _ in range(count):
        copy_a = rng.randint(chars // 10, chars // 2)
        noise = rng.randint(chars // 10, chars // 3)
        copy_b = max(0, chars - copy_a - noise)
        a = rng.randrange(len(text) - copy_a)
        b = rng.randrange(len(text) - copy_b)
        made_up = "".join(rng.choice("qxzjk vw") for _ in range(noise))
        samples.append(text[a : a + copy_a] + made_up + text[b : b + copy_b])
    return samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--text", type=Path, default=DEFAULT_TEXT)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--chars", type=int, default=500)
    parser.add_argument(
        "--baseline-samples", type=int, default=3, help="the baseline is slow; time it on a few"
    )
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args(argv)

    if not args.text.is_file():
        print(f"skipped: training text {args.text} not found (pass --text PATH)")
        return 0
    text = args.text.read_text(encoding="utf-8")
    samples = make_samples(text, args.samples, args.chars)

    build_s, index = time_call(lambda: CopyIndex(text))
    query_s, results = time_call(lambda: [index.longest_copy(s) for s in samples])

    n_base = min(args.baseline_samples, len(samples))
    base_s, base_results = time_call(lambda: [baseline_longest_copy(s, text) for s in samples[:n_base]])
    if base_results != results[:n_base]:
        print(f"MISMATCH: CopyIndex {results[:n_base]} vs baseline {base_results}", file=sys.stderr)
        return 1

    per_sample = query_s / len(samples)
    base_per_sample = base_s / n_base if n_base else float("nan")
    rows = [
        ("training text", f"{len(text):,} chars"),
        ("samples", f"{len(samples)} x {args.chars} chars"),
        ("CopyIndex build", f"{build_s:.3f} s"),
        ("CopyIndex query / sample", f"{per_sample * 1000:.2f} ms"),
        ("CopyIndex build + all queries", f"{build_s + query_s:.3f} s"),
        (f"baseline query / sample (n={n_base})", f"{base_per_sample * 1000:.1f} ms"),
        ("query speed-up vs baseline", f"{base_per_sample / per_sample:.0f}x"),
        ("longest copies (chars)", ", ".join(str(length) for length, _ in results[:8]) + " ..."),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")

    record = {
        "benchmark": "copy_index",
        "text_chars": len(text),
        "samples": len(samples),
        "sample_chars": args.chars,
        "build_s": build_s,
        "query_s_per_sample": per_sample,
        "total_s": build_s + query_s,
        "baseline_samples": n_base,
        "baseline_query_s_per_sample": base_per_sample,
        "query_speedup": base_per_sample / per_sample,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    atomic_write_json(args.json, record)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
