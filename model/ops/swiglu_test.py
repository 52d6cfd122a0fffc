"""SeeklineSwiglu against numpy (float64 values and hand-derived gradients) and TF autodiff of the
pure path (silu(g) * u): fp32, bf16, fp16, odd sizes (vector tails, block edges), empty inputs,
extreme and non-finite gates, shape errors, thread-count independence and the layers' fallback."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from model import ops
from model.ops.swiglu import swiglu, swiglu_reference

pytestmark = pytest.mark.skipif(not ops.available(), reason="custom ops not built (make ops)")

TOL = {tf.float32: 2e-6, tf.bfloat16: 1e-2, tf.float16: 1e-3}   # relative to 1 + |reference|


def _np_swiglu(g, u, dh):
    """float64 (h, dg, du) from the formulas: h = g·σ(g)·u, dg = dh·u·σ·(1 + g(1 − σ)), du = dh·g·σ."""
    g, u, dh = (np.asarray(a, np.float64) for a in (g, u, dh))
    s = 1.0 / (1.0 + np.exp(-g))
    return g * s * u, dh * u * s * (1 + g * (1 - s)), dh * g * s


def _run(fn, g, u, dh):
    with tf.GradientTape() as tape:
        tape.watch([g, u])
        h = fn(g, u)
    dg, du = tape.gradient(h, [g, u], output_gradients=dh)
    return h, dg, du


def _err(got, want):
    got = np.asarray(tf.cast(got, tf.float64))
    return float(np.max(np.abs(got - want) / (1 + np.abs(want)))) if want.size else 0.0


@pytest.mark.parametrize("dtype", [tf.float32, tf.bfloat16, tf.float16])
@pytest.mark.parametrize("shape", [(1,), (15,), (17,), (3, 129), (2, 5, 700), (4097,)])
def test_values_and_gradients_match_numpy(shape, dtype):
    rng = np.random.default_rng(int(np.prod(shape)))
    g, u, dh = (tf.cast((rng.normal(size=shape) * s).astype(np.float32), dtype) for s in (4, 1, 1))
    got = _run(swiglu, g, u, dh)
    want = _np_swiglu(*(np.asarray(tf.cast(t, tf.float32)) for t in (g, u, dh)))   # rounded inputs
    for x, w in zip(got, want, strict=True):
        assert x.dtype == dtype and x.shape == shape
        assert _err(x, w) < TOL[dtype]
    if dtype != tf.float32:   # one rounding per output: not less accurate than the pure bf16 / fp16 path
        ref = _run(swiglu_reference, g, u, dh)
        for x, r, w in zip(got, ref, want, strict=True):
            assert _err(x, w) <= _err(r, w) + 1e-7


def test_block_edges_and_empty():
    """Sizes around the kernel's 2048-element work items, and no elements at all."""
    rng = np.random.default_rng(0)
    for n in (2047, 2048, 2049, 3 * 2048 + 5):
        g, u, dh = (tf.constant(rng.normal(size=n).astype(np.float32) * 3) for _ in range(3))
        for x, w in zip(_run(swiglu, g, u, dh), _np_swiglu(g, u, dh), strict=True):
            assert _err(x, w) < 2e-6
    e = tf.zeros((0, 8))
    h, dg, du = _run(swiglu, e, e, e)
    assert h.shape == dg.shape == du.shape == (0, 8)


def test_extreme_and_non_finite_gates_match_the_pure_path():
    g = tf.constant([-1e4, -100.0, -88.5, -30.0, 0.0, 30.0, 100.0, 1e4, np.nan, np.inf, -np.inf])
    u = tf.ones_like(g)
    got, want = _run(swiglu, g, u, u), _run(swiglu_reference, g, u, u)
    for x, w in zip(got, want, strict=True):
        np.testing.assert_allclose(x.numpy(), w.numpy(), rtol=1e-6, atol=1e-30, equal_nan=True)


def test_shape_mismatch_is_a_one_line_error():
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="shape"):
        ops.library().seekline_swiglu(tf.zeros((2, 3)), tf.zeros((2, 4)))
    with pytest.raises(tf.errors.InvalidArgumentError, match="same shape"):
        tf.function(lambda a, b: ops.library().seekline_swiglu(a, b),
                    input_signature=[tf.TensorSpec(None, tf.float32)] * 2)(tf.zeros((2, 3)), tf.zeros((3, 2)))


def test_results_do_not_depend_on_the_thread_count(tmp_path):
    """Bit-equal to a single-threaded process (elementwise: each output has one writer)."""
    rng = np.random.default_rng(3)
    arrays = {k: (rng.normal(size=(64, 300)) * 3).astype(np.float32) for k in ("g", "u", "dh")}
    np.savez(tmp_path / "in.npz", **arrays)
    code = textwrap.dedent(f"""
        import numpy as np, tensorflow as tf
        tf.config.threading.set_intra_op_parallelism_threads(1)
        from model.ops.swiglu import swiglu
        a = np.load({str(tmp_path / "in.npz")!r})
        g, u, dh = (tf.constant(a[k]) for k in ("g", "u", "dh"))
        with tf.GradientTape() as t:
            t.watch([g, u]); h = swiglu(g, u)
        dg, du = t.gradient(h, [g, u], output_gradients=dh)
        np.savez({str(tmp_path / "out.npz")!r}, h=h.numpy(), dg=dg.numpy(), du=du.numpy())
    """)
    subprocess.run([sys.executable, "-c", code], check=True, env={**__import__("os").environ, "SEEKLINE_OPS": "on"})
    single = np.load(tmp_path / "out.npz")
    h, dg, du = _run(swiglu, *(tf.constant(arrays[k]) for k in ("g", "u", "dh")))
    for name, x in (("h", h), ("dg", dg), ("du", du)):
        np.testing.assert_array_equal(x.numpy(), single[name])


def test_fallback_under_xla_and_disabled_is_the_reference():
    g, u = tf.constant([[0.5, -2.0, 3.0]]), tf.constant([[1.5, 0.25, -1.0]])
    want = swiglu_reference(g, u).numpy()

    def uses_op(fn, *args):
        graph = fn.get_concrete_function(*args).graph
        return any(op.type == "SeeklineSwiglu" for op in graph.get_operations())

    plain = tf.function(swiglu)
    jit = tf.function(swiglu, jit_compile=True)
    assert uses_op(plain, g, u) and not uses_op(jit, g, u)
    with ops.disabled():
        off = tf.function(swiglu)
        assert not uses_op(off, g, u)
        np.testing.assert_allclose(off(g, u).numpy(), want, rtol=1e-6)
    np.testing.assert_allclose(jit(g, u).numpy(), want, rtol=1e-6)
