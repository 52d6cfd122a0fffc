"""Multi-head Latent Attention (DeepSeek-V2/V3).

  q  = q_b(RMSNorm(q_a(x)))  or  q_proj(x)                 -> per head [q_nope | q_pe]
  kv_a(x) -> latent c (kv_lora_rank) | k_pe (rope dim, ONE head shared by all heads)
  kv_b(RMSNorm(c)) -> per head [k_nope | v]
  score = q_nope·k_nope + q_pe·k_pe, × softmax_scale (incl. YaRN mscale²)

Two ways to read a cache of (RMSNorm(c), roped k_pe) — the only per-token state kept:
  * naive: expand the whole cache with kv_b into per-head k_nope, v (prefill, training);
  * absorbed: fold kv_b into the query (q_nope·W_UK) and the output (·W_UV), attending directly
    over the latent; per step cost ∝ S·(kv_lora + rope) per head, never expanding the cache.
"""
from __future__ import annotations

import keras
import tensorflow as tf

from model.layers.linear import Linear
from model.layers.rmsnorm import RMSNorm
from model.layers.rope import apply_rope, apply_rope_tail
from model.ops.attention import attention
from model.ops.mla_attention import mla_latent_attention

# transformers and the reference code build q_a_layernorm / kv_a_layernorm with the default eps,
# not config.rms_norm_eps.
_LATENT_NORM_EPS = 1e-6


@keras.saving.register_keras_serializable(package="seekline")
class MultiHeadLatentAttention(keras.layers.Layer):
    def __init__(self, hidden_size: int, num_heads: int, q_lora_rank: int | None,
                 kv_lora_rank: int, qk_nope_head_dim: int, qk_rope_head_dim: int, v_head_dim: int,
                 softmax_scale: float, rope_interleave: bool = True,
                 initializer_range: float = 0.02, **kwargs):
        super().__init__(**kwargs)
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.q_lora_rank = q_lora_rank
        self.kv_lora_rank = kv_lora_rank
        self.qk_nope_head_dim = qk_nope_head_dim
        self.qk_rope_head_dim = qk_rope_head_dim
        self.v_head_dim = v_head_dim
        self.softmax_scale = softmax_scale
        self.rope_interleave = rope_interleave
        self.initializer_range = initializer_range
        h, qk = num_heads, qk_nope_head_dim + qk_rope_head_dim
        ir = initializer_range
        if q_lora_rank is None:
            self.q_proj = Linear(hidden_size, h * qk, initializer_range=ir, name="q_proj")
        else:
            self.q_a_proj = Linear(hidden_size, q_lora_rank, initializer_range=ir, name="q_a_proj")
            self.q_a_layernorm = RMSNorm(q_lora_rank, _LATENT_NORM_EPS, name="q_a_layernorm")
            self.q_b_proj = Linear(q_lora_rank, h * qk, initializer_range=ir, name="q_b_proj")
        self.kv_a_proj_with_mqa = Linear(hidden_size, kv_lora_rank + qk_rope_head_dim,
                                         initializer_range=ir, name="kv_a_proj_with_mqa")
        self.kv_a_layernorm = RMSNorm(kv_lora_rank, _LATENT_NORM_EPS, name="kv_a_layernorm")
        self.kv_b_proj = Linear(kv_lora_rank, h * (qk_nope_head_dim + v_head_dim),
                                initializer_range=ir, name="kv_b_proj")
        self.o_proj = Linear(h * v_head_dim, hidden_size, initializer_range=ir, name="o_proj")
        self.built = True

    # ---------------------------------------------------------------- pieces
    def _query(self, x, cos, sin):
        """x (B, T, D) -> q (B, T, H, dn+dr) = [q_nope | roped q_pe] per head."""
        q = self.q_proj(x) if self.q_lora_rank is None else self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        q = tf.reshape(q, [tf.shape(x)[0], tf.shape(x)[1], self.num_heads,
                           self.qk_nope_head_dim + self.qk_rope_head_dim])      # (B, T, H, dn+dr)
        # RoPE on the trailing dr channels in place: one kernel with the custom ops, else
        # split → rope → concat (the concat the attention needs anyway)
        return apply_rope_tail(q, cos, sin, self.qk_nope_head_dim, self.rope_interleave)

    def _split_query(self, q):
        """q (B, T, H, dn+dr) -> q_nope (B, T, H, dn), q_pe (B, T, H, dr)."""
        # tf.split, not two slices: its gradient is one concat, where each slice's gradient
        # (StridedSliceGrad) writes a zero-filled full-size tensor (8.5% of a train step, profiled).
        return tf.split(q, [self.qk_nope_head_dim, self.qk_rope_head_dim], axis=-1)

    def latent(self, x, cos, sin):
        """x (B, T, D) -> what the cache stores: RMSNorm(c) (B, T, C), roped k_pe (B, T, dr)."""
        ckv = self.kv_a_proj_with_mqa(x)                                        # (B, T, C+dr)
        c, k_pe = tf.split(ckv, [self.kv_lora_rank, self.qk_rope_head_dim], axis=-1)  # (B,T,C), (B,T,dr)
        return self.kv_a_layernorm(c), apply_rope(k_pe, cos, sin, self.rope_interleave)

    def _expand_heads(self, c_norm):
        """c_norm (B, S, C) -> k_nope (B, S, H, dn), v (B, S, H, dv)."""
        kv = self.kv_b_proj(c_norm)                                             # (B, S, H*(dn+dv))
        kv = tf.reshape(kv, [tf.shape(c_norm)[0], tf.shape(c_norm)[1], self.num_heads,
                             self.qk_nope_head_dim + self.v_head_dim])          # (B, S, H, dn+dv)
        k_nope, v = tf.split(kv, [self.qk_nope_head_dim, self.v_head_dim], axis=-1)
        return k_nope, v

    def _naive(self, q, c_norm, k_pe, bias):
        # One attention over [q_nope | q_pe]·[k_nope | k_pe]: the fused flash-style op when the
        # custom ops are active (model/ops/attention.py), else batched matmuls + fp32 softmax.
        # q (B, T, H, dn+dr) from _query.
        k_nope, v = self._expand_heads(c_norm)                                  # (B,S,H,dn), (B,S,H,dv)
        b, s = tf.shape(k_nope)[0], tf.shape(k_nope)[1]
        # k_pe is one head shared by all heads: broadcast it to every head.
        k_pe_h = tf.broadcast_to(k_pe[:, :, None, :],
                                 [b, s, self.num_heads, self.qk_rope_head_dim])  # (B, S, H, dr)
        k = tf.concat([k_nope, k_pe_h], -1)                                     # (B, S, H, dn+dr)
        return attention(q, k, v, bias, self.softmax_scale)                     # (B, T, H, dv)

    def _absorbed(self, q, c_norm, k_pe, bias):
        q_nope, q_pe = self._split_query(q)                                       # (B,T,H,dn), (B,T,H,dr)
        w = tf.reshape(tf.cast(self.kv_b_proj.effective_kernel(), q_nope.dtype),
                       [self.kv_lora_rank, self.num_heads, self.qk_nope_head_dim + self.v_head_dim])
        w_uk, w_uv = w[..., :self.qk_nope_head_dim], w[..., self.qk_nope_head_dim:]  # (C,H,dn),(C,H,dv)
        q_lat = tf.einsum("bthd,chd->bthc", q_nope, w_uk)                          # (B, T, H, C)
        # scores, fp32 softmax and the weighted sum over the latent: one fused kernel when the
        # custom ops are active (model/ops/mla_attention.py), else three einsums
        o_lat = mla_latent_attention(q_lat, q_pe, c_norm, k_pe, bias, self.softmax_scale)  # (B, T, H, C)
        return tf.einsum("bthc,chd->bthd", o_lat, w_uv)                           # (B, T, H, dv)

    def _out(self, o):
        b, t = tf.shape(o)[0], tf.shape(o)[1]
        return self.o_proj(tf.reshape(o, [b, t, self.num_heads * self.v_head_dim]))

    # ---------------------------------------------------------------- entry points
    def call(self, x, cos, sin, bias):
        """Full-sequence attention. x (B, T, D); cos/sin (B, T, dr/2); bias (B, 1, T, T)."""
        q = self._query(x, cos, sin)
        c_norm, k_pe = self.latent(x, cos, sin)
        return self._out(self._naive(q, c_norm, k_pe, bias))

    def init_cache(self, batch: int, max_len: int, dtype="float32") -> tuple[tf.Tensor, tf.Tensor]:
        """Latent cache: (B, S, kv_lora_rank) normalised latent + (B, S, rope dim) roped k_pe."""
        return (tf.zeros([batch, max_len, self.kv_lora_rank], dtype),
                tf.zeros([batch, max_len, self.qk_rope_head_dim], dtype))

    def call_cached(self, x, cos, sin, bias, cache, write_idx, absorb: bool = True):
        """Attend from T new tokens over the cache after writing them at write_idx (B, T).

        bias (B, 1, T, S) must hide slots that are empty, padding, or in the future.
        Returns (out (B, T, D), new_cache).
        """
        q = self._query(x, cos, sin)
        c_new, pe_new = self.latent(x, cos, sin)
        cache_c = _scatter_rows(cache[0], write_idx, c_new)
        cache_pe = _scatter_rows(cache[1], write_idx, pe_new)
        attend = self._absorbed if absorb else self._naive
        o = attend(q, cache_c, cache_pe, bias)
        return self._out(o), (cache_c, cache_pe)

    def get_config(self):
        return {**super().get_config(), "hidden_size": self.hidden_size, "num_heads": self.num_heads,
                "q_lora_rank": self.q_lora_rank, "kv_lora_rank": self.kv_lora_rank,
                "qk_nope_head_dim": self.qk_nope_head_dim, "qk_rope_head_dim": self.qk_rope_head_dim,
                "v_head_dim": self.v_head_dim, "softmax_scale": self.softmax_scale,
                "rope_interleave": self.rope_interleave, "initializer_range": self.initializer_range}


def _scatter_rows(cache, write_idx, new):
    """cache (B, S, ...) <- new (B, T, ...) at rows write_idx (B, T). XLA- and CPU-friendly."""
    b = tf.shape(new)[0]
    t = tf.shape(new)[1]
    batch_idx = tf.tile(tf.range(b)[:, None], [1, t])                          # (B, T)
    idx = tf.stack([batch_idx, tf.cast(write_idx, tf.int32)], axis=-1)         # (B, T, 2)
    return tf.tensor_scatter_nd_update(cache, idx, tf.cast(new, cache.dtype))
