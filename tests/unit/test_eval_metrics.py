"""pass@k against the closed-form unbiased estimator and brute-force enumeration; avg@k, maj@k."""

import itertools
import math

import pytest

from megatron_s2l.eval import avg_at_k, maj_at_k, pass_at_k


@pytest.mark.parametrize("n", [1, 2, 5, 16, 40])
def test_pass_at_k_equals_binomial_formula(n: int) -> None:
    for c in range(n + 1):
        for k in range(1, n + 1):
            want = 1.0 - math.comb(n - c, k) / math.comb(n, k)
            assert pass_at_k(n, c, k) == pytest.approx(want, abs=1e-12)


def test_pass_at_k_equals_enumeration_over_subsets() -> None:
    # pass@k is the probability that a random k-subset of the n samples holds a correct one.
    n, c, k = 7, 2, 3
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(samples, k))
    assert pass_at_k(n, c, k) == pytest.approx(sum(any(s) for s in subsets) / len(subsets))


def test_pass_at_1_is_accuracy_and_large_n_is_stable() -> None:
    assert pass_at_k(16, 5, 1) == pytest.approx(5 / 16)
    assert 0.0 < pass_at_k(1000, 3, 10) < 1.0


@pytest.mark.parametrize(("n", "c", "k"), [(4, 5, 1), (4, -1, 1), (4, 2, 0), (4, 2, 5)])
def test_pass_at_k_rejects_bad_counts(n: int, c: int, k: int) -> None:
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_avg_and_maj() -> None:
    assert avg_at_k([True, False, False, True]) == 0.5
    assert maj_at_k(["3", "5", "5", ""], [True, False, False, False]) == 0.0
    assert maj_at_k(["3", "5", "3", "5"], [True, False, True, False]) == 1.0  # tie: first seen wins
    assert maj_at_k(["", ""], [False, False]) == 0.0
    with pytest.raises(ValueError):
        avg_at_k([])
