import numpy as np
import tensorflow as tf

from model.layers.attention_utils import mask_bias
from model.layers.gqa import GroupedQueryAttention
from model.layers.rope import apply_rope, rope_cos_sin, rope_inv_freq


def test_gqa_matches_repeat_kv_reference():
    b, t, d, h, kvh, hd = 2, 5, 24, 6, 2, 4
    layer = GroupedQueryAttention(d, h, kvh, hd, qkv_bias=True, initializer_range=0.3)
    for lin in (layer.q_proj, layer.k_proj, layer.v_proj):
        lin.bias.assign(np.random.default_rng(1).normal(size=lin.bias.shape))
    x = np.random.default_rng(0).normal(size=(b, t, d)).astype(np.float32)
    pos = tf.tile(tf.range(t)[None], [b, 1])
    cos, sin = rope_cos_sin(pos, rope_inv_freq(hd, 10000.0, None)[0])
    got = layer(tf.constant(x), cos, sin, mask_bias(pos, pos, tf.ones([b, t]))).numpy()

    def lin(layer_, z):
        return z @ layer_.kernel.numpy() + (layer_.bias.numpy() if layer_.bias is not None else 0)
    q = lin(layer.q_proj, x).reshape(b, t, h, hd)
    k = lin(layer.k_proj, x).reshape(b, t, kvh, hd)
    v = lin(layer.v_proj, x).reshape(b, t, kvh, hd)
    q = apply_rope(tf.constant(q), cos, sin, False).numpy()
    k = apply_rope(tf.constant(k), cos, sin, False).numpy()
    k, v = np.repeat(k, h // kvh, axis=2), np.repeat(v, h // kvh, axis=2)   # repeat_kv
    s = np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(hd)
    s = s + np.triu(np.full((t, t), -1e9), 1)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    o = np.einsum("bhts,bshd->bthd", p, v).reshape(b, t, h * hd)
    np.testing.assert_allclose(got, o @ layer.o_proj.kernel.numpy(), rtol=1e-4, atol=1e-5)


def test_cache_is_per_kv_head():
    layer = GroupedQueryAttention(24, 6, 2, 4)
    k, v = layer.init_cache(3, 10)
    assert k.shape == (3, 10, 2, 4) and v.shape == (3, 10, 2, 4)
