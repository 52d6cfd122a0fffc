"""Masking + softmax shared by MLA and GQA."""
from __future__ import annotations

import tensorflow as tf

# Finite (not −inf) so a fully masked row — a left-padding query, or a packing-padding query
# (segment 0) — gives a uniform row, not NaN.
MASK_VALUE = -1e9


def mask_bias(query_pos, key_pos, key_valid, query_segment=None, key_segment=None):
    """Additive attention bias (B, 1, T, S) in fp32.

    query_pos (B, T) / key_pos (B, S): positions in the *sequence buffer* (not rope positions);
    a key is visible when key_pos <= query_pos and key_valid (B, S) is true. With
    query_segment (B, T) / key_segment (B, S) (packed rows, docs/data.md) a key is also visible
    only when both segment ids are equal and non-zero: block-diagonal causal attention.
    """
    visible = (key_pos[:, None, :] <= query_pos[:, :, None]) & tf.cast(key_valid, tf.bool)[:, None, :]
    if (query_segment is None) != (key_segment is None):
        raise ValueError("mask_bias: give both query_segment and key_segment, or neither")
    if query_segment is not None:
        qs = tf.cast(query_segment, tf.int32)[:, :, None]                  # (B, T, 1)
        ks = tf.cast(key_segment, tf.int32)[:, None, :]                    # (B, 1, S)
        # segment 0 is padding: it is never a visible key, so padding queries get a fully
        # masked (uniform, finite) row and real queries never see padding
        visible = visible & tf.equal(qs, ks) & tf.not_equal(ks, 0)         # (B, T, S)
    return tf.where(visible, 0.0, MASK_VALUE)[:, None, :, :]


def segment_mask_bias(segment_ids, key_valid=None):
    """Block-diagonal causal bias (B, 1, T, T) fp32 for a packed row: segment_ids (B, T) int,
    1..n per document and 0 on padding. Query i sees key j iff j <= i and
    segment_ids[i] == segment_ids[j] != 0 (and key_valid[j], when given)."""
    segment_ids = tf.convert_to_tensor(segment_ids)
    b, t = tf.shape(segment_ids)[0], tf.shape(segment_ids)[1]
    seq = tf.tile(tf.range(t)[None, :], [b, 1])                             # (B, T) buffer positions
    if key_valid is None:
        key_valid = tf.ones([b, t], tf.bool)
    return mask_bias(seq, seq, key_valid, segment_ids, segment_ids)


def positions_from_segments(segment_ids):
    """Per-document positions (B, T) int32: 0 at the first token of each segment run, +1 per
    token after it (what components/pack writes as `positions`); 0 on padding (segment 0).

    A run starts where the segment id differs from the previous token's (or at column 0). The
    mask compares ids, not runs, so each document of a row needs its own id (the packer's 1..n).
    """
    seg = tf.cast(tf.convert_to_tensor(segment_ids), tf.int32)                # (B, T)
    b, t = tf.shape(seg)[0], tf.shape(seg)[1]
    col = tf.range(t)[None, :] * tf.ones([b, 1], tf.int32)                  # (B, T)
    prev = tf.concat([tf.fill([b, 1], -1), seg[:, :-1]], axis=1)           # (B, T), -1 never an id
    is_start = tf.cast(tf.not_equal(seg, prev), tf.int32)                  # (B, T), column 0 always 1
    # number every run across the whole batch (flattened row-major), then subtract each run's
    # first column: O(B·T), no (T, T) intermediate
    run = tf.reshape(tf.cumsum(tf.reshape(is_start, [-1])) - 1, [b, t])    # (B, T) global run id
    first = tf.math.unsorted_segment_min(tf.reshape(col, [-1]), tf.reshape(run, [-1]),
                                         b * t)                             # (B·T,) run start col
    pos = col - tf.gather(first, run)                                       # (B, T)
    return tf.where(tf.not_equal(seg, 0), pos, 0)


def softmax_fp32(scores, bias, dtype):
    """scores (B, H, T, S) any float -> probs (B, H, T, S) in `dtype`, softmax taken in fp32."""
    # bias is cast too: under a mixed_bfloat16 policy Keras autocasts every float layer input.
    return tf.cast(tf.nn.softmax(tf.cast(scores, tf.float32) + tf.cast(bias, tf.float32), axis=-1), dtype)
