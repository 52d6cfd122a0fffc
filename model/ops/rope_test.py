"""SeeklineRope (model/layers/rope.apply_rope_tail with the custom ops) against numpy's rotation
(float64, written from the formula) and TF autodiff of the pure split → apply_rope → concat path:
both layouts, offsets 0 / MLA-like, rank 3 and 4, fp32 / bf16 / fp16, YaRN amplitude, empty
batches, shape errors, thread-count independence and the XLA / disabled() fallbacks."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from model import ops
from model.config import RopeScaling
from model.layers.rope import apply_rope_tail, rope_cos_sin, rope_inv_freq

pytestmark = pytest.mark.skipif(not ops.available(), reason="custom ops not built (make ops)")

TOL = {tf.float32: 1e-6, tf.bfloat16: 1e-2, tf.float16: 1e-3}


def _np_rope_tail(x, cos, sin, offset, interleaved):
    """float64: channels [offset:] rotated pairwise, written [rotated a | rotated b]."""
    x = np.asarray(x, np.float64)
    cos, sin = np.asarray(cos, np.float64), np.asarray(sin, np.float64)
    if x.ndim == 4:
        cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    rot = x[..., offset:]
    h = rot.shape[-1] // 2
    a, b = (rot[..., 0::2], rot[..., 1::2]) if interleaved else (rot[..., :h], rot[..., h:])
    return np.concatenate([x[..., :offset], a * cos - b * sin, b * cos + a * sin], axis=-1)


def _tables(b, t, rot, yarn=False):
    scaling = RopeScaling(factor=4, original_max_position_embeddings=16, mscale=1.0, mscale_all_dim=0.7) \
        if yarn else None
    inv, amp = rope_inv_freq(rot, 10000.0, scaling)
    pos = np.arange(b * t).reshape(b, t) * 3 % 97
    return rope_cos_sin(tf.constant(pos), inv, amp)


def _grad(x, cos, sin, offset, interleaved, dy):
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = apply_rope_tail(x, cos, sin, offset, interleaved)
    return y, tape.gradient(y, x, output_gradients=dy)


@pytest.mark.parametrize("dtype", [tf.float32, tf.bfloat16, tf.float16])
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("shape,offset", [((2, 5, 3, 48), 32), ((1, 7, 16), 0), ((2, 3, 80), 64),
                                          ((3, 4, 2, 6), 0), ((1, 2, 1, 10), 8)])
def test_values_and_gradient_match_numpy_and_pure_path(shape, offset, interleaved, dtype):
    rng = np.random.default_rng(sum(shape) + offset)
    cos, sin = _tables(shape[0], shape[1], shape[-1] - offset, yarn=interleaved)
    x = tf.cast(rng.normal(size=shape).astype(np.float32), dtype)
    dy = tf.cast(rng.normal(size=shape).astype(np.float32), dtype)
    y, dx = _grad(x, cos, sin, offset, interleaved, dy)
    assert y.dtype == dx.dtype == dtype and y.shape == dx.shape == shape
    xf = np.asarray(tf.cast(x, tf.float32))
    want = _np_rope_tail(xf, cos, sin, offset, interleaved)
    np.testing.assert_allclose(np.asarray(tf.cast(y, tf.float32)), want, rtol=TOL[dtype], atol=TOL[dtype])
    np.testing.assert_array_equal(np.asarray(y)[..., :offset], np.asarray(x)[..., :offset])  # passed through
    with ops.disabled():                                           # the pure path's autodiff gradient
        _, ref_dx = _grad(x, cos, sin, offset, interleaved, dy)
    np.testing.assert_allclose(np.asarray(tf.cast(dx, tf.float32)), np.asarray(tf.cast(ref_dx, tf.float32)),
                               rtol=4 * TOL[dtype], atol=4 * TOL[dtype])


def test_gradient_is_the_transpose():
    """<rope(x), dy> == <x, rope_grad(dy)> for the linear map (float64-accumulated)."""
    rng = np.random.default_rng(9)
    cos, sin = _tables(2, 6, 16, yarn=True)
    for interleaved in (False, True):
        x = tf.constant(rng.normal(size=(2, 6, 4, 24)).astype(np.float32))
        dy = tf.constant(rng.normal(size=(2, 6, 4, 24)).astype(np.float32))
        y, dx = _grad(x, cos, sin, 8, interleaved, dy)
        lhs = float(np.sum(np.float64(y.numpy()) * dy.numpy()))
        rhs = float(np.sum(np.float64(x.numpy()) * dx.numpy()))
        assert lhs == pytest.approx(rhs, rel=1e-5)


def test_empty_and_bad_shapes():
    cos, sin = _tables(1, 3, 8)
    assert apply_rope_tail(tf.zeros((0, 3, 2, 8)), tf.zeros((0, 3, 4)), tf.zeros((0, 3, 4)), 0, True).shape == \
        (0, 3, 2, 8)
    lib = ops.library()
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="even"):
        lib.seekline_rope(tf.zeros((1, 3, 9)), cos, sin, offset=0, interleaved=False)
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match=r"cos must be \(B, T, rot/2\)"):
        lib.seekline_rope(tf.zeros((1, 3, 12)), cos, sin, offset=0, interleaved=False)
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match=r"rank|\(B, T, H, d\)"):
        lib.seekline_rope(tf.zeros((3, 8)), cos, sin, offset=0, interleaved=False)


def test_results_do_not_depend_on_the_thread_count(tmp_path):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(4, 64, 8, 48)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    code = textwrap.dedent(f"""
        import numpy as np, tensorflow as tf
        tf.config.threading.set_intra_op_parallelism_threads(1)
        from model.ops.rope_test import _tables
        from model.layers.rope import apply_rope_tail
        cos, sin = _tables(4, 64, 16, yarn=True)
        x = tf.constant(np.load({str(tmp_path / "x.npy")!r}))
        np.save({str(tmp_path / "y.npy")!r}, apply_rope_tail(x, cos, sin, 32, True).numpy())
    """)
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "SEEKLINE_OPS": "on"})
    cos, sin = _tables(4, 64, 16, yarn=True)
    np.testing.assert_array_equal(apply_rope_tail(tf.constant(x), cos, sin, 32, True).numpy(),
                                  np.load(tmp_path / "y.npy"))


def test_fallback_under_xla_and_disabled_is_the_pure_path():
    cos, sin = _tables(1, 4, 8)
    x = tf.constant(np.random.default_rng(0).normal(size=(1, 4, 2, 12)).astype(np.float32))

    def fn(a):
        return apply_rope_tail(a, cos, sin, 4, True)

    def uses_op(f):
        return any(o.type == "SeeklineRope" for o in f.get_concrete_function(x).graph.get_operations())

    want = _np_rope_tail(x.numpy(), cos, sin, 4, True)
    jit = tf.function(fn, jit_compile=True)
    assert uses_op(tf.function(fn)) and not uses_op(jit)
    np.testing.assert_allclose(jit(x).numpy(), want, rtol=1e-5, atol=1e-6)
    with ops.disabled():
        off = tf.function(fn)
        assert not uses_op(off)
        np.testing.assert_allclose(off(x).numpy(), want, rtol=1e-5, atol=1e-6)
