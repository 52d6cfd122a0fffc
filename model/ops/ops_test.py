"""The custom ops against independent references: numpy for values, TF's own MatMul / elementwise
autodiff (the pure-TF reference paths) for gradients; fp32, bf16, fp16, odd shapes, empty groups."""
import numpy as np
import pytest
import tensorflow as tf

from model import ops
from model.ops.grouped_matmul import grouped_matmul, grouped_matmul_reference
from model.ops.mla_attention import mla_latent_attention_reference
from model.ops.rms_norm import rms_norm, rms_norm_reference

pytestmark = pytest.mark.skipif(not ops.available(), reason="custom ops not built (make ops)")

TOL = {tf.float32: dict(rtol=1e-5, atol=1e-5), tf.bfloat16: dict(rtol=2e-2, atol=2e-2),
       tf.float16: dict(rtol=2e-3, atol=2e-3)}


def _np_grouped(x, w, sizes, transpose_w):
    """numpy, float64: y[rows of g] = x[rows of g] @ w[g] (or w[g].T)."""
    out, o = [], 0
    for g, s in enumerate(sizes):
        wg = w[g].T if transpose_w else w[g]
        out.append(x[o:o + s].astype(np.float64) @ wg.astype(np.float64))
        o += s
    return np.concatenate(out, 0) if out else np.zeros((0, w.shape[1 if transpose_w else 2]))


def _np_wgrad(x, dy, sizes):
    dw, o = [], 0
    for s in sizes:
        dw.append(x[o:o + s].astype(np.float64).T @ dy[o:o + s].astype(np.float64))
        o += s
    return np.stack(dw)


def _assert_close(a, b, dtype, scale=1.0):
    tol = TOL[dtype]
    np.testing.assert_allclose(np.asarray(tf.cast(a, tf.float32)), np.asarray(b, np.float64),
                               rtol=tol["rtol"], atol=tol["atol"] * scale)


SHAPES = [  # (group sizes, K, N): odd sizes, empty groups, one group holding every row, no rows
    ([3, 0, 5, 1], 7, 5),
    ([0, 0, 17], 13, 11),
    ([65, 1, 0, 130, 2], 33, 19),      # crosses the kernel's 64-row tiles
    ([0, 0], 4, 3),
    ([1], 1, 1),
]


@pytest.mark.parametrize("dtype", [tf.float32, tf.bfloat16, tf.float16])
@pytest.mark.parametrize("transpose_w", [False, True])
@pytest.mark.parametrize("sizes,k,n", SHAPES)
def test_grouped_matmul_values_match_numpy(sizes, k, n, transpose_w, dtype):
    rng = np.random.default_rng(sum(sizes) + k)
    m, g = sum(sizes), len(sizes)
    x = rng.normal(size=(m, k)).astype(np.float32)
    w = rng.normal(size=(g, n, k) if transpose_w else (g, k, n)).astype(np.float32)
    xq, wq = tf.cast(x, dtype), tf.cast(w, dtype)          # the reference sees the rounded inputs
    y = ops.library().seekline_grouped_matmul(xq, wq, tf.constant(sizes, tf.int32), transpose_w=transpose_w)
    assert y.dtype == dtype and y.shape == (m, n)
    ref = _np_grouped(np.asarray(tf.cast(xq, tf.float32)), np.asarray(tf.cast(wq, tf.float32)), sizes, transpose_w)
    _assert_close(y, ref, dtype, scale=np.sqrt(k))


@pytest.mark.parametrize("dtype", [tf.float32, tf.bfloat16])
@pytest.mark.parametrize("sizes,k,n", SHAPES)
def test_weight_gradient_op_matches_numpy_and_zeroes_empty_groups(sizes, k, n, dtype):
    rng = np.random.default_rng(7)
    m = sum(sizes)
    x = tf.cast(rng.normal(size=(m, k)).astype(np.float32), dtype)
    dy = tf.cast(rng.normal(size=(m, n)).astype(np.float32), dtype)
    dw = ops.library().seekline_grouped_matmul_w_grad(x, dy, tf.constant(sizes, tf.int32))
    assert dw.shape == (len(sizes), k, n)
    ref = _np_wgrad(np.asarray(tf.cast(x, tf.float32)), np.asarray(tf.cast(dy, tf.float32)), sizes)
    _assert_close(dw, ref, dtype, scale=np.sqrt(max(m, 1)))
    for gi, s in enumerate(sizes):
        if s == 0:
            assert not np.any(np.asarray(tf.cast(dw[gi], tf.float32)))


@pytest.mark.parametrize("dtype", [tf.float32, tf.bfloat16])
@pytest.mark.parametrize("transpose_w", [False, True])
@pytest.mark.parametrize("sizes,k,n", SHAPES[:3])
def test_grouped_matmul_gradients_match_tf_autodiff(sizes, k, n, transpose_w, dtype):
    """Gradients of a non-linear loss through the op vs TF's MatMul gradients on the split path."""
    rng = np.random.default_rng(3)
    m, g = sum(sizes), len(sizes)
    x = tf.cast(rng.normal(size=(m, k)).astype(np.float32), dtype)
    w = tf.cast(rng.normal(size=(g, n, k) if transpose_w else (g, k, n)).astype(np.float32), dtype)
    sizes_t = tf.constant(sizes, tf.int32)

    cot = tf.constant(rng.normal(size=(m, n)).astype(np.float32))   # a fixed cotangent for y

    def grads(fn, xv, wv):
        with tf.GradientTape() as tape:
            tape.watch([xv, wv])
            y = tf.cast(fn(xv, wv, sizes_t, transpose_w), tf.float32)
            loss = tf.reduce_sum(y * cot)
        return tape.gradient(loss, [xv, wv])

    got = grads(grouped_matmul, x, w)
    # Reference in fp32 from the same rounded inputs, so bf16 is judged against exact arithmetic.
    want = grads(grouped_matmul_reference, tf.cast(x, tf.float32), tf.cast(w, tf.float32))
    for a, b in zip(got, want, strict=True):
        assert a.dtype == dtype
        scale = float(np.abs(np.asarray(b)).max()) + 1.0
        _assert_close(a, np.asarray(b), dtype, scale=scale)


def test_grouped_matmul_rejects_bad_group_sizes():
    x, w = tf.ones([4, 3]), tf.ones([2, 3, 5])
    with pytest.raises(tf.errors.InvalidArgumentError, match="sum to 5 but x has 4 rows"):
        ops.library().seekline_grouped_matmul(x, w, tf.constant([2, 3]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="negative"):
        ops.library().seekline_grouped_matmul(x, w, tf.constant([6, -2]))
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError)):
        ops.library().seekline_grouped_matmul(x, tf.ones([2, 4, 5]), tf.constant([2, 2]))


def test_shape_functions_infer_static_shapes():
    @tf.function
    def f(x, w, s):
        y = ops.library().seekline_grouped_matmul(x, w, s)
        yt = ops.library().seekline_grouped_matmul(x, tf.transpose(w, [0, 2, 1]), s, transpose_w=True)
        dw = ops.library().seekline_grouped_matmul_w_grad(x, y, s)
        return y, yt, dw, ops.library().seekline_rms_norm(x, x[0], eps=1e-6)

    cf = f.get_concrete_function(tf.TensorSpec([None, 6]), tf.TensorSpec([3, 6, 4]), tf.TensorSpec([3], tf.int32))
    shapes = [o.shape.as_list() for o in cf.outputs]
    assert shapes == [[None, 4], [None, 4], [3, 6, 4], [None, 6]]


def _np_rms(x, w, eps):
    x = x.astype(np.float64)
    return w.astype(np.float64) * x / np.sqrt((x * x).mean(-1, keepdims=True) + eps)


@pytest.mark.parametrize("dtype", [tf.float32, tf.bfloat16, tf.float16])
@pytest.mark.parametrize("shape", [(2, 3, 16), (1, 7), (5, 1), (0, 8), (3, 33, 257)])
def test_rms_norm_values_and_gradients(shape, dtype):
    rng = np.random.default_rng(shape[-1])
    x = tf.cast(rng.normal(size=shape).astype(np.float32) * 3, dtype)
    w = tf.cast(rng.normal(size=shape[-1:]).astype(np.float32), dtype)
    eps = 1e-6
    y = ops.library().seekline_rms_norm(x, w, eps=eps)
    _assert_close(y, _np_rms(np.asarray(tf.cast(x, tf.float32)), np.asarray(tf.cast(w, tf.float32)), eps), dtype,
                  scale=4.0)

    cot = tf.constant(rng.normal(size=shape).astype(np.float32))    # a fixed cotangent for y

    def grads(fn, xv, wv):
        with tf.GradientTape() as tape:
            tape.watch([xv, wv])
            out = tf.cast(fn(xv, wv, eps), tf.float32)
            loss = tf.reduce_sum(out * cot)
        return tape.gradient(loss, [xv, wv])

    got = grads(rms_norm, x, w)
    want = grads(rms_norm_reference, tf.cast(x, tf.float32), tf.cast(w, tf.float32))
    for a, b in zip(got, want, strict=True):
        scale = float(np.abs(np.asarray(b)).max(initial=0.0)) + 1.0
        _assert_close(a, np.asarray(b), dtype, scale=scale)


def test_rms_norm_rejects_mismatched_weight():
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError)):
        ops.library().seekline_rms_norm(tf.ones([2, 4]), tf.ones([3]), eps=1e-6)


def test_results_do_not_depend_on_thread_count():
    """Fixed tiles and summation order: one inter/intra thread setting cannot be changed in-process
    after TF starts, so compare against the op run in a single-threaded subprocess instead."""
    import subprocess
    import sys
    code = (
        "import numpy as np, tensorflow as tf\n"
        "tf.config.threading.set_intra_op_parallelism_threads(1)\n"
        "from model import ops\n"
        "rng = np.random.default_rng(0)\n"
        "x = tf.constant(rng.normal(size=(300, 40)), tf.float32)\n"
        "dy = tf.constant(rng.normal(size=(300, 24)), tf.float32)\n"
        "s = tf.constant([100, 0, 150, 50])\n"
        "dw = ops.library().seekline_grouped_matmul_w_grad(x, dy, s)\n"
        "dx, dwn = ops.library().seekline_rms_norm_grad(dy[:, :24], dy, dy[0], eps=1e-6)\n"
        "import sys; np.save(sys.stdout.buffer, np.concatenate([np.ravel(dw), np.ravel(dx), np.ravel(dwn)]))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True,
                         env={**__import__("os").environ, "TF_CPP_MIN_LOG_LEVEL": "3"}).stdout
    import io
    single = np.load(io.BytesIO(out))
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(300, 40)), tf.float32)
    dy = tf.constant(rng.normal(size=(300, 24)), tf.float32)
    dw = ops.library().seekline_grouped_matmul_w_grad(x, dy, tf.constant([100, 0, 150, 50]))
    dx, dwn = ops.library().seekline_rms_norm_grad(dy[:, :24], dy, dy[0], eps=1e-6)
    here = np.concatenate([np.ravel(dw), np.ravel(dx), np.ravel(dwn)])
    assert np.array_equal(single, here)


def test_not_used_inside_xla_and_disabled_scopes():
    x = tf.random.normal([6, 8])
    w = tf.random.normal([8])

    def op_types(fn, **kw):
        g = tf.function(fn, **kw).get_concrete_function(x, w).graph
        return {o.type for o in g.get_operations()}

    assert "SeeklineRmsNorm" in op_types(lambda a, b: rms_norm(a, b, 1e-6))
    with ops.disabled():
        assert "SeeklineRmsNorm" not in op_types(lambda a, b: rms_norm(a, b, 1e-6))
    assert "SeeklineRmsNorm" not in op_types(lambda a, b: rms_norm(a, b, 1e-6), jit_compile=True)
    # and the XLA-compiled function still runs (pure-TF path) with the same numbers
    y_xla = tf.function(lambda a, b: rms_norm(a, b, 1e-6), jit_compile=True)(x, w)
    np.testing.assert_allclose(y_xla, rms_norm(x, w, 1e-6), rtol=1e-5, atol=1e-6)


def _np_mla(q_lat, q_pe, c, k_pe, bias, scale):
    """numpy float64 absorbed attention: softmax(scale·(q·c + q_pe·k_pe) + bias)·c."""
    s = np.einsum("bthc,bsc->bhts", q_lat, c) + np.einsum("bthd,bsd->bhts", q_pe, k_pe)
    s = s * scale + bias.astype(np.float64)                        # bias (B|1, 1, T|1, S) broadcasts
    s = s - s.max(-1, keepdims=True)
    p = np.exp(s)
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bhts,bsc->bthc", p, c)


@pytest.mark.parametrize("dtype", [tf.float32, tf.bfloat16, tf.float16])
@pytest.mark.parametrize("b,t,h,c,r,s,bias_shape", [
    (2, 1, 8, 64, 16, 37, "full"),      # a decode step over an odd-length cache
    (1, 5, 3, 7, 3, 9, "full"),         # several new tokens (speculative verify / chunked prefill)
    (3, 2, 2, 8, 4, 6, "broadcast"),    # bias (1, 1, 1, S)
])
def test_mla_latent_attention_matches_numpy(b, t, h, c, r, s, bias_shape, dtype):
    rng = np.random.default_rng(s)
    q_lat = tf.cast(rng.normal(size=(b, t, h, c)).astype(np.float32), dtype)
    q_pe = tf.cast(rng.normal(size=(b, t, h, r)).astype(np.float32), dtype)
    cache = tf.cast(rng.normal(size=(b, s, c)).astype(np.float32), dtype)
    k_pe = tf.cast(rng.normal(size=(b, s, r)).astype(np.float32), dtype)
    bshape = (b, 1, t, s) if bias_shape == "full" else (1, 1, 1, s)
    bias = np.where(rng.random(bshape) < 0.3, -1e9, 0.0).astype(np.float32)
    bias[..., 0] = 0.0                                           # at least one visible key per row
    scale = 0.3
    out = ops.library().seekline_mla_latent_attention(q_lat, q_pe, cache, k_pe, bias, scale=scale)
    assert out.dtype == dtype and out.shape == (b, t, h, c)
    f = [np.asarray(tf.cast(v, tf.float32), np.float64) for v in (q_lat, q_pe, cache, k_pe)]
    _assert_close(out, _np_mla(*f, bias, scale), dtype, scale=2.0)
    if dtype == tf.float32:      # and the einsum path it replaces
        ref = mla_latent_attention_reference(q_lat, q_pe, cache, k_pe, bias, scale)
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_mla_latent_attention_rejects_mismatched_cache_and_bias():
    q, qpe = tf.ones([1, 1, 2, 4]), tf.ones([1, 1, 2, 3])
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError)):
        ops.library().seekline_mla_latent_attention(q, qpe, tf.ones([1, 5, 4]), tf.ones([1, 6, 3]),
                                                    tf.zeros([1, 1, 1, 5]), scale=1.0)
    with pytest.raises(tf.errors.InvalidArgumentError, match="bias must be"):
        ops.library().seekline_mla_latent_attention(q, qpe, tf.ones([1, 5, 4]), tf.ones([1, 5, 3]),
                                                    tf.zeros([1, 1, 1, 4]), scale=1.0)
