"""The MoE layer's dispatch gather and weighted combine around the grouped expert matmuls, with
gathers in both directions (model/ops/cc/moe_combine.cc).

pos (N, K) is the inverse of the dispatch sort: pair (n, k) of token n's top-k went to row
pos[n, k] of the expert-major rows. Then
  combine(ys, w, pos)[n] = Σ_k w[n, k] · ys[pos[n, k]]       (replaces ys · w[order] + segment sum)
  gather_rows(x, token_of, pos) = x[token_of]                 (its gradient: combine(dxs, 1, pos),
                                                               not a scatter-add)
Used only when the custom ops are active (the MoE layer's grouped path); the pure path keeps
tf.gather + unsorted_segment_sum.
"""
from __future__ import annotations

import tensorflow as tf

from model import ops


def combine(ys, w, pos):
    """ys (N*K, D), w (N, K) fp32, pos (N, K) int32 -> (N, D); differentiable in ys and w."""
    return ops.library().seekline_moe_combine(ys, tf.cast(w, tf.float32), pos)


def gather_rows(x, token_of, pos):
    """x (N, D) -> x[token_of] (N*K, D), with the gradient summed by gathers through pos."""
    @tf.custom_gradient
    def gather(x):
        def grad(dxs):
            return ops.library().seekline_moe_combine(dxs, tf.ones(tf.shape(pos), tf.float32), pos)
        return tf.gather(x, token_of), grad
    return gather(x)
