"""MinHash estimates against exact set Jaccard, LSH banding, bucket verification, grouping."""

import re

import numpy as np
import pytest

from components.ingest import minhash as mh


def words(n, seed):
    rng = np.random.default_rng(seed)
    return [f"w{int(x)}" for x in rng.integers(0, 100_000, n)]


def exact_jaccard(a: str, b: str, k: int) -> float:
    """Reference: Jaccard of the word k-gram sets, computed with Python sets."""

    def grams(t):
        w = re.findall(r"\w+", t.lower())
        return {tuple(w[i : i + k]) for i in range(len(w) - k + 1)}

    ga, gb = grams(a), grams(b)
    return len(ga & gb) / len(ga | gb)


@pytest.mark.parametrize("changed", [0, 10, 40, 120])
def test_signature_estimates_jaccard(changed):
    base = words(400, 1)
    other = list(base)
    for i in range(0, changed * 3, 3):  # change every third word among the first 3*changed
        other[i] = f"x{i}"
    a, b = " ".join(base), " ".join(other)
    est = mh.estimated_jaccard(mh.signature(a, 256, 5, 0), mh.signature(b, 256, 5, 0))
    # standard error of the estimate: sqrt(J(1-J)/num_perm) ≤ 0.032; allow 4 of them
    assert est == pytest.approx(exact_jaccard(a, b, 5), abs=0.13)


def test_signature_is_deterministic_and_seeded():
    t = " ".join(words(50, 2))
    assert np.array_equal(mh.signature(t, 64, 5, 0), mh.signature(t, 64, 5, 0))
    assert not np.array_equal(mh.signature(t, 64, 5, 0), mh.signature(t, 64, 5, 1))
    assert mh.signature("+++ --- ***", 64, 5, 0) is None  # no words, no signature
    assert mh.signature("just three words", 64, 5, 0).shape == (64,)  # shorter than a shingle


def test_identical_bands_share_keys():
    sig = np.arange(32, dtype=np.uint32)
    other = sig.copy()
    other[0] = 999  # differs in band 0 only
    ka, kb = mh.band_keys(sig, 4), mh.band_keys(other, 4)
    assert len(ka) == 4 and ka[0] != kb[0] and ka[1:] == kb[1:]
    # equal rows in different bands must not collide
    assert len(set(mh.band_keys(np.zeros(32, np.uint32), 4))) == 4


def test_verify_bucket_keeps_pairs_over_threshold():
    base = np.arange(100, dtype=np.uint32)
    near = base.copy()
    near[:5] += 1000  # estimated J = 0.95
    far = base.copy()
    far[:50] += 1000  # 0.5
    pairs = mh.verify_bucket([("c", far), ("b", near), ("a", base)], threshold=0.8, max_bucket=10)
    assert pairs == [("a", "b")]


def test_duplicates_to_drop_keeps_smallest_of_each_group():
    # groups {a, c, d} (chain c-d-a) and {b, e}; f alone
    edges = [("c", "d"), ("a", "d"), ("b", "e")]
    assert mh.duplicates_to_drop(edges) == ["c", "d", "e"]
    assert mh.duplicates_to_drop(reversed(edges)) == ["c", "d", "e"]
    assert mh.duplicates_to_drop([]) == []
