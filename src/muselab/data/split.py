"""The one held-out split rule: every item is placed by a stable hash of its key, never by shuffling.

The hash is md5 of the key's UTF-8 bytes read as a 128-bit integer. It is the same on every machine
and Python run (unlike `hash()`), so the same item always lands in the same split. Two readings of it:

- `split_of(key, val_share, test_share)`: the top 52 bits as a number in [0, 1) against the shares;
  adding items moves no existing one (users' pair files).
- `bucket_split_of(key, buckets)`: the number modulo `buckets` (the published CMUdict G2P split is
  `int(md5(word.lower()), 16) % 20`: 0 = test, 1 = validation).
- `hold_out(keys, share, groups)`: exactly `round(n * share)` items, stratified by group, taken in the
  order of the same hash (images and audio clips, where a small set must still have both parts).

Text for language models is the exception: it is one stream, so `tail_cut` holds out its end.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Sequence
from typing import Literal

import numpy as np

Split = Literal["train", "val", "test"]

_FRACTION_BITS = 52  # exact in a float64


def stable_hash(key: str | bytes) -> int:
    """md5 of `key` (UTF-8 for text) as a 128-bit integer."""
    # surrogatepass: a JSONL string may hold a lone surrogate; valid text hashes as plain UTF-8.
    data = key.encode("utf-8", "surrogatepass") if isinstance(key, str) else key
    return int(hashlib.md5(data).hexdigest(), 16)


def stable_bucket(key: str | bytes, buckets: int) -> int:
    """Which of `buckets` equal buckets `key` falls in."""
    return stable_hash(key) % buckets


def stable_fraction(key: str | bytes) -> float:
    """`key` as a uniform number in [0, 1): the top 52 bits of its hash."""
    return (stable_hash(key) >> (128 - _FRACTION_BITS)) / 2**_FRACTION_BITS


def split_of(key: str | bytes, val_share: float = 0.0, test_share: float = 0.0) -> Split:
    """Below `test_share` is test, below `test_share + val_share` validation, the rest training."""
    u = stable_fraction(key)
    if u < test_share:
        return "test"
    if u < test_share + val_share:
        return "val"
    return "train"


def bucket_split_of(key: str | bytes, buckets: int, test_bucket: int = 0, val_bucket: int = 1) -> Split:
    """Split by bucket number: `test_bucket` is test, `val_bucket` validation, every other bucket training."""
    bucket = stable_bucket(key, buckets)
    if bucket == test_bucket:
        return "test"
    if bucket == val_bucket:
        return "val"
    return "train"


def _quotas(group_sizes: np.ndarray, n_test: int) -> np.ndarray:
    """`n_test` places shared in proportion to group size (largest remainders get the rest)."""
    quota = n_test * group_sizes / group_sizes.sum()
    take = np.floor(quota).astype(np.int64)
    # Leftover places go to the largest remainders, but first to groups that still keep an item for training.
    order = np.lexsort((-(quota - take), take + 1 >= group_sizes))
    take[order[: n_test - int(take.sum())]] += 1
    return take


def hold_out(keys: Sequence[str | bytes], share: float, groups: Sequence[Hashable] | None = None) -> list[bool]:
    """Which items are held out: `round(n * share)` of them (at least one and at most n - 1 when n >= 2),
    shared among `groups` in proportion to their size, and within a group those with the lowest
    `stable_fraction` of their key (ties in input order). A group of one stays in training unless
    places are left over."""
    n = len(keys)
    if n < 2:
        return [False] * n
    n_test = min(max(round(n * share), 1), n - 1)
    labels = list(groups) if groups is not None else [0] * n
    names = list(dict.fromkeys(labels))
    members = [[i for i in range(n) if labels[i] == name] for name in names]
    take = _quotas(np.array([len(m) for m in members]), n_test)
    held = [False] * n
    for rows, k in zip(members, take, strict=True):
        for i in sorted(rows, key=lambda i: (stable_fraction(keys[i]), i))[:k]:
            held[i] = True
    return held


def tail_cut(n: int, share: float) -> int:
    """Where to cut a stream of `n` items so that the last `round(n * share)` are held out."""
    return n - round(n * share)
