"""Masking + softmax shared by MLA and GQA."""
from __future__ import annotations

import tensorflow as tf

# Finite (not −inf) so a fully masked row — a left-padding query — gives a uniform row, not NaN.
MASK_VALUE = -1e9


def mask_bias(query_pos, key_pos, key_valid):
    """Additive attention bias (B, 1, T, S) in fp32.

    query_pos (B, T) / key_pos (B, S): positions in the *sequence buffer* (not rope positions);
    a key is visible when key_pos <= query_pos and key_valid (B, S) is true.
    """
    visible = (key_pos[:, None, :] <= query_pos[:, :, None]) & tf.cast(key_valid, tf.bool)[:, None, :]
    return tf.where(visible, 0.0, MASK_VALUE)[:, None, :, :]


def softmax_fp32(scores, bias, dtype):
    """scores (B, H, T, S) any float -> probs (B, H, T, S) in `dtype`, softmax taken in fp32."""
    return tf.cast(tf.nn.softmax(tf.cast(scores, tf.float32) + bias, axis=-1), dtype)
