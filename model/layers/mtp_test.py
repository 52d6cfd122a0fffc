import numpy as np
import tensorflow as tf

from model.config import ModelConfig
from model.layers.attention_utils import mask_bias
from model.layers.mtp import MTPModule
from model.layers.rope import rope_cos_sin, rope_inv_freq


def _setup():
    cfg = ModelConfig.from_preset("tiny")
    mod = MTPModule(cfg, cfg.num_hidden_layers)
    b, t, d = 2, 5, cfg.hidden_size
    rng = np.random.default_rng(0)
    h = tf.constant(rng.normal(size=(b, t, d)).astype(np.float32))
    e = tf.constant(rng.normal(size=(b, t, d)).astype(np.float32))
    pos = tf.tile(tf.range(t)[None], [b, 1])
    cos, sin = rope_cos_sin(pos, rope_inv_freq(cfg.rope_dim, cfg.rope_theta, cfg.rope_scaling)[0])
    return cfg, mod, h, e, cos, sin, mask_bias(pos, pos, tf.ones([b, t]))


def test_shapes_and_moe_block():
    cfg, mod, h, e, cos, sin, bias = _setup()
    h2, normed, r = mod(h, e, cos, sin, bias, return_router=True)
    assert h2.shape == h.shape and normed.shape == h.shape
    assert r is not None and r.topk_idx.shape[-1] == cfg.num_experts_per_tok   # MTP block is MoE


def test_eh_proj_input_order_is_embedding_then_hidden():
    cfg, mod, h, e, cos, sin, bias = _setup()
    d = cfg.hidden_size
    k = np.zeros((2 * d, d), np.float32)
    k[:d] = np.eye(d)               # only the first half ([embedding]) reaches the block
    mod.eh_proj.kernel.assign(k)
    a = mod(h, e, cos, sin, bias)[0].numpy()
    b = mod(h * 3.0 + 1.0, e, cos, sin, bias)[0].numpy()
    np.testing.assert_allclose(a, b, atol=1e-5)
    c = mod(h, e * 2.0 + 1.0, cos, sin, bias)[0].numpy()
    assert np.abs(a - c).max() > 1e-3
