"""softmax_xent: sparse softmax cross-entropy of the LM / MTP heads, statistics in fp32.

The custom op (model/ops/cc/softmax_xent.cc) keeps only the row's log-sum-exp from its forward
and recomputes the softmax in the backward while writing the gradient — one read of the logits per
pass, no stored (N, V) gradient as TF's kernel has —, and writes zero rows without reading the
logits where the loss gives a target no weight (masked targets). On a GPU its CUDA kernel
(model/ops/cuda/softmax_xent.cu.cc) runs only where model/ops' GPU policy picks it; otherwise, and
inside XLA, the reference below (TF's fused kernel) runs.
"""
from __future__ import annotations

import tensorflow as tf

from model import ops


def sparse_softmax_xent(logits, labels):
    """logits (..., V), labels (...) integer in [0, V) -> per-position CE (...) in fp32;
    differentiable in logits (gradient in logits' dtype)."""
    if ops.active("softmax_xent"):
        v = tf.shape(logits)[-1]
        loss, _ = ops.library().seekline_softmax_xent(tf.reshape(logits, [-1, v]),
                                                      tf.reshape(tf.cast(labels, tf.int32), [-1]))
        return tf.reshape(loss, tf.shape(labels))
    return softmax_xent_reference(logits, labels)


def softmax_xent_reference(logits, labels):
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(labels, tf.int32),
                                                          logits=tf.cast(logits, tf.float32))
