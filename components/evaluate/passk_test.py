"""pass@k against hand-computed binomial ratios (math.comb), not against the estimator itself."""

from math import comb

import pytest

from common.errors import UserError
from components.evaluate.passk import mean_pass_at_k, parse_ks, pass_at_k


def test_hand_computed_cases():
    # n=5, c=2, k=1: 1 − C(3,1)/C(5,1) = 1 − 3/5
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)
    # n=5, c=2, k=2: 1 − C(3,2)/C(5,2) = 1 − 3/10
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    # n=10, c=1, k=5: 1 − C(9,5)/C(10,5) = 1 − 126/252
    assert pass_at_k(10, 1, 5) == pytest.approx(0.5)
    assert pass_at_k(10, 0, 3) == 0.0
    assert pass_at_k(4, 4, 1) == 1.0


def test_one_when_fewer_failures_than_k():
    # n − c = 2 < k = 3: every draw of 3 contains a pass
    assert pass_at_k(5, 3, 3) == 1.0


def test_stable_for_large_n_matches_exact_binomials():
    n, c, k = 200, 7, 100
    exact = 1 - comb(n - c, k) / comb(n, k)  # python ints: exact ratio
    assert pass_at_k(n, c, k) == pytest.approx(exact, rel=1e-12)


def test_mean_skips_k_above_smallest_n():
    # problems with (n, c) = (5, 2) and (2, 1): k=1 is averaged, k=5 is left out (n=2 < 5)
    out = mean_pass_at_k([(5, 2), (2, 1)], [1, 5])
    assert out == {"pass@1": pytest.approx((0.4 + 0.5) / 2)}


def test_bad_arguments():
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)
    assert parse_ks("10,1, 100") == [1, 10, 100]
    for bad in ("", "1,x", "0", "-1"):
        with pytest.raises(UserError):
            parse_ks(bad)
