"""Sequence packing (numpy, no Beam): documents → fixed-length rows with boundaries kept.

Each document becomes [BOS] tokens EOS; documents are concatenated in the given order and the
stream is cut every ``seq_len`` tokens (a document may continue in the next row: nothing is
truncated or dropped); only the last row is padded. Per row, shape (seq_len,) each:
  input_ids    token ids, PAD after the last document
  segment_ids  1, 2, … per document piece in the row; 0 on padding — attention may only
               connect equal, non-zero segment ids
  positions    0-based position inside the piece (restarts at every piece)
and per row: num_tokens (non-pad), num_segments, segment_lengths (tokens of each piece) and
sources (the corpus entry of each piece).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Row:
    input_ids: np.ndarray  # (L,) int64
    segment_ids: np.ndarray  # (L,) int64
    positions: np.ndarray  # (L,) int64
    segment_lengths: list[int]
    sources: list[str]

    @property
    def num_tokens(self) -> int:
        return int(np.count_nonzero(self.segment_ids))


def pack(
    docs: Sequence[tuple[np.ndarray, str]],
    seq_len: int,
    *,
    pad_id: int,
    eos_id: int,
    bos_id: int | None,
) -> Iterator[Row]:
    """Rows from (token ids, source) documents, in order (see the module docstring)."""
    if not docs:
        return
    head = [bos_id] if bos_id is not None else []
    pieces = [np.concatenate([np.asarray(head, np.int64), np.asarray(ids, np.int64), [eos_id]]) for ids, _ in docs]
    lens = np.array([p.size for p in pieces], np.int64)  # (D,)
    total = int(lens.sum())
    n_rows = -(-total // seq_len)
    size = n_rows * seq_len
    tokens = np.full(size, pad_id, np.int64)
    tokens[:total] = np.concatenate(pieces)
    doc_of = np.full(size, -1, np.int64)  # document index of each token, -1 on padding
    doc_of[:total] = np.repeat(np.arange(len(docs)), lens)
    doc_start = np.cumsum(lens) - lens  # (D,) stream offset of each document
    idx = np.arange(size)
    row_start = (idx // seq_len) * seq_len
    real = doc_of >= 0
    start = np.maximum(row_start, doc_start[np.where(real, doc_of, 0)])  # piece start in the stream
    positions = np.where(real, idx - start, 0)
    first_doc = doc_of[row_start]  # the row's first piece (always real: rows start before total)
    segment_ids = np.where(real, doc_of - first_doc + 1, 0)
    for r in range(n_rows):
        sl = slice(r * seq_len, (r + 1) * seq_len)
        seg = segment_ids[sl]
        counts = np.bincount(seg, minlength=int(seg.max()) + 1)[1:]
        d0 = int(first_doc[r * seq_len])
        yield Row(
            input_ids=tokens[sl],
            segment_ids=seg,
            positions=positions[sl],
            segment_lengths=[int(c) for c in counts],
            sources=[docs[d0 + k][1] for k in range(len(counts))],
        )


def to_example(row: Row) -> bytes:
    from tensorflow.core.example import example_pb2, feature_pb2

    def ints(v) -> feature_pb2.Feature:
        # ndarray.tolist() converts in C; a Python-level int() per value costs 2x the encode.
        return feature_pb2.Feature(int64_list=feature_pb2.Int64List(value=v.tolist() if hasattr(v, "tolist") else v))

    ex = example_pb2.Example(
        features=feature_pb2.Features(
            feature={
                "input_ids": ints(row.input_ids),
                "segment_ids": ints(row.segment_ids),
                "positions": ints(row.positions),
                "num_tokens": ints([row.num_tokens]),
                "num_segments": ints([len(row.segment_lengths)]),
                "segment_lengths": ints(row.segment_lengths),
                "sources": feature_pb2.Feature(bytes_list=feature_pb2.BytesList(value=[s.encode() for s in row.sources])),
            }
        )
    )
    return ex.SerializeToString(deterministic=True)


# The features of a packed row, as written by to_example and read by feature_spec.
PACKED_FEATURES = ("input_ids", "segment_ids", "positions", "num_tokens", "num_segments", "segment_lengths", "sources")


def feature_spec(seq_len: int) -> dict:
    """tf.io.parse_example spec of a packed row (for tf.data readers in later phases)."""
    import tensorflow as tf

    return {
        "input_ids": tf.io.FixedLenFeature([seq_len], tf.int64),
        "segment_ids": tf.io.FixedLenFeature([seq_len], tf.int64),
        "positions": tf.io.FixedLenFeature([seq_len], tf.int64),
        "num_tokens": tf.io.FixedLenFeature([], tf.int64),
        "num_segments": tf.io.FixedLenFeature([], tf.int64),
        "segment_lengths": tf.io.VarLenFeature(tf.int64),
        "sources": tf.io.VarLenFeature(tf.string),
    }
