"""pass@k: the chance that at least one of k answers to a problem is right, estimated without
bias from n >= k sampled answers of which c are right (Chen et al. 2021, "Evaluating Large
Language Models Trained on Code")::

    pass@k = 1 - C(n - c, k) / C(n, k) = 1 - prod_{i = n - c + 1}^{n} (1 - k / i)

The product form never builds the binomial coefficients (which overflow a float), so it stays accurate
for any n. Drawing k answers and checking them (the naive estimate) has the same mean but a
larger variance. Greedy accuracy is pass@1 of one greedy answer per problem.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with ``n`` answers, ``c`` of them right."""
    if not 0 <= c <= n:
        raise ValueError(f"pass@k: need 0 <= c <= n (n={n}, c={c})")
    if not 1 <= k <= n:
        raise ValueError(f"pass@{k}: needs 1 <= k <= n answers per problem (n={n})")
    if n - c < k:  # every k-subset holds a right answer
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def mean_pass_at_k(counts: Iterable[tuple[int, int]], k: int) -> float:
    """The mean of :func:`pass_at_k` over problems given as ``(n, c)`` pairs (n may differ
    between problems, but every n must be >= k)."""
    values = [pass_at_k(n, c, k) for n, c in counts]
    if not values:
        raise ValueError("pass@k of no problems")
    return sum(values) / len(values)


def pass_at_k_table(results: Sequence[Sequence[bool]], ks: Sequence[int] = (1,)) -> dict[str, float]:
    """``{"pass@k": value}`` for each k in ``ks`` from per-problem lists of right/wrong answers
    (each list one problem's n samples)."""
    counts = [(len(r), sum(bool(x) for x in r)) for r in results]
    return {f"pass@{k}": mean_pass_at_k(counts, k) for k in ks}
