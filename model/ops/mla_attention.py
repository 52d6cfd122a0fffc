"""mla_latent_attention: MLA's absorbed attention over the latent cache (cached decoding).

q_lat (B, T, H, C) = q_nope·W_UK, q_pe (B, T, H, R), cache c (B, S, C) and k_pe (B, S, R), bias
(B|1, 1, T|1, S) -> o_lat (B, T, H, C) = softmax(scale·(q_lat·c + q_pe·k_pe) + bias)·c, softmax in
fp32. The custom op (model/ops/cc/mla_decode.cc) is one pass per (b, t) row; the reference is the
einsum path MLA used before it. Forward only (decoding is never differentiated); the GPU build of
the library carries its CUDA kernel (model/ops/cuda/mla_decode.cu.cc).
"""
from __future__ import annotations

import tensorflow as tf

from model import ops


def mla_latent_attention(q_lat, q_pe, c, k_pe, bias, scale: float):
    if ops.active("mla_latent_attention"):
        return ops.library().seekline_mla_latent_attention(q_lat, q_pe, c, k_pe, tf.cast(bias, tf.float32),
                                                           scale=float(scale))
    return mla_latent_attention_reference(q_lat, q_pe, c, k_pe, bias, scale)


def mla_latent_attention_reference(q_lat, q_pe, c, k_pe, bias, scale: float):
    scores = (tf.einsum("bthc,bsc->bhts", q_lat, c)
              + tf.einsum("bthd,bsd->bhts", q_pe, k_pe)) * scale                 # (B, H, T, S)
    # softmax in fp32 (bias cast too: a mixed_bfloat16 policy autocasts layer inputs)
    p = tf.cast(tf.nn.softmax(tf.cast(scores, tf.float32) + tf.cast(bias, tf.float32), axis=-1), c.dtype)
    return tf.einsum("bhts,bsc->bthc", p, c)                                       # (B, T, H, C)
