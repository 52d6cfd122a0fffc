"""attention: softmax(scale·q·kᵀ + bias)·v for prefill and training, softmax in fp32.

q (B, T, H, Dk), k (B, S, Hkv, Dk), v (B, S, Hkv, Dv) with H a multiple of Hkv (head h reads kv
head h // (H / Hkv): GQA, and MLA with Hkv = H), bias fp32 (B|1, 1, T|1, S) — the additive mask the
layers build (model/layers/attention_utils.py: 0 visible, -1e9 masked) -> o (B, T, H, Dv).

The custom op (model/ops/cc/attention.cc) is flash-style: query blocks × key blocks with an online
softmax, no (T, S) tensor, fully masked tiles skipped; its gradient recomputes the probabilities
from the saved row log-sum-exp (model/ops/gradients.py). The GPU build has CUDA kernels for both
(model/ops/cuda/attention.cu.cc), used on a GPU only where model/ops' GPU policy picks them; there,
and inside XLA, the reference below runs — the batched-matmul path MLA and GQA used before the op.
"""
from __future__ import annotations

import tensorflow as tf

from model import ops


def attention(q, k, v, bias, scale: float):
    """-> o (B, T, H, Dv) in v's dtype; differentiable in q, k and v (not in bias)."""
    if ops.active("causal_attention"):
        o, _ = ops.library().seekline_attention(q, k, v, tf.cast(bias, tf.float32), scale=float(scale))
        return o
    return attention_reference(q, k, v, bias, scale)


def attention_reference(q, k, v, bias, scale: float):
    """Pure TF: batched matmuls in (B, Hkv, G·T, d) layout, so a kv head is read once by its G
    query heads without repeating K / V; scores in the storage type, softmax in fp32."""
    b, t, h, dk = tf.shape(q)[0], tf.shape(q)[1], q.shape[2], tf.shape(q)[3]
    s, hkv = tf.shape(k)[1], k.shape[2]
    g = h // hkv
    # The scale is folded into q (T·Dk values) rather than applied to the T·S scores.
    q = q * tf.cast(scale, q.dtype)
    qg = tf.reshape(tf.transpose(tf.reshape(q, [b, t, hkv, g, dk]), [0, 2, 3, 1, 4]),
                    [b, hkv, g * t, dk])                                          # (B, Hkv, G·T, Dk)
    kt = tf.transpose(k, [0, 2, 1, 3])                                            # (B, Hkv, S, Dk)
    vt = tf.transpose(v, [0, 2, 1, 3])                                            # (B, Hkv, S, Dv)
    scores = tf.reshape(tf.matmul(qg, kt, transpose_b=True), [b, h, t, s])        # (B, H, T, S)
    # softmax in fp32 (bias cast too: a mixed_bfloat16 policy autocasts layer inputs)
    p = tf.cast(tf.nn.softmax(tf.cast(scores, tf.float32) + tf.cast(bias, tf.float32), axis=-1), v.dtype)
    o = tf.matmul(tf.reshape(p, [b, hkv, g * t, s]), vt)                          # (B, Hkv, G·T, Dv)
    return tf.transpose(tf.reshape(o, [b, h, t, -1]), [0, 2, 1, 3])               # (B, T, H, Dv)
