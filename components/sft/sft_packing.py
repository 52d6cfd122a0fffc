"""Pack encoded SFT examples into fixed-length rows: best-fit decreasing, or one example per row.

Unlike pretraining packing (components/pack: one token stream cut every seq_len), an SFT example
is never split across rows: a conversation cut in two would train its second half without the
prompt. Best-fit decreasing (BFD) sorts examples by length (longest first; ties by input order)
and puts each into the open row with the least room that still fits it (ties: the earliest
opened row), opening a new row when none fits. Deterministic for a given input order.

Row layout, (seq_len,) each, as training/data.py reads it:
  input_ids    example tokens back to back, pad_id after the last one
  segment_ids  1, 2, … per example in the row; 0 on padding (attention stays inside an example)
  positions    0-based position inside the example (restarts at every example)
  loss_mask    the examples' loss-target masks (assistant tokens); 0 on padding

Examples longer than seq_len are truncated to their first seq_len tokens (truncate=True) or
dropped; a truncated example whose mask is all zero (the cut removed every assistant token) has
nothing to train on and is dropped. Every case is counted in PackStats.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class PackStats:
    examples: int = 0  # given
    packed: int = 0  # in some row
    truncated: int = 0  # longer than seq_len, cut to it (and kept)
    dropped_too_long: int = 0  # longer than seq_len with truncate=False
    dropped_no_target: int = 0  # no loss target left (after truncation)
    rows: int = 0
    tokens: int = 0  # non-padding tokens in the rows
    target_tokens: int = 0  # loss_mask == 1 tokens in the rows
    seq_len: int = 0

    @property
    def efficiency(self) -> float:
        """Non-padding tokens / all row tokens."""
        return self.tokens / (self.rows * self.seq_len) if self.rows else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "efficiency": round(self.efficiency, 6)}


@dataclass(frozen=True)
class PackedRows:
    input_ids: np.ndarray  # (N, T) int64
    segment_ids: np.ndarray  # (N, T) int64
    positions: np.ndarray  # (N, T) int64
    loss_mask: np.ndarray  # (N, T) int64
    stats: PackStats

    def rows(self):
        """(input_ids, segment_ids, positions, loss_mask) per row, in row order."""
        return zip(self.input_ids, self.segment_ids, self.positions, self.loss_mask, strict=True)


def best_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Bins of item indices (see the module docstring); every length must be in [1, capacity]."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # sorted (room left, bin index) of bins with room
    for i in order:
        n = lengths[i]
        if not 1 <= n <= capacity:
            raise ValueError(f"item {i} has length {n}, outside [1, {capacity}]")
        k = bisect.bisect_left(free, (n, -1))  # the least room >= n, earliest bin on ties
        if k == len(free):
            b, room = len(bins), capacity
            bins.append([])
        else:
            room, b = free.pop(k)
        bins[b].append(i)
        if room - n > 0:
            bisect.insort(free, (room - n, b))
    return bins


def fit_examples(examples: Sequence[tuple[np.ndarray, np.ndarray]], seq_len: int, truncate: bool,
                 stats: PackStats) -> list[tuple[np.ndarray, np.ndarray]]:
    """Examples that fit a row (truncated or dropped per ``truncate``), counted into ``stats``."""
    kept = []
    for ids, mask in examples:
        stats.examples += 1
        if len(ids) > seq_len:
            if not truncate:
                stats.dropped_too_long += 1
                continue
            ids, mask = ids[:seq_len], mask[:seq_len]
            if not np.any(mask):
                stats.dropped_no_target += 1
                continue
            stats.truncated += 1
        elif not np.any(mask):
            stats.dropped_no_target += 1
            continue
        kept.append((ids, mask))
    return kept


def pack_examples(examples: Sequence[tuple[np.ndarray, np.ndarray]], seq_len: int, *, pad_id: int,
                  packing: bool = True, truncate: bool = True) -> PackedRows:
    """Rows from (ids, loss_mask) examples: BFD-packed, or one example per row (``packing=False``,
    the benchmark baseline). Row order: BFD bins in opening order / examples in input order."""
    stats = PackStats(seq_len=seq_len)
    kept = fit_examples(examples, seq_len, truncate, stats)
    lengths = [len(ids) for ids, _ in kept]
    bins = best_fit_decreasing(lengths, seq_len) if packing else [[i] for i in range(len(kept))]
    n = len(bins)
    ids = np.full((n, seq_len), pad_id, np.int64)  # (N, T)
    seg = np.zeros((n, seq_len), np.int64)
    pos = np.zeros((n, seq_len), np.int64)
    mask = np.zeros((n, seq_len), np.int64)
    for r, members in enumerate(bins):
        at = 0
        for s, i in enumerate(members, start=1):
            e_ids, e_mask = kept[i]
            sl = slice(at, at + len(e_ids))
            ids[r, sl], mask[r, sl] = e_ids, e_mask
            seg[r, sl], pos[r, sl] = s, np.arange(len(e_ids))
            at += len(e_ids)
    stats.packed, stats.rows = len(kept), n
    stats.tokens, stats.target_tokens = int(sum(lengths)), int(mask.sum())
    return PackedRows(ids, seg, pos, mask, stats)
