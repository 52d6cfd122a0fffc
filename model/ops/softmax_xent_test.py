"""SeeklineSoftmaxXent against numpy (values, float64) and TF's own kernel (gradients): fp32, bf16,
fp16, odd vocabulary sizes (vector tails), masked rows, the lse output's gradient, bad labels."""
import numpy as np
import pytest
import tensorflow as tf

from model import ops
from model.ops.softmax_xent import softmax_xent_reference, sparse_softmax_xent

pytestmark = pytest.mark.skipif(not ops.available(), reason="custom ops not built (make ops)")

TOL = {tf.float32: 1e-5, tf.bfloat16: 2e-2, tf.float16: 2e-3}


def _np_xent(x, labels):
    """float64: (loss, lse) per row."""
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    lse = (m + np.log(np.exp(x - m).sum(-1, keepdims=True)))[:, 0]
    return lse - x[np.arange(len(x)), labels], lse


@pytest.mark.parametrize("dtype", [tf.float32, tf.bfloat16, tf.float16])
@pytest.mark.parametrize("n,v", [(7, 1), (5, 15), (9, 17), (33, 257), (4, 8193)])
def test_values_match_numpy(n, v, dtype):
    rng = np.random.default_rng(n * v)
    x = (rng.normal(size=(n, v)) * 4).astype(np.float32)
    labels = rng.integers(0, v, size=n).astype(np.int32)
    xq = tf.cast(x, dtype)                                    # the reference sees the rounded inputs
    loss, lse = ops.library().seekline_softmax_xent(xq, labels)
    want_loss, want_lse = _np_xent(np.asarray(tf.cast(xq, tf.float32)), labels)
    assert loss.dtype == lse.dtype == tf.float32
    np.testing.assert_allclose(loss.numpy(), want_loss, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(lse.numpy(), want_lse, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [tf.float32, tf.bfloat16, tf.float16])
@pytest.mark.parametrize("shape,v", [((2, 3), 11), ((3, 5), 100), ((1, 4), 4099)])
def test_masked_mean_loss_and_gradient_match_tf(shape, v, dtype):
    """What model/losses does: a mask-weighted mean of the per-position CE, rank-3 logits."""
    rng = np.random.default_rng(v)
    x = tf.cast((rng.normal(size=(*shape, v)) * 3).astype(np.float32), dtype)
    labels = rng.integers(0, v, size=shape).astype(np.int32)
    mask = (rng.random(shape) < 0.6).astype(np.float32)
    mask[0, 0] = 1.0

    def mean_ce(fn):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(fn(x, labels) * mask) / mask.sum()
        return loss, tape.gradient(loss, x)

    got_loss, got_grad = mean_ce(sparse_softmax_xent)
    want_loss, want_grad = mean_ce(softmax_xent_reference)
    assert got_grad.dtype == dtype
    np.testing.assert_allclose(float(got_loss), float(want_loss), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(tf.cast(got_grad, tf.float32)), np.asarray(tf.cast(want_grad, tf.float32)),
                               rtol=TOL[dtype], atol=TOL[dtype] / v)
    masked = np.asarray(tf.cast(got_grad, tf.float32))[mask == 0]
    assert not masked.any()                                   # masked targets: exactly zero rows


def test_lse_gradient_is_the_softmax():
    """d lse / d x = softmax(x), and with both outputs used the two gradients add."""
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(6, 37)).astype(np.float32))
    labels = rng.integers(0, 37, size=6).astype(np.int32)
    a, b = rng.normal(size=6).astype(np.float32), rng.normal(size=6).astype(np.float32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss, lse = ops.library().seekline_softmax_xent(x, labels)
        total = tf.reduce_sum(a * loss + b * lse)
    got = tape.gradient(total, x).numpy()
    p = np.exp(x.numpy() - x.numpy().max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    want = (a + b)[:, None] * p
    want[np.arange(6), labels] -= a
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_empty_rows_and_shape_functions():
    loss, lse = ops.library().seekline_softmax_xent(tf.zeros([0, 5]), tf.zeros([0], tf.int32))
    assert loss.shape == lse.shape == (0,)

    @tf.function(input_signature=[tf.TensorSpec([None, 9]), tf.TensorSpec([None], tf.int32)])
    def f(x, y):
        loss, lse = ops.library().seekline_softmax_xent(x, y)
        assert loss.shape.as_list() == lse.shape.as_list() == [None]
        return loss

    f.get_concrete_function()


@pytest.mark.parametrize("bad", [-1, 9])
def test_labels_outside_the_vocabulary_are_an_error(bad):
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"label value of {bad}.*\\[0, 9\\)"):
        ops.library().seekline_softmax_xent(tf.zeros([2, 9]), tf.constant([0, bad], tf.int32))


def test_rows_do_not_depend_on_the_batch_around_them():
    """Each row is one thread's work: the same bits for a row alone or in any batch (so any split
    of the rows over the pool gives the same result)."""
    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(size=(64, 1000)).astype(np.float32))
    labels = rng.integers(0, 1000, size=64).astype(np.int32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(sparse_softmax_xent(x, labels))
    g = tape.gradient(loss, x).numpy()
    for start in range(0, 64, 16):     # the same rows alone
        with tf.GradientTape() as tape:
            xs = x[start:start + 16]
            tape.watch(xs)
            part = tf.reduce_sum(sparse_softmax_xent(xs, labels[start:start + 16]))
        np.testing.assert_array_equal(tape.gradient(part, xs).numpy(), g[start:start + 16])
