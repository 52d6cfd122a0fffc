"""SFT packing on hand-computed cases: BFD bins, row layout, truncation/drop counts, efficiency."""

import numpy as np
import pytest

from components.sft.sft_packing import best_fit_decreasing, pack_examples

PAD = 0


def _ex(i: int, n: int, target_from: int = 0):
    """Example i: ids 100*(i+1)+k, mask 1 from position target_from on."""
    ids = 100 * (i + 1) + np.arange(n)
    mask = (np.arange(n) >= target_from).astype(np.int32)
    return ids, mask


def test_bfd_bins_by_hand():
    # sorted: 7(#0) 5(#1) 4(#2) 3(#3) 1(#4). 7 → A (room 1); 5 → B (3); 4 → C (4);
    # 3 → least room that fits: B (3) → 0; 1 → A (1) → 0.
    assert best_fit_decreasing([7, 5, 4, 3, 1], 8) == [[0, 4], [1, 3], [2]]
    # sorted: 8(#1) 7(#3) 5(#0) 4(#4) 1(#2). 8 → A (2); 7 → B (3); 5 → C (5); 4 → C (1);
    # 1 → C, the least room (1), where first-fit would pick A.
    assert best_fit_decreasing([5, 8, 1, 7, 4], 10) == [[1], [3], [0, 4, 2]]
    # ties: equal lengths keep input order; equal rooms go to the earliest row
    assert best_fit_decreasing([2, 3, 3, 2], 5) == [[1, 0], [2, 3]]
    with pytest.raises(ValueError, match="outside"):
        best_fit_decreasing([9], 8)


def test_packed_rows_layout():
    lens = [7, 5, 4, 3, 1]
    # each example's first token is prompt (mask 0), except the 1-token one (all target)
    exs = [_ex(i, n, target_from=0 if n == 1 else 1) for i, n in enumerate(lens)]
    packed = pack_examples(exs, 8, pad_id=PAD)
    np.testing.assert_array_equal(packed.input_ids, [[100, 101, 102, 103, 104, 105, 106, 500],
                                                     [200, 201, 202, 203, 204, 400, 401, 402],
                                                     [300, 301, 302, 303, PAD, PAD, PAD, PAD]])
    np.testing.assert_array_equal(packed.segment_ids, [[1] * 7 + [2], [1] * 5 + [2] * 3, [1] * 4 + [0] * 4])
    np.testing.assert_array_equal(packed.positions, [[0, 1, 2, 3, 4, 5, 6, 0], [0, 1, 2, 3, 4, 0, 1, 2],
                                                     [0, 1, 2, 3, 0, 0, 0, 0]])
    np.testing.assert_array_equal(packed.loss_mask, [[0, 1, 1, 1, 1, 1, 1, 1], [0, 1, 1, 1, 1, 0, 1, 1],
                                                     [0, 1, 1, 1, 0, 0, 0, 0]])
    s = packed.stats
    assert (s.examples, s.packed, s.rows, s.tokens, s.target_tokens) == (5, 5, 3, 20, 16)
    assert s.efficiency == pytest.approx(20 / 24)


def test_an_example_without_targets_is_dropped():
    p = pack_examples([_ex(0, 3, target_from=3), _ex(1, 2)], 8, pad_id=PAD)
    assert (p.stats.dropped_no_target, p.stats.packed, p.stats.rows) == (1, 1, 1)
    np.testing.assert_array_equal(p.input_ids[0, :3], [200, 201, PAD])


def test_truncate_or_drop_long_examples():
    exs = [_ex(0, 12, target_from=2), _ex(1, 12, target_from=9), _ex(2, 3)]
    t = pack_examples(exs, 8, pad_id=PAD, truncate=True)
    # #0 cut to 8 tokens (targets 2..7 kept); #1's targets start at 9: nothing left → dropped
    assert (t.stats.truncated, t.stats.dropped_no_target, t.stats.dropped_too_long) == (1, 1, 0)
    np.testing.assert_array_equal(t.input_ids[0], 100 + np.arange(8))
    np.testing.assert_array_equal(t.loss_mask[0], [0, 0, 1, 1, 1, 1, 1, 1])
    d = pack_examples(exs, 8, pad_id=PAD, truncate=False)
    assert (d.stats.truncated, d.stats.dropped_too_long, d.stats.rows) == (0, 2, 1)


def test_padded_mode_is_one_example_per_row_in_order():
    exs = [_ex(i, n) for i, n in enumerate([3, 6, 2])]
    p = pack_examples(exs, 8, pad_id=PAD, packing=False)
    np.testing.assert_array_equal(p.input_ids[:, 0], [100, 200, 300])
    np.testing.assert_array_equal(p.segment_ids.max(axis=1), [1, 1, 1])
    assert p.stats.efficiency == pytest.approx(11 / 24)
    packed = pack_examples(exs, 8, pad_id=PAD)
    assert packed.stats.rows == 2 and packed.stats.efficiency == pytest.approx(11 / 16)


def test_deterministic():
    rng = np.random.default_rng(0)
    exs = [_ex(i, int(n)) for i, n in enumerate(rng.integers(1, 30, 200))]
    a, b = pack_examples(exs, 32, pad_id=PAD), pack_examples(exs, 32, pad_id=PAD)
    np.testing.assert_array_equal(a.input_ids, b.input_ids)
    # every token of every example appears exactly once
    assert a.stats.tokens == sum(len(e[0]) for e in exs) == int((a.segment_ids > 0).sum())
