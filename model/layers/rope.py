"""Rotary position embedding with YaRN frequency scaling.

The tables are computed from positions on the fly (cheap: (B, T, d/2)), so arbitrary per-row
position ids (left-padded batches, cached decode) need no special casing.

Two layouts:
  * half rotation (Qwen2, Llama): channel i pairs with i + d/2;
  * interleaved (DeepSeek checkpoints): channel 2i pairs with 2i+1. We rotate the even/odd
    slices and write the result de-interleaved ([rotated evens | rotated odds]), exactly like
    transformers' apply_rotary_pos_emb_interleave. q and k get the same channel permutation,
    so q·k is unchanged, and no weight permutation is needed at import or export.
"""
from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from model import ops
from model.config import RopeScaling, yarn_get_mscale


def rope_inv_freq(dim: int, theta: float, scaling: RopeScaling | None) -> tuple[np.ndarray, float]:
    """Inverse frequencies (dim/2,) float32 and the cos/sin amplitude factor.

    YaRN (transformers' _compute_yarn_parameters): blend interpolated (÷factor) and original
    frequencies with a linear ramp between the correction dims of beta_fast and beta_slow.
    """
    exponent = np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)
    pos_freqs = np.power(np.float32(theta), exponent, dtype=np.float32)   # (d/2,)
    inv_freq = (1.0 / pos_freqs).astype(np.float32)
    if scaling is None:
        return inv_freq, 1.0
    factor = scaling.factor
    if scaling.attention_factor is not None:
        attention_factor = scaling.attention_factor
    elif scaling.mscale and scaling.mscale_all_dim:
        attention_factor = yarn_get_mscale(factor, scaling.mscale) / yarn_get_mscale(factor, scaling.mscale_all_dim)
    else:
        attention_factor = yarn_get_mscale(factor)
    omax = scaling.original_max_position_embeddings

    def corr_dim(rot):
        return dim * math.log(omax / (rot * 2 * math.pi)) / (2 * math.log(theta))

    low, high = corr_dim(scaling.beta_fast), corr_dim(scaling.beta_slow)
    if scaling.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - low) / (high - low), 0, 1).astype(np.float32)
    extrap = (1 - ramp).astype(np.float32)      # 1 -> keep original frequency (high-freq dims)
    interp = (1.0 / (np.float32(factor) * pos_freqs)).astype(np.float32)
    inv_freq = (interp * (1 - extrap) + inv_freq * extrap).astype(np.float32)
    return inv_freq, float(attention_factor)


def rope_cos_sin(positions, inv_freq: np.ndarray, attention_factor: float = 1.0):
    """positions (B, T) int -> cos, sin (B, T, d/2) float32 (already × attention_factor)."""
    freqs = tf.cast(positions, tf.float32)[..., None] * tf.constant(inv_freq)[None, None, :]
    return tf.cos(freqs) * attention_factor, tf.sin(freqs) * attention_factor


def apply_rope(x, cos, sin, interleaved: bool):
    """x (B, T, H, d) or (B, T, d); cos/sin (B, T, d/2). Returns the rotated x, same shape."""
    if x.shape.rank == 4:
        cos, sin = cos[:, :, None, :], sin[:, :, None, :]          # (B, T, 1, d/2)
    cos, sin = tf.cast(cos, x.dtype), tf.cast(sin, x.dtype)
    # unstack / split rather than strided slices: their gradients are a stack / concat instead of
    # a zero-filled StridedSliceGrad per half.
    half = x.shape[-1] // 2
    if interleaved:                                                  # pairs (x0, x1), (x2, x3), ...
        x1, x2 = tf.unstack(tf.reshape(x, tf.concat([tf.shape(x)[:-1], [half, 2]], 0)), num=2, axis=-1)
    else:
        x1, x2 = tf.split(x, 2, axis=-1)
    return tf.concat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def apply_rope_tail(x, cos, sin, offset: int, interleaved: bool):
    """x (B, T, [H,] offset + d) -> the same shape: channels [offset, ·) rotated as apply_rope does,
    channels [0, offset) unchanged (MLA's [q_nope | q_pe]; offset 0 rotates all of x).

    One pass forward and one backward with seekline's ops (model/ops/cc/rope.cc) where the pure path
    is split → apply_rope → concat."""
    if ops.active("rope"):
        return ops.library().seekline_rope(x, tf.cast(cos, tf.float32), tf.cast(sin, tf.float32),
                                           offset=int(offset), interleaved=bool(interleaved))
    if offset == 0:
        return apply_rope(x, cos, sin, interleaved)
    keep, rot = tf.split(x, [offset, x.shape[-1] - offset], axis=-1)
    return tf.concat([keep, apply_rope(rot, cos, sin, interleaved)], axis=-1)
