"""Distances between symbol sequences that more than one modality scores with (G2P's phoneme and word error
rates, the speech recogniser's word error rate)."""

from __future__ import annotations

from collections.abc import Sequence


def edit_distance(a: Sequence[str], b: Sequence[str]) -> int:
    """Levenshtein distance between two symbol sequences: fewest insertions, deletions and substitutions."""
    # Shared ends cost nothing; trimming them makes the usual near-miss (one wrong phoneme) cheap.
    start = 0
    end_a, end_b = len(a), len(b)
    while start < end_a and start < end_b and a[start] == b[start]:
        start += 1
    while end_a > start and end_b > start and a[end_a - 1] == b[end_b - 1]:
        end_a -= 1
        end_b -= 1
    a, b = a[start:end_a], b[start:end_b]
    if len(a) < len(b):
        a, b = b, a  # the row runs over the shorter sequence
    if not b:
        return len(a)
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        diag, row[0] = row[0], i
        for j, y in enumerate(b, start=1):
            # row[j] still holds the previous row's value (deletion); row[j - 1] is this row's (insertion).
            best = diag if x == y else diag + 1
            up = row[j] + 1
            left = row[j - 1] + 1
            if up < best:
                best = up
            if left < best:
                best = left
            diag, row[j] = row[j], best
    return row[-1]
