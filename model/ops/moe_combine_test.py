"""SeeklineMoeCombine (and the dispatch gather's gradient through it) against numpy (float64) and
TF autodiff of the pure path it replaces — tf.gather + ys · w[order] + unsorted_segment_sum:
fp32 / bf16 / fp16, K = 1..8, no tokens, wrong pos, thread-count independence, and the MoE layer
ops-on vs ops-off."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from model import ops
from model.layers.moe import MoE, dispatch_plan
from model.ops.moe_combine import combine, gather_rows

pytestmark = pytest.mark.skipif(not ops.available(), reason="custom ops not built (make ops)")

TOL = {tf.float32: 2e-6, tf.bfloat16: 1e-2, tf.float16: 1e-3}


def _plan(n, k, e, seed):
    rng = np.random.default_rng(seed)
    idx = np.stack([rng.choice(e, size=k, replace=False) for _ in range(n)]).astype(np.int32) if n else \
        np.zeros((0, k), np.int32)
    order, token_of, counts = dispatch_plan(tf.constant(idx), e)
    pos = tf.reshape(tf.math.invert_permutation(order), [-1, k])
    return order, token_of, pos


def _pure(x, ys_fn, w, order, token_of, n):
    xs = tf.gather(x, token_of)
    ys = ys_fn(xs) * tf.cast(tf.gather(tf.reshape(w, [-1]), order), x.dtype)[:, None]
    return tf.math.unsorted_segment_sum(ys, token_of, n)


def _fused(x, ys_fn, w, pos, token_of):
    return combine(ys_fn(gather_rows(x, token_of, pos)), w, pos)


@pytest.mark.parametrize("dtype", [tf.float32, tf.bfloat16, tf.float16])
@pytest.mark.parametrize("n,k,e,d", [(1, 1, 4, 3), (7, 2, 5, 17), (33, 4, 16, 64), (20, 8, 8, 31)])
def test_values_and_gradients_match_the_pure_path(n, k, e, d, dtype):
    rng = np.random.default_rng(n * k + d)
    order, token_of, pos = _plan(n, k, e, n + k)
    x = tf.cast(rng.normal(size=(n, d)).astype(np.float32), dtype)
    w = tf.constant(rng.random((n, k)).astype(np.float32))
    proj = tf.cast(rng.normal(size=(d, d)).astype(np.float32) / np.sqrt(d), dtype)
    dy = tf.cast(rng.normal(size=(n, d)).astype(np.float32), dtype)

    def ys_fn(xs):           # a stand-in for the experts: any differentiable row map
        return tf.tanh(xs @ proj)

    def run(fn):
        with tf.GradientTape() as tape:
            tape.watch([x, w])
            y = fn()
        return (y, *tape.gradient(y, [x, w], output_gradients=dy))

    got = run(lambda: _fused(x, ys_fn, w, pos, token_of))
    want = run(lambda: _pure(x, ys_fn, w, order, token_of, n))
    # numpy float64 of the forward from the same rounded inputs
    ys64 = np.tanh(np.asarray(tf.cast(x, tf.float64))[token_of.numpy()] @ np.asarray(tf.cast(proj, tf.float64)))
    y64 = np.zeros((n, d))
    for j, t in enumerate(token_of.numpy()):
        y64[t] += w.numpy().reshape(-1)[order.numpy()[j]] * ys64[j]
    tol = TOL[dtype]
    np.testing.assert_allclose(np.asarray(tf.cast(got[0], tf.float64)), y64, rtol=tol * 4, atol=tol * 4)
    for a, b in zip(got, want, strict=True):
        a, b = tf.convert_to_tensor(a), tf.convert_to_tensor(b)    # the pure gather's gradient: IndexedSlices
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_allclose(np.asarray(tf.cast(a, tf.float32)), np.asarray(tf.cast(b, tf.float32)),
                                   rtol=tol * 8, atol=tol * 8)


def test_no_tokens():
    pos = tf.zeros((0, 4), tf.int32)
    assert combine(tf.zeros((0, 8)), tf.zeros((0, 4)), pos).shape == (0, 8)


def test_bad_pos_and_shapes_are_one_line_errors():
    ys, w = tf.zeros((4, 3)), tf.ones((2, 2))
    with pytest.raises(tf.errors.InvalidArgumentError, match="permutation"):
        combine(ys, w, tf.constant([[0, 1], [1, 3]]))              # row 1 twice
    with pytest.raises(tf.errors.InvalidArgumentError, match="permutation"):
        combine(ys, w, tf.constant([[0, 1], [2, 4]]))              # out of range
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="pairs|rows"):
        combine(tf.zeros((5, 3)), w, tf.constant([[0, 1], [2, 3]]))


def test_results_do_not_depend_on_the_thread_count(tmp_path):
    order, token_of, pos = _plan(300, 4, 16, 0)
    rng = np.random.default_rng(1)
    ys, w, dy = (rng.normal(size=s).astype(np.float32) for s in ((1200, 96), (300, 4), (300, 96)))
    np.savez(tmp_path / "in.npz", ys=ys, w=w, dy=dy, pos=pos.numpy())

    def run(ys, w, dy, pos):
        ys, w = tf.constant(ys), tf.constant(w)
        with tf.GradientTape() as tape:
            tape.watch([ys, w])
            y = combine(ys, w, tf.constant(pos))
        return [y.numpy(), *(g.numpy() for g in tape.gradient(y, [ys, w], output_gradients=tf.constant(dy)))]

    code = textwrap.dedent(f"""
        import numpy as np, tensorflow as tf
        tf.config.threading.set_intra_op_parallelism_threads(1)
        from model.ops.moe_combine_test import _single
        _single({str(tmp_path)!r})
    """)
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "SEEKLINE_OPS": "on"})
    single = np.load(tmp_path / "out.npz")
    for name, a in zip(("y", "dys", "dw"), run(ys, w, dy, pos.numpy()), strict=True):
        np.testing.assert_array_equal(a, single[name])


def _single(path):
    """The thread test's child: the same computation, written to out.npz."""
    a = np.load(os.path.join(path, "in.npz"))
    ys, w = tf.constant(a["ys"]), tf.constant(a["w"])
    with tf.GradientTape() as tape:
        tape.watch([ys, w])
        y = combine(ys, w, tf.constant(a["pos"]))
    dys, dw = tape.gradient(y, [ys, w], output_gradients=tf.constant(a["dy"]))
    np.savez(os.path.join(path, "out.npz"), y=y.numpy(), dys=dys.numpy(), dw=dw.numpy())


def test_moe_layer_with_the_op_equals_the_pure_layer():
    """The whole routed path (router weights included) on vs off: outputs and every gradient."""
    layer = MoE(32, 16, 8, 1, 2, 2, 1, 2.5, True, "sigmoid", "noaux_tc")
    x = tf.random.stateless_normal([3, 5, 32], seed=[1, 2])

    def run():
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
            loss = tf.reduce_sum(y * y)
        return [y, *tape.gradient(loss, [x] + layer.trainable_variables)]

    graph = tf.function(run).get_concrete_function().graph
    assert any(o.type == "SeeklineMoeCombine" for o in graph.get_operations())
    got = run()
    with ops.disabled():
        want = run()
    for a, b in zip(got, want, strict=True):
        a, b = tf.convert_to_tensor(a), tf.convert_to_tensor(b)
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
