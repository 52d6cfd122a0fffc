"""Packing on hand-computed cases and on random documents checked against the definition."""

import numpy as np
import pytest
import tensorflow as tf

from components.pack import packing

PAD, BOS, EOS = 0, 1, 2


def rows_of(docs, seq_len, bos=BOS):
    return list(packing.pack([(np.array(d), f"s{i}") for i, d in enumerate(docs)], seq_len, pad_id=PAD, eos_id=EOS, bos_id=bos))


def test_hand_computed_rows_fit_exactly():
    # stream 1 5 6 2 | 1 7 2  → rows of 4: [1 5 6 2] [1 7 2 PAD]
    r = rows_of([[5, 6], [7]], 4)
    assert [x.input_ids.tolist() for x in r] == [[1, 5, 6, 2], [1, 7, 2, 0]]
    assert [x.segment_ids.tolist() for x in r] == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert [x.positions.tolist() for x in r] == [[0, 1, 2, 3], [0, 1, 2, 0]]
    assert [x.segment_lengths for x in r] == [[4], [3]]
    assert [x.sources for x in r] == [["s0"], ["s1"]]


def test_hand_computed_document_continues_in_next_row():
    # rows of 3: [1 5 6] [2 1 7] [2 PAD PAD]: doc 0's EOS opens row 2 as its own piece
    r = rows_of([[5, 6], [7]], 3)
    assert [x.input_ids.tolist() for x in r] == [[1, 5, 6], [2, 1, 7], [2, 0, 0]]
    assert [x.segment_ids.tolist() for x in r] == [[1, 1, 1], [1, 2, 2], [1, 0, 0]]
    assert [x.positions.tolist() for x in r] == [[0, 1, 2], [0, 0, 1], [0, 0, 0]]
    assert [x.sources for x in r] == [["s0"], ["s0", "s1"], ["s1"]]
    assert [x.num_tokens for x in r] == [3, 3, 1]


def test_without_bos():
    r = rows_of([[5], [6, 7]], 8, bos=None)
    assert r[0].input_ids.tolist() == [5, 2, 6, 7, 2, 0, 0, 0]
    assert r[0].segment_ids.tolist() == [1, 1, 2, 2, 2, 0, 0, 0]


@pytest.mark.parametrize("seq_len", [7, 64, 1000])
def test_no_token_lost_and_no_boundary_without_separator(seq_len):
    rng = np.random.default_rng(seq_len)
    docs = [rng.integers(3, 500, rng.integers(0, 300)).tolist() for _ in range(40)]
    rows = rows_of(docs, seq_len)
    # reference stream, straight from the definition: [BOS] ids EOS per document
    stream = [t for d in docs for t in [BOS, *d, EOS]]
    got = [t for r in rows for t, s in zip(r.input_ids, r.segment_ids, strict=True) if s]
    assert got == stream
    assert len(rows) == -(-len(stream) // seq_len)
    for i, r in enumerate(rows):
        ids, seg, pos = r.input_ids, r.segment_ids, r.positions
        assert ids.shape == seg.shape == pos.shape == (seq_len,)
        if i < len(rows) - 1:
            assert seg.min() > 0  # only the last row has padding
        for k in range(seq_len - 1):
            if seg[k] and seg[k + 1] and seg[k] != seg[k + 1]:
                assert ids[k] == EOS  # a new document starts only after a separator
            if seg[k + 1] == seg[k] and seg[k]:
                assert pos[k + 1] == pos[k] + 1
            elif seg[k + 1]:
                assert pos[k + 1] == 0
        assert sum(r.segment_lengths) == r.num_tokens == int((seg > 0).sum())


def test_example_parses_with_the_feature_spec():
    [row] = rows_of([[5, 6], [7]], 8)
    parsed = tf.io.parse_single_example(packing.to_example(row), packing.feature_spec(8))
    assert parsed["input_ids"].numpy().tolist() == [1, 5, 6, 2, 1, 7, 2, 0]
    assert parsed["segment_ids"].numpy().tolist() == [1, 1, 1, 1, 2, 2, 2, 0]
    assert int(parsed["num_tokens"]) == 7 and int(parsed["num_segments"]) == 2
    assert tf.sparse.to_dense(parsed["sources"]).numpy().tolist() == [b"s0", b"s1"]
