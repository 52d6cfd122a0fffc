import math

import numpy as np
import tensorflow as tf

from model.config import RopeScaling
from model.layers.rope import apply_rope, rope_cos_sin, rope_inv_freq


def _yarn_reference(d, theta, factor, omax, beta_fast=32, beta_slow=1):
    """The YaRN recipe as written in reference/deepseek_v3.md, in float64."""
    i = np.arange(d // 2)
    inv = theta ** (-2 * i / d)
    corr = lambda r: d * math.log(omax / (2 * math.pi * r)) / (2 * math.log(theta))  # noqa: E731
    low, high = max(math.floor(corr(beta_fast)), 0), min(math.ceil(corr(beta_slow)), d - 1)
    ramp = np.clip((i - low) / (high - low), 0, 1)
    return inv / factor * ramp + inv * (1 - ramp)


def test_plain_inv_freq():
    inv, amp = rope_inv_freq(64, 10000.0, None)
    np.testing.assert_allclose(inv, 10000.0 ** (-np.arange(0, 64, 2) / 64), rtol=1e-6)
    assert amp == 1.0


def test_yarn_inv_freq_v3():
    s = RopeScaling(factor=40, original_max_position_embeddings=4096, mscale=1.0, mscale_all_dim=1.0)
    inv, amp = rope_inv_freq(64, 10000.0, s)
    np.testing.assert_allclose(inv, _yarn_reference(64, 10000.0, 40, 4096), rtol=1e-5)
    assert amp == 1.0  # mscale == mscale_all_dim


def test_yarn_amplitude_when_mscales_differ():
    s = RopeScaling(factor=8, original_max_position_embeddings=64, mscale=1.0, mscale_all_dim=0.8)
    _, amp = rope_inv_freq(8, 50000.0, s)
    assert amp == (0.1 * math.log(8) + 1) / (0.1 * 0.8 * math.log(8) + 1)


def test_rotation_is_relative_and_norm_preserving():
    inv, _ = rope_inv_freq(16, 10000.0, None)
    rng = np.random.default_rng(0)
    q = rng.normal(size=(1, 1, 16)).astype(np.float32)
    k = rng.normal(size=(1, 1, 16)).astype(np.float32)
    for interleaved in (False, True):
        def rot(x, p, interleaved=interleaved):
            c, s = rope_cos_sin(tf.constant([[p]]), inv)
            return apply_rope(tf.constant(x), c, s, interleaved).numpy()
        np.testing.assert_allclose(np.linalg.norm(rot(q, 7)), np.linalg.norm(q), rtol=1e-5)
        d1 = (rot(q, 9) * rot(k, 4)).sum()
        d2 = (rot(q, 15) * rot(k, 10)).sum()
        np.testing.assert_allclose(d1, d2, rtol=1e-4, atol=1e-5)


def test_interleaved_equals_half_rotation_on_permuted_channels():
    """Rotating adjacent pairs == half rotation after perm [0,2,4,..,1,3,5,..] (reference doc)."""
    d = 8
    inv, _ = rope_inv_freq(d, 10000.0, None)
    x = np.random.default_rng(1).normal(size=(2, 3, d)).astype(np.float32)
    c, s = rope_cos_sin(tf.constant([[0, 5, 9], [1, 2, 3]]), inv)
    perm = list(range(0, d, 2)) + list(range(1, d, 2))
    a = apply_rope(tf.constant(x), c, s, interleaved=True).numpy()
    b = apply_rope(tf.constant(x[..., perm]), c, s, interleaved=False).numpy()
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
