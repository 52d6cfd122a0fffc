"""rms_norm: w · x · rsqrt(mean(x², last axis) + eps), statistics in fp32.

The custom op (model/ops/cc/rms_norm.cc) does forward and backward in one pass each;
rms_norm_reference is the pure-TF layer's arithmetic (model/layers/rmsnorm.py), used when the op
is not active and as the tests' reference.
"""
from __future__ import annotations

import tensorflow as tf

from model import ops


def rms_norm(x, w, eps: float):
    """x (..., D), w (D,) in x's dtype -> (..., D); differentiable in x and w."""
    if ops.active("rms_norm"):
        return ops.library().seekline_rms_norm(x, tf.cast(w, x.dtype), eps=float(eps))
    return rms_norm_reference(x, w, eps)


def rms_norm_reference(x, w, eps: float):
    dtype = x.dtype
    xf = tf.cast(x, tf.float32)
    var = tf.reduce_mean(tf.square(xf), axis=-1, keepdims=True)            # (..., 1)
    y = tf.cast(xf * tf.math.rsqrt(var + eps), dtype)                        # normalised in fp32
    return tf.cast(w, dtype) * y
