"""False positives of the default moderation policy on Tiny Shakespeare, and the cost of decode-time bans.

    python benchmarks/bench_moderation.py [--data PATH] [--policy FILE.toml] [--no-bans]

Part 1: every non-empty line of the play text is moderated on its own; a line is *flagged* when any
category matches it (block, redact or warn alike). Shakespeare has almost no modern profanity, explicit
content or personal data, so nearly every flag is a false positive or an archaic hit ("whoreson");
target: under 2 % of lines. Prints the rate per category, lines per second and the 20 most frequent
flagged words (as written).

Part 2: the per-step cost of `BannedWordsProcessor` at batch 8 for 20 banned words, with a BPE tokenizer
of about 4,000 tokens trained on the same text and with a character tokenizer, on rows of real text
(so partial matches are live as often as in real decoding). Writes both parts to
benchmarks/results/moderation.json.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections import Counter
from pathlib import Path

import torch
from common import SHARED_DATA, Timer, print_table, time_call, write_result

from muselab.safety.moderation import load_policy, moderate
from muselab.text.bans import build_ban_processor
from muselab.text.tokenizers import train_tokenizer

BANNED = ["fuck", "shit", "bitch", "bastard", "asshole", "cunt", "whore", "slut", "dick", "piss",
          "damn", "crap", "wanker", "twat", "bollocks", "prick", "cock", "pussy", "ass", "zorbleflax"]


def false_positives(lines: list[str], policy_path: str | None) -> dict:
    policy = load_policy(policy_path)
    moderate("warm up the compiled policy", policy)
    per_category: Counter[str] = Counter()
    words: Counter[str] = Counter()
    flagged = 0
    clock = Timer()
    for line in lines:
        verdict = moderate(line, policy)
        if verdict.matches:
            flagged += 1
            per_category.update(verdict.categories)
            words.update(m.text.lower() for m in verdict.matches)
    seconds = clock.stop()
    return {
        "lines": len(lines),
        "flagged_lines": flagged,
        "flagged_rate": flagged / len(lines),
        "lines_per_s": len(lines) / seconds,
        "per_category": {name: {"lines": n, "rate": n / len(lines)} for name, n in per_category.most_common()},
        "top_words": words.most_common(20),
    }


def ban_step_cost(text: str, kind: str, vocab_size: int, batch: int = 8, steps: int = 200) -> dict:
    """Mean seconds per processor call while decoding random rows of real text, one token at a time."""
    tokenizer = train_tokenizer(kind, text, vocab_size)
    build_s, processor = time_call(lambda: build_ban_processor(BANNED, tokenizer))
    ids = tokenizer.encode(text[:200_000], strict=False)
    rng = random.Random(0)
    offsets = [rng.randrange(len(ids) - steps - 64) for _ in range(batch)]
    rows = torch.tensor([ids[o : o + 64 + steps] for o in offsets])
    scores = torch.randn(batch, tokenizer.vocab_size)
    clock = Timer()
    for t in range(steps):
        processor(rows[:, : 64 + t], scores)
    per_step = clock.stop() / steps
    return {"tokenizer": kind, "vocab_size": tokenizer.vocab_size, "words": len(BANNED), "batch": batch,
            "build_s": build_s, "step_ms": per_step * 1e3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(SHARED_DATA / "tinyshakespeare.txt"))
    parser.add_argument("--policy", default=None, help="a policy file instead of the default policy")
    parser.add_argument("--no-bans", action="store_true", help="skip the decode-time ban timing")
    args = parser.parse_args()
    path = Path(args.data)
    if not path.is_file():
        print(f"skipped: {path} does not exist (it comes with the shared data folder beside the repository)")
        sys.exit(0)
    text = path.read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line.strip()]

    fp = false_positives(lines, args.policy)
    rows = [("lines", fp["lines"]), ("flagged lines", fp["flagged_lines"]),
            ("flagged rate", fp["flagged_rate"]), ("lines/s", fp["lines_per_s"])]
    rows += [(f"  {name}", f"{c['lines']} lines ({100 * c['rate']:.2f} %)") for name, c in fp["per_category"].items()]
    print_table(rows)
    print("most frequent flagged words:", ", ".join(f"{w} ({n})" for w, n in fp["top_words"]))
    print(f"target < 2 % of lines flagged: {'met' if fp['flagged_rate'] < 0.02 else 'NOT met'}")
    result = {"false_positives": fp}

    if not args.no_bans:
        costs = [ban_step_cost(text, "bpe", 4000), ban_step_cost(text, "char", 0)]
        for cost in costs:
            print_table([(f"ban {cost['tokenizer']} V={cost['vocab_size']} words={cost['words']} "
                          f"batch={cost['batch']}: ms/step", cost["step_ms"]),
                         ("  build s", cost["build_s"])])
        result["bans"] = costs
    print(f"written {write_result('moderation', result)}")


if __name__ == "__main__":
    main()
