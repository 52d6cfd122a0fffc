"""Grouped-query attention (Qwen2-style: q/k/v bias, half-rotation RoPE, KV heads shared).

The cache holds K (roped) and V per KV head: (B, S, Hkv, hd) each.
"""
from __future__ import annotations

import keras
import tensorflow as tf

from model.layers.linear import Linear
from model.layers.mla import _scatter_rows
from model.layers.rope import apply_rope_tail
from model.ops.attention import attention


@keras.saving.register_keras_serializable(package="seekline")
class GroupedQueryAttention(keras.layers.Layer):
    def __init__(self, hidden_size: int, num_heads: int, num_kv_heads: int, head_dim: int,
                 qkv_bias: bool = True, rope_interleave: bool = False,
                 initializer_range: float = 0.02, **kwargs):
        super().__init__(**kwargs)
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.qkv_bias = qkv_bias
        self.rope_interleave = rope_interleave
        self.initializer_range = initializer_range
        ir = initializer_range
        self.q_proj = Linear(hidden_size, num_heads * head_dim, qkv_bias, ir, name="q_proj")
        self.k_proj = Linear(hidden_size, num_kv_heads * head_dim, qkv_bias, ir, name="k_proj")
        self.v_proj = Linear(hidden_size, num_kv_heads * head_dim, qkv_bias, ir, name="v_proj")
        self.o_proj = Linear(num_heads * head_dim, hidden_size, False, ir, name="o_proj")
        self.built = True

    def _qkv(self, x, cos, sin):
        b, t = tf.shape(x)[0], tf.shape(x)[1]
        q = tf.reshape(self.q_proj(x), [b, t, self.num_heads, self.head_dim])      # (B, T, H, hd)
        k = tf.reshape(self.k_proj(x), [b, t, self.num_kv_heads, self.head_dim])   # (B, T, Hkv, hd)
        v = tf.reshape(self.v_proj(x), [b, t, self.num_kv_heads, self.head_dim])
        # one kernel each with the custom ops (offset 0: every channel rotated), else apply_rope
        return (apply_rope_tail(q, cos, sin, 0, self.rope_interleave),
                apply_rope_tail(k, cos, sin, 0, self.rope_interleave), v)

    def _attend(self, q, k, v, bias):
        # q (B, T, H, hd), k / v (B, S, Hkv, hd): query heads grouped by their KV head, never
        # materialising repeated K / V (the fused op when active, model/ops/attention.py).
        b, t = tf.shape(q)[0], tf.shape(q)[1]
        o = attention(q, k, v, bias, self.head_dim ** -0.5)                       # (B, T, H, hd)
        return self.o_proj(tf.reshape(o, [b, t, self.num_heads * self.head_dim]))

    def call(self, x, cos, sin, bias):
        q, k, v = self._qkv(x, cos, sin)
        return self._attend(q, k, v, bias)

    def init_cache(self, batch: int, max_len: int, dtype="float32") -> tuple[tf.Tensor, tf.Tensor]:
        shape = [batch, max_len, self.num_kv_heads, self.head_dim]
        return tf.zeros(shape, dtype), tf.zeros(shape, dtype)

    def call_cached(self, x, cos, sin, bias, cache, write_idx, absorb: bool = True):
        del absorb  # MLA-only option; GQA has a single path
        q, k, v = self._qkv(x, cos, sin)
        ck = _scatter_rows(cache[0], write_idx, k)
        cv = _scatter_rows(cache[1], write_idx, v)
        return self._attend(q, ck, cv, bias), (ck, cv)

    def get_config(self):
        return {**super().get_config(), "hidden_size": self.hidden_size, "num_heads": self.num_heads,
                "num_kv_heads": self.num_kv_heads, "head_dim": self.head_dim,
                "qkv_bias": self.qkv_bias, "rope_interleave": self.rope_interleave,
                "initializer_range": self.initializer_range}
