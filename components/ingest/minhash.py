"""MinHash signatures and LSH banding for near-duplicate detection (numpy, no Beam).

A document is the set of its word ``shingle_words``-grams (words = ``\\w+`` runs, lowercased).
Each shingle is hashed to 64 bits; ``num_perm`` hash functions h_i(x) = (a_i·x + b_i) >> 32
(multiply-shift with odd a_i, 64-bit wrap-around) map it to 32 bits, and the signature keeps the
minimum of each over the document's shingles. P[sig_i(A) == sig_i(B)] = Jaccard(A, B), so the
share of equal positions estimates the Jaccard similarity.

LSH: the signature is cut into ``bands`` bands of r = num_perm / bands rows; two documents are
candidates when any band is identical, which happens with probability 1 - (1 - J^r)^bands
(an S-curve around (1/bands)^(1/r)). Candidates are then verified: estimated J ≥ threshold.
Word hashes use zlib.crc32, never Python's hash(): that one is salted per process, and Beam
workers are separate processes.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from collections.abc import Iterable

import numpy as np

_WORD = re.compile(r"\w+")
_CHUNK = 2048  # shingles per (chunk, num_perm) block: bounds memory at chunk·num_perm·8 bytes


def _params(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 2**63, size=num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)
    return a, b


def shingle_hashes(text: str, shingle_words: int) -> np.ndarray:
    """Distinct 64-bit hashes of the text's word n-grams, shape (num_shingles,)."""
    words = _WORD.findall(text.lower())
    if not words:
        return np.zeros(0, np.uint64)
    # Hash each distinct word once (code repeats its identifiers), then map the sequence in C.
    table = {x: zlib.crc32(x.encode()) for x in set(words)}
    w = np.fromiter(map(table.__getitem__, words), np.uint64, len(words))
    k = min(shingle_words, len(words))
    n = len(words) - k + 1
    # Polynomial combination of the k word hashes (a rolling hash, wrap-around mod 2^64).
    h = np.zeros(n, np.uint64)
    mult = np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        for j in range(k):
            h = h * mult + w[j : j + n]
    return np.unique(h)


def signature(text: str, num_perm: int, shingle_words: int, seed: int) -> np.ndarray | None:
    """MinHash signature, shape (num_perm,) uint32; None for a text without words."""
    sh = shingle_hashes(text, shingle_words)
    if sh.size == 0:
        return None
    a, b = _params(num_perm, seed)
    sig = np.full(num_perm, np.iinfo(np.uint32).max, np.uint64)
    with np.errstate(over="ignore"):
        for i in range(0, sh.size, _CHUNK):
            x = sh[i : i + _CHUNK, None]  # (c, 1)
            hv = (x * a[None, :] + b[None, :]) >> np.uint64(32)  # (c, num_perm)
            np.minimum(sig, hv.min(axis=0), out=sig)
    return sig.astype(np.uint32)


def band_keys(sig: np.ndarray, bands: int) -> list[bytes]:
    """One bucket key per band: the band index and its rows, hashed to 16 bytes."""
    rows = sig.size // bands
    return [
        hashlib.blake2b(i.to_bytes(4, "little") + sig[i * rows : (i + 1) * rows].tobytes(), digest_size=16).digest()
        for i in range(bands)
    ]


def estimated_jaccard(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a == b))


def verify_bucket(
    members: Iterable[tuple[str, np.ndarray]], threshold: float, max_bucket: int
) -> list[tuple[str, str]]:
    """Pairs (smaller id, larger id) in one LSH bucket whose estimated Jaccard ≥ threshold.

    Members are sorted by id; beyond ``max_bucket`` members, each is compared with the first
    ``max_bucket`` only (enough to join it to its group without a quadratic blow-up).
    """
    ms = sorted(members, key=lambda m: m[0])
    if len(ms) < 2:
        return []
    ids = [m[0] for m in ms]
    sigs = np.stack([m[1] for m in ms])  # (n, num_perm)
    head = sigs[:max_bucket]  # (h, num_perm)
    sim = (sigs[:, None, :] == head[None, :, :]).mean(axis=2)  # (n, h)
    pairs = []
    for i, j in zip(*np.nonzero(sim >= threshold), strict=True):
        if j < i:
            pairs.append((ids[j], ids[i]))
    return pairs


def duplicates_to_drop(edges: Iterable[tuple[str, str]]) -> list[str]:
    """Every id but the smallest of each connected group of near-duplicate edges.

    Union-find over the (few) verified edges; the smallest id is each group's root, so the kept
    document is the same whichever order edges arrive in.
    """
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in edges:
        ra, rb = find(a), find(b)
        if ra != rb:
            lo, hi = min(ra, rb), max(ra, rb)
            parent[hi] = lo
    return sorted(x for x in parent if find(x) != x)
