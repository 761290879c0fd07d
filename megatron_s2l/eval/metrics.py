"""Evaluation estimators over k samples per problem: unbiased pass@k, avg@k (Pass@1 averaged over k
samples, what the S2L-PO paper reports as avg@16) and maj@k (majority vote)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k).

    Evaluated as 1 - prod_{i=n-c+1}^{n} (1 - k / i), which avoids huge binomials.
    """
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got n={n}, k={k}")
    if n - c < k:
        return 1.0
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


def avg_at_k(correct: Sequence[bool]) -> float:
    """Mean accuracy over the k samples of one problem (avg@k = expected Pass@1)."""
    if not correct:
        raise ValueError("avg@k needs at least one sample")
    return sum(map(bool, correct)) / len(correct)


def maj_at_k(predictions: Sequence[str], correct: Sequence[bool]) -> float:
    """1.0 if the most frequent non-empty prediction is correct (ties: the one seen first), else 0.0."""
    if len(predictions) != len(correct):
        raise ValueError(f"{len(predictions)} predictions but {len(correct)} correctness flags")
    votes = Counter(p for p in predictions if p)
    if not votes:
        return 0.0
    top = max(votes.values())
    winner = next(p for p in predictions if p and votes[p] == top)
    return float(correct[predictions.index(winner)])
