"""grouped_matmul: y[rows of group g] = x[rows of group g] · op(w[g]) — MoE expert dispatch.

x (M, K) with rows sorted by group, w (G, K, N) (or (G, N, K) with transpose_w), group_sizes
(G,) int32 summing to M -> y (M, N). The custom op (model/ops/cc/grouped_matmul.cc) runs every
group in one kernel; grouped_matmul_reference is the pure-TF definition (split, one MatMul per
group, concat) used when the op is not active and as the tests' reference for values and
gradients.
"""
from __future__ import annotations

import tensorflow as tf

from model import ops


def grouped_matmul(x, w, group_sizes, transpose_w: bool = False):
    """(M, K), (G, K, N) | (G, N, K), (G,) int32 -> (M, N); differentiable in x and w."""
    if ops.active("grouped_matmul"):
        return ops.library().seekline_grouped_matmul(x, w, tf.cast(group_sizes, tf.int32),
                                                     transpose_w=transpose_w)
    return grouped_matmul_reference(x, w, group_sizes, transpose_w)


def grouped_matmul_reference(x, w, group_sizes, transpose_w: bool = False):
    """Pure TF: one MatMul per group (G is static: w's first dim)."""
    g = int(w.shape[0])
    pieces = tf.split(x, tf.cast(group_sizes, tf.int32), num=g, axis=0)     # G × (s_g, K)
    ws = tf.unstack(w, num=g)                                                # G × (K, N) | (N, K)
    outs = [tf.matmul(p, wg, transpose_b=transpose_w) for p, wg in zip(pieces, ws, strict=True)]
    return tf.concat(outs, axis=0)                                           # (M, N)
