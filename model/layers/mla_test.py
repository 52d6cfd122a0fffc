import numpy as np
import tensorflow as tf

from model.layers.attention_utils import mask_bias
from model.layers.mla import MultiHeadLatentAttention
from model.layers.rope import rope_cos_sin, rope_inv_freq


def _layer(q_lora):
    return MultiHeadLatentAttention(32, 4, q_lora, 16, 8, 4, 6, softmax_scale=0.3,
                                    rope_interleave=True, initializer_range=0.2)


def _inputs(b, t):
    x = tf.constant(np.random.default_rng(0).normal(size=(b, t, 32)).astype(np.float32))
    pos = tf.tile(tf.range(t)[None], [b, 1])
    cos, sin = rope_cos_sin(pos, rope_inv_freq(4, 10000.0, None)[0])
    return x, pos, cos, sin


def test_cached_prefill_equals_full_and_absorbed_equals_naive():
    for q_lora in (None, 12):
        layer = _layer(q_lora)
        x, pos, cos, sin = _inputs(2, 6)
        full = layer(x, cos, sin, mask_bias(pos, pos, tf.ones([2, 6]))).numpy()
        s = 9  # cache longer than the sequence: empty rows must stay invisible
        key_valid = tf.constant(np.r_[np.ones(6), np.zeros(3)][None].repeat(2, 0))
        bias = mask_bias(pos, tf.tile(tf.range(s)[None], [2, 1]), key_valid)
        for absorb in (False, True):
            out, cache = layer.call_cached(x, cos, sin, bias, layer.init_cache(2, s), pos, absorb)
            np.testing.assert_allclose(out.numpy(), full, rtol=1e-4, atol=1e-5)
        assert cache[0].shape == (2, s, 16) and cache[1].shape == (2, s, 4)


def test_cache_holds_normalised_latent_and_roped_key_only():
    layer = _layer(12)
    x, pos, cos, sin = _inputs(1, 3)
    c_norm, k_pe = layer.latent(x, cos, sin)
    bias = mask_bias(pos, pos, tf.ones([1, 3]))
    _, cache = layer.call_cached(x, cos, sin, bias, layer.init_cache(1, 3), pos)
    np.testing.assert_allclose(cache[0].numpy(), c_norm.numpy(), atol=1e-6)
    np.testing.assert_allclose(cache[1].numpy(), k_pe.numpy(), atol=1e-6)
    # per token per layer: kv_lora_rank + rope dim values (576 for V3)
    assert cache[0].shape[-1] + cache[1].shape[-1] == 16 + 4


def test_get_config_round_trip():
    layer = _layer(12)
    clone = MultiHeadLatentAttention.from_config(layer.get_config())
    assert clone.q_lora_rank == 12 and clone.softmax_scale == 0.3


def test_naive_attention_matches_score_formula():
    """The batched-matmul prefill path against the formula in numpy: softmax over
    (q_nope·k_nope + q_pe·k_pe) × softmax_scale, causal, then ·v, per head."""
    layer = _layer(12)
    x, pos, cos, sin = _inputs(2, 5)
    q_nope, q_pe = (a.numpy() for a in layer._split_query(layer._query(x, cos, sin)))  # (B,T,H,dn), (B,T,H,dr)
    c_norm, k_pe = layer.latent(x, cos, sin)
    kv = (c_norm.numpy() @ layer.kv_b_proj.kernel.numpy()).reshape(2, 5, 4, 8 + 6)
    k_nope, v = kv[..., :8], kv[..., 8:]                                  # (B, S, H, dn), (B, S, H, dv)
    scores = (np.einsum("bthd,bshd->bhts", q_nope, k_nope)
              + np.einsum("bthd,bsd->bhts", q_pe, k_pe.numpy())) * 0.3
    scores = np.where(np.tril(np.ones((5, 5), bool)), scores, -np.inf)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    want = np.einsum("bhts,bshd->bthd", p, v)                             # (B, T, H, dv)
    got = layer._naive(layer._query(x, cos, sin), c_norm, k_pe, mask_bias(pos, pos, tf.ones([2, 5])))
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-5)
