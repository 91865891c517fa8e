"""The unbiased pass@k estimator (llm.eval.passk) against hand values and brute-force
enumeration of every k-subset of the answers."""

from __future__ import annotations

import itertools
import math

import pytest

from llm.eval.passk import mean_pass_at_k, pass_at_k, pass_at_k_table


def test_pass_at_k_by_hand():
    # pass@1 is c / n
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3, abs=1e-12)
    # n = 4, c = 1, k = 2: 1 - C(3, 2) / C(4, 2) = 1 - 3 / 6 = 0.5; product form 1 - (1 - 2/4) = 0.5
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5, abs=1e-12)
    # n = 5, c = 2, k = 2: 1 - C(3, 2) / C(5, 2) = 1 - 3/10 = 0.7; product 1 - (1 - 2/4)(1 - 2/5) = 1 - 0.3
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7, abs=1e-12)
    # n - c < k: every pair holds a right one
    assert pass_at_k(3, 2, 2) == 1.0
    assert pass_at_k(5, 0, 3) == 0.0
    assert pass_at_k(5, 5, 5) == 1.0


def test_pass_at_k_matches_brute_force_enumeration():
    for n in range(1, 8):
        for c in range(n + 1):
            answers = [True] * c + [False] * (n - c)
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(range(n), k))
                brute = sum(any(answers[i] for i in s) for s in subsets) / len(subsets)
                assert pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12), (n, c, k)


def test_pass_at_k_large_n_is_stable():
    # C(1000, 100) overflows a float; the product form does not build it
    n, c, k = 1000, 3, 100
    exact = 1 - math.comb(n - c, k) / math.comb(n, k)  # exact integers, then one division
    assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)


def test_pass_at_k_errors():
    with pytest.raises(ValueError, match="1 <= k <= n"):
        pass_at_k(3, 1, 4)
    with pytest.raises(ValueError, match="1 <= k <= n"):
        pass_at_k(3, 1, 0)
    with pytest.raises(ValueError, match="0 <= c <= n"):
        pass_at_k(3, 4, 1)
    with pytest.raises(ValueError, match="no problems"):
        mean_pass_at_k([], 1)


def test_mean_and_table():
    # problem A: 4 answers, 1 right; problem B: 5 answers, 2 right
    # pass@1 = (0.25 + 0.4) / 2 = 0.325; pass@2 = (0.5 + 0.7) / 2 = 0.6
    assert mean_pass_at_k([(4, 1), (5, 2)], 2) == pytest.approx(0.6, abs=1e-12)
    table = pass_at_k_table([[False, True, False, False], [True, False, False, True, False]], ks=(1, 2))
    assert table == pytest.approx({"pass@1": 0.325, "pass@2": 0.6}, abs=1e-12)
