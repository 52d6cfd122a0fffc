"""The fused attention op against independent references: numpy (float64) for o and lse, TF autodiff
of the pure-TF path for dq, dk, dv; fp32 / bf16 / fp16, odd shapes, GQA, every bias layout the
layers build (causal, padding, chunked prefill, packed segments, fully masked rows)."""
import io
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from model import ops
from model.layers.attention_utils import MASK_VALUE, mask_bias, segment_mask_bias
from model.ops.attention import attention, attention_reference

pytestmark = pytest.mark.skipif(not ops.available(), reason="custom ops not built (make ops)")

TOL = {tf.float32: dict(rtol=1e-5, atol=1e-5), tf.bfloat16: dict(rtol=2e-2, atol=2e-2),
       tf.float16: dict(rtol=2e-3, atol=2e-3)}


def _np_attention(q, k, v, bias, scale):
    """float64 o (B, T, H, Dv) and lse (B, H, T). z is rounded to fp32 once, as the op and the pure
    path add the -1e9 bias in fp32: a fully masked row's z are then all exactly -1e9 (uniform p)."""
    g = q.shape[2] // k.shape[2]
    kh, vh = np.repeat(k, g, axis=2), np.repeat(v, g, axis=2)                 # (B, S, H, d)
    s = np.einsum("bthd,bshd->bhts", q, kh) * scale                            # (B, H, T, S)
    z = (s.astype(np.float32) + bias.astype(np.float32)).astype(np.float64)    # bias (B|1, 1, T|1, S)
    m = z.max(-1, keepdims=True)
    e = np.exp(z - m)
    lse = (m + np.log(e.sum(-1, keepdims=True)))[..., 0]
    return np.einsum("bhts,bshd->bthd", e / e.sum(-1, keepdims=True), vh), lse


def _f64(x):
    return np.asarray(tf.cast(x, tf.float32), np.float64)


def _bias(kind, b, t, s, rng):
    """The layers' bias layouts (model/layers/attention_utils.py), fp32 numpy."""
    qpos = np.arange(s - t, s)[None].repeat(b, 0)          # the last T of S positions (chunked prefill)
    kpos = np.arange(s)[None].repeat(b, 0)
    if kind == "causal":                                    # (1, 1, T, S)
        return mask_bias(qpos[:1], kpos[:1], np.ones((1, s), bool)).numpy()
    if kind == "padded":                                    # (B, 1, T, S): left padding -> fully masked rows
        valid = np.ones((b, s), bool)
        valid[-1, :min(s - 1, 5)] = False
        return mask_bias(qpos, kpos, valid).numpy()
    if kind == "packed":                                    # (B, 1, T, T): block-diagonal + padding tail
        seg = np.zeros((b, t), np.int32)
        cuts = sorted(rng.choice(np.arange(1, t), size=min(3, t - 1), replace=False))
        for i, (a, e) in enumerate(zip([0, *cuts], [*cuts, t], strict=True)):
            seg[:, a:e] = i + 1
        seg[:, max(1, t - 7):] = 0                          # padding: segment 0
        return segment_mask_bias(seg).numpy()
    if kind == "keys":                                      # (B, 1, 1, S): padding-masked keys only
        bias = np.where(rng.random((b, 1, 1, s)) < 0.3, MASK_VALUE, 0.0).astype(np.float32)
        bias[..., 0] = 0.0
        return bias
    raise ValueError(kind)


CASES = [  # (B, T, H, Hkv, Dk, Dv, S, bias kind)
    (2, 150, 4, 2, 20, 12, 150, "causal"),      # T, S not multiples of the 64 / 128 blocks; GQA; Dk != Dv
    (2, 70, 3, 3, 8, 8, 200, "padded"),         # chunked prefill (T < S, offset) + left padding
    (1, 130, 2, 1, 16, 24, 130, "packed"),      # packed segments, padding queries, MQA
    (3, 1, 4, 2, 8, 5, 37, "keys"),             # a decode step over padded keys
    (1, 1, 1, 1, 3, 2, 1, "causal"),            # T = S = 1
    (2, 9, 4, 4, 6, 7, 9, "padded"),
    (4, 140, 4, 2, 12, 10, 140, "packed"),      # B·Hkv >= 8: the one-pass backward
    (1, 40, 2, 1, 8, 8, 600, "padded"),         # a long chunked prefill: five key blocks
]


@pytest.mark.parametrize("dtype", [tf.float32, tf.bfloat16, tf.float16])
@pytest.mark.parametrize("b,t,h,hkv,dk,dv,s,kind", CASES)
def test_values_and_lse_match_numpy(b, t, h, hkv, dk, dv, s, kind, dtype):
    rng = np.random.default_rng(t * 31 + s)
    q = tf.cast(rng.normal(size=(b, t, h, dk)), dtype)
    k = tf.cast(rng.normal(size=(b, s, hkv, dk)), dtype)
    v = tf.cast(rng.normal(size=(b, s, hkv, dv)), dtype)
    bias = _bias(kind, b, t, s, rng)
    scale = dk ** -0.5
    o, lse = ops.library().seekline_attention(q, k, v, bias, scale=scale)
    assert o.dtype == dtype and o.shape == (b, t, h, dv) and lse.shape == (b, h, t)
    want_o, want_lse = _np_attention(_f64(q), _f64(k), _f64(v), bias, scale)
    np.testing.assert_allclose(_f64(o), want_o, rtol=TOL[dtype]["rtol"], atol=TOL[dtype]["atol"] * 2)
    np.testing.assert_allclose(lse.numpy(), want_lse, rtol=1e-5, atol=1e-4)
    if dtype == tf.float32:      # and the pure-TF path it replaces
        np.testing.assert_allclose(o, attention_reference(q, k, v, bias, scale), rtol=1e-5, atol=1e-5)


def test_fully_masked_row_is_the_uniform_average_of_v():
    """A padding query (every key at -1e9) gets what the pure path's fp32 softmax gives: z is
    -1e9 for every key, so p is uniform — even though every tile of the row is 'masked'."""
    rng = np.random.default_rng(0)
    q = tf.constant(rng.normal(size=(1, 200, 2, 8)), tf.float32)
    k = tf.constant(rng.normal(size=(1, 300, 2, 8)), tf.float32)
    v = tf.constant(rng.normal(size=(1, 300, 2, 4)), tf.float32)
    bias = np.zeros((1, 1, 200, 300), np.float32)
    bias[..., 150:] = MASK_VALUE                 # tiles of keys 150.. are masked for every row ...
    bias[:, :, 7, :] = MASK_VALUE                # ... and row 7 sees nothing
    o, _ = ops.library().seekline_attention(q, k, v, bias, scale=0.5)
    np.testing.assert_allclose(o[0, 7], tf.reduce_mean(v[0], axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(o, attention_reference(q, k, v, bias, 0.5), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [tf.float32, tf.bfloat16, tf.float16])
@pytest.mark.parametrize("b,t,h,hkv,dk,dv,s,kind", CASES)
def test_gradients_match_tf_autodiff(b, t, h, hkv, dk, dv, s, kind, dtype):
    rng = np.random.default_rng(t + s)
    q = tf.cast(rng.normal(size=(b, t, h, dk)), dtype)
    k = tf.cast(rng.normal(size=(b, s, hkv, dk)), dtype)
    v = tf.cast(rng.normal(size=(b, s, hkv, dv)), dtype)
    bias = tf.constant(_bias(kind, b, t, s, rng))
    cot = tf.constant(rng.normal(size=(b, t, h, dv)), tf.float32)          # a fixed cotangent for o
    scale = dk ** -0.5

    def grads(fn, qv, kv, vv):
        with tf.GradientTape() as tape:
            tape.watch([qv, kv, vv])
            loss = tf.reduce_sum(tf.cast(fn(qv, kv, vv, bias, scale), tf.float32) * cot)
        return tape.gradient(loss, [qv, kv, vv])

    got = grads(attention, q, k, v)
    # reference in fp32 from the same rounded inputs: bf16 / fp16 are judged against exact arithmetic
    want = grads(attention_reference, *(tf.cast(x, tf.float32) for x in (q, k, v)))
    for a, w in zip(got, want, strict=True):
        assert a.dtype == dtype
        w = np.asarray(w, np.float64)
        scale_tol = np.abs(w).max(initial=0.0) + 1.0
        np.testing.assert_allclose(_f64(a), w, rtol=TOL[dtype]["rtol"], atol=TOL[dtype]["atol"] * scale_tol)


def test_lse_gradient():
    """d(Σ c·lse)/dq = scale·Σ_s c·p·k: the gradient op takes lse's cotangent too."""
    rng = np.random.default_rng(5)
    q = tf.constant(rng.normal(size=(2, 40, 2, 6)), tf.float32)
    k = tf.constant(rng.normal(size=(2, 40, 1, 6)), tf.float32)
    v = tf.constant(rng.normal(size=(2, 40, 1, 3)), tf.float32)
    bias = tf.constant(_bias("padded", 2, 40, 40, rng))
    c_o = tf.constant(rng.normal(size=(2, 40, 2, 3)), tf.float32)
    c_lse = tf.constant(rng.normal(size=(2, 2, 40)), tf.float32)

    def loss_ref(q, k, v):
        z = tf.einsum("bthd,bsd->bhts", q, k[:, :, 0]) * 0.7 + bias                # (B, H, T, S)
        o = attention_reference(q, k, v, bias, 0.7)
        return tf.reduce_sum(o * c_o) + tf.reduce_sum(tf.reduce_logsumexp(z, -1) * c_lse)

    def loss_op(q, k, v):
        o, lse = ops.library().seekline_attention(q, k, v, bias, scale=0.7)
        return tf.reduce_sum(o * c_o) + tf.reduce_sum(lse * c_lse)

    def grads(fn):
        with tf.GradientTape() as tape:
            tape.watch([q, k, v])
            loss = fn(q, k, v)
        return tape.gradient(loss, [q, k, v])

    for a, w in zip(grads(loss_op), grads(loss_ref), strict=True):
        np.testing.assert_allclose(a, w, rtol=1e-4, atol=1e-4)


def test_results_do_not_depend_on_thread_count():
    """Fixed tiles and summation order: compare with the op run in a single-threaded subprocess
    (the thread count cannot change in-process once TF has started)."""
    code = (
        "import sys, numpy as np, tensorflow as tf\n"
        "tf.config.threading.set_intra_op_parallelism_threads(1)\n"
        "from model.ops import attention_test as t\n"
        "np.save(sys.stdout.buffer, t._thread_probe())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}).stdout
    assert np.array_equal(np.load(io.BytesIO(out)), _thread_probe())


def _thread_probe():
    """o, dq, dk, dv of causal GQA calls spanning several query and key blocks, flattened: batch 2
    (two-pass backward), batch 4 (one pass per (batch, kv head)), and a longer sequence."""
    return np.concatenate([_probe(2, 300), _probe(4, 300), _probe(1, 600)])


def _probe(b, t):
    rng = np.random.default_rng(b)
    q = tf.constant(rng.normal(size=(b, t, 4, 16)), tf.float32)
    k = tf.constant(rng.normal(size=(b, t, 2, 16)), tf.float32)
    v = tf.constant(rng.normal(size=(b, t, 2, 8)), tf.float32)
    bias = tf.constant(_bias("padded", b, t, t, rng))
    with tf.GradientTape() as tape:
        tape.watch([q, k, v])
        o = attention(q, k, v, bias, 0.25)
        loss = tf.reduce_sum(o * o)
    return np.concatenate([np.ravel(x) for x in [o, *tape.gradient(loss, [q, k, v])]])


def test_rejects_mismatched_shapes_with_one_line_errors():
    lib = ops.library()
    q, k, v = tf.ones([1, 4, 4, 8]), tf.ones([1, 6, 2, 8]), tf.ones([1, 6, 2, 3])
    bias = tf.zeros([1, 1, 4, 6])
    bad = {
        "does not match q": (q, tf.ones([1, 6, 2, 7]), v, bias),
        "does not match k": (q, k, tf.ones([1, 5, 2, 3]), bias),
        "not a multiple": (tf.ones([1, 4, 3, 8]), k, v, bias),
        "bias must be": (q, k, v, tf.zeros([1, 1, 3, 6])),
        "no positions": (q, tf.ones([1, 0, 2, 8]), tf.ones([1, 0, 2, 3]), tf.zeros([1, 1, 4, 0])),
    }
    for msg, args in bad.items():
        with pytest.raises(tf.errors.InvalidArgumentError) as e:     # eager: the kernel's check
            lib.seekline_attention(*args, scale=1.0)
        assert msg in e.value.message and "\n" not in e.value.message, e.value.message


def test_kernel_errors_are_one_line():
    """Shapes the shape function cannot see (dynamic) are caught by the kernel, in one line."""
    f = tf.function(lambda q, k, v, b: ops.library().seekline_attention(q, k, v, b, scale=1.0),
                    input_signature=[tf.TensorSpec([None] * 4)] * 4)
    with pytest.raises(tf.errors.InvalidArgumentError) as e:
        f(tf.ones([1, 4, 4, 8]), tf.ones([1, 6, 2, 8]), tf.ones([1, 6, 2, 3]), tf.zeros([1, 1, 3, 6]))
    assert "bias must be (B|1, 1, T|1, S) = (1|1, 1, 4|1, 6), got [1,1,3,6]" in str(e.value).splitlines()[0]


def test_shape_inference():
    @tf.function
    def f(q, k, v, b):
        o, lse = ops.library().seekline_attention(q, k, v, b, scale=1.0)
        dq, dk, dv = ops.library().seekline_attention_grad(q, k, v, b, o, lse, o, lse, scale=1.0)
        return o, lse, dq, dk, dv

    cf = f.get_concrete_function(tf.TensorSpec([None, None, 8, 6]), tf.TensorSpec([None, None, 2, 6]),
                                 tf.TensorSpec([None, None, 2, 5]), tf.TensorSpec([1, 1, None, None]))
    assert [o.shape.as_list() for o in cf.outputs] == [
        [None, None, 8, 5], [None, 8, None], [None, None, 8, 6], [None, None, 2, 6], [None, None, 2, 5]]


def test_not_used_inside_xla_and_disabled_scopes():
    rng = np.random.default_rng(1)
    q = tf.constant(rng.normal(size=(1, 12, 2, 4)), tf.float32)
    k = tf.constant(rng.normal(size=(1, 12, 2, 4)), tf.float32)
    v = tf.constant(rng.normal(size=(1, 12, 2, 3)), tf.float32)
    bias = tf.constant(_bias("causal", 1, 12, 12, rng))

    def fn(q, k, v):
        with tf.GradientTape() as tape:
            tape.watch(q)
            o = attention(q, k, v, bias, 0.5)
            loss = tf.reduce_sum(o * o)
        return o, tape.gradient(loss, q)

    def op_types(**kw):
        g = tf.function(fn, **kw).get_concrete_function(q, k, v).graph
        return {o.type for o in g.get_operations()}

    assert {"SeeklineAttention", "SeeklineAttentionGrad"} <= op_types()
    with ops.disabled():
        assert not {"SeeklineAttention", "SeeklineAttentionGrad"} & op_types()
    assert not {"SeeklineAttention", "SeeklineAttentionGrad"} & op_types(jit_compile=True)
    # and the XLA-compiled function runs the pure-TF path with the same numbers
    for a, b in zip(tf.function(fn, jit_compile=True)(q, k, v), fn(q, k, v), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
