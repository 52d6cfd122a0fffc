"""The learning-rate schedule and AdamW against hand-computed values and a numpy PyTorch AdamW."""
import contextlib
import math

import numpy as np
import pytest
import tensorflow as tf

from configs.training import TrainerConfig
from model import ops
from training.optimizer import WarmupCosine, build_optimizer, clip_scale, lr_at

# Both update paths: SeeklineApplyAdamW (custom op, when built) and ResourceApplyAdam + Keras' decay.
PATHS = ["fused_op", "tf"] if ops.available() else ["tf"]


def _path(name):
    return contextlib.nullcontext() if name == "fused_op" else ops.disabled()

# peak 1, warmup 4, total 12, floor 0.1: warmup ramps (s+1)/4 so the first update already learns;
# the cosine spans steps 4..12 (8 steps), so its midpoint is step 8.
SCHEDULE = [
    (0, 0.25), (1, 0.5), (3, 1.0),               # warmup: (s+1)/warmup · peak
    (4, 1.0),                                     # cosine start = peak
    (6, 0.1 + 0.9 * 0.5 * (1 + math.sqrt(0.5))),  # quarter way: cos(pi/4)
    (8, 0.55),                                    # midpoint: 0.1 + 0.9 · 0.5
    (12, 0.1), (40, 0.1),                         # end = min_ratio · peak, held after
]


@pytest.mark.parametrize(("step", "want"), SCHEDULE)
def test_schedule_hand_values(step, want):
    sched = WarmupCosine(peak=1.0, warmup=4, total=12, min_ratio=0.1)
    assert float(sched(tf.constant(step, tf.int64))) == pytest.approx(want, rel=1e-6)
    cfg = TrainerConfig(lr=2e-3, warmup_steps=4, steps=12, min_lr_ratio=0.1)
    assert lr_at(cfg, step) == pytest.approx(2e-3 * want, rel=1e-12)


def test_schedule_without_warmup_starts_at_peak():
    sched = WarmupCosine(peak=3e-4, warmup=0, total=10, min_ratio=0.0)
    assert float(sched(0)) == pytest.approx(3e-4)
    assert float(sched(5)) == pytest.approx(1.5e-4)
    assert float(sched(10)) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(TrainerConfig(lr=3e-4, warmup_steps=0, steps=10, min_lr_ratio=0.0), 5) == pytest.approx(1.5e-4)


def _torch_adamw(params, grads_per_step, lrs, *, b1, b2, eps, wd, decayed):
    """torch.optim.AdamW's update, written out: decoupled decay then bias-corrected Adam."""
    params = [p.astype(np.float64).copy() for p in params]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    for t, (grads, lr) in enumerate(zip(grads_per_step, lrs, strict=True), start=1):
        for i, g in enumerate(grads):
            if decayed[i]:
                params[i] *= 1 - lr * wd
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            m_hat, v_hat = m[i] / (1 - b1 ** t), v[i] / (1 - b2 ** t)
            params[i] -= lr * m_hat / (np.sqrt(v_hat) + eps)
    return params


@pytest.mark.parametrize("path", PATHS)
def test_adamw_matches_pytorch_formula_and_skips_rank1_decay(path):
    """Two steps under warmup (lr 0.05 then 0.1) with weight decay 0.1: a decay of lr·wd·w per
    step (1%) is far above the tolerance, so decaying the rank-1 variable, coupling the decay into
    the gradient (Adam-L2) or using the wrong step's lr would all fail.

    Keras puts eps outside the bias correction of v (eps-hat); with gradients of order 0.1-1 that
    differs from torch by ~1e-8 relative, below the tolerance.
    """
    rng = np.random.default_rng(0)
    w0 = [rng.normal(size=(3, 2)).astype(np.float32), rng.normal(size=(4,)).astype(np.float32)]
    grads = [[rng.normal(size=p.shape).astype(np.float32) for p in w0] for _ in range(2)]
    cfg = TrainerConfig(lr=0.1, warmup_steps=2, steps=10, weight_decay=0.1, beta1=0.9, beta2=0.95,
                        eps=1e-8, min_lr_ratio=0.1)
    variables = [tf.Variable(w) for w in w0]
    opt = build_optimizer(cfg, variables)
    with _path(path):
        for g in grads:
            opt.apply_gradients(zip([tf.constant(x) for x in g], variables, strict=True))
    want = _torch_adamw(w0, grads, [0.05, 0.1], b1=0.9, b2=0.95, eps=1e-8, wd=0.1, decayed=[True, False])
    for var, ref in zip(variables, want, strict=True):
        np.testing.assert_allclose(var.numpy(), ref, rtol=1e-5, atol=1e-6)
    assert int(opt.iterations.numpy()) == 2


@pytest.mark.parametrize("path", PATHS)
def test_fused_update_equals_keras_adamw(path):
    """Either fused update (SeeklineApplyAdamW, or ResourceApplyAdam after Keras' decay) is Keras'
    own AdamW update up to fp32 rounding (three steps with decay, one variable per rank)."""
    import keras

    rng = np.random.default_rng(1)
    w0 = [rng.normal(size=(5, 3)).astype(np.float32), rng.normal(size=(3,)).astype(np.float32)]
    grads = [[rng.normal(size=p.shape).astype(np.float32) for p in w0] for _ in range(3)]
    cfg = TrainerConfig(lr=0.05, warmup_steps=0, steps=10, weight_decay=0.1, beta1=0.9, beta2=0.95, eps=1e-8)
    ours, stock = [tf.Variable(w) for w in w0], [tf.Variable(w) for w in w0]
    opt = build_optimizer(cfg, ours)
    ref = keras.optimizers.AdamW(learning_rate=opt._learning_rate, weight_decay=0.1, beta_1=0.9, beta_2=0.95,
                                 epsilon=1e-8)
    ref.exclude_from_weight_decay(var_list=[stock[1]])
    for g in grads:
        with _path(path):
            opt.apply_gradients(zip([tf.constant(x) for x in g], ours, strict=True))
        ref.apply_gradients(zip([tf.constant(x) for x in g], stock, strict=True))
    for a, b in zip(ours, stock, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)
        assert not np.array_equal(a.numpy(), w0[0] if a.shape == w0[0].shape else w0[1])


@pytest.mark.parametrize("path", PATHS)
def test_update_is_one_fused_kernel_per_variable(path):
    cfg = TrainerConfig(lr=0.05, warmup_steps=0, steps=10, weight_decay=0.1)
    variables = [tf.Variable(tf.ones([4, 3])), tf.Variable(tf.ones([3]))]
    opt = build_optimizer(cfg, variables)

    @tf.function
    def step():
        opt.apply_scaled([tf.ones([4, 3]), tf.ones([3])], variables, tf.constant(0.5))

    with _path(path):
        graph_ops = step.get_concrete_function().graph.get_operations()
    ops_ = [op.type for op in graph_ops]
    if path == "fused_op":   # clip scale and decay inside the kernel: no per-variable Mul / AssignSub
        assert ops_.count("SeeklineApplyAdamW") == 2 and "ResourceApplyAdam" not in ops_, sorted(set(ops_))
        assert "AssignSubVariableOp" not in ops_, sorted(set(ops_))
        kernels = [op for op in graph_ops if op.type == "SeeklineApplyAdamW"]
        assert all(op.inputs[3].op.type == "Const" for op in kernels)   # the raw gradient goes in
    else:
        assert ops_.count("ResourceApplyAdam") == 2, sorted(set(ops_))


@pytest.mark.parametrize("path", PATHS)
def test_apply_scaled_equals_clip_by_global_norm_then_keras_adamw(path):
    """The engine's clipping folded into the update: the same as tf.clip_by_global_norm followed by
    Keras' AdamW, for a norm above the limit (clipped) and below it (scale 1), over three steps."""
    import keras

    rng = np.random.default_rng(2)
    w0 = [rng.normal(size=(6, 4)).astype(np.float32), rng.normal(size=(4,)).astype(np.float32)]
    cfg = TrainerConfig(lr=0.05, warmup_steps=0, steps=10, weight_decay=0.1, beta1=0.9, beta2=0.95, eps=1e-8)
    ours, stock = [tf.Variable(w) for w in w0], [tf.Variable(w) for w in w0]
    opt = build_optimizer(cfg, ours)
    ref = keras.optimizers.AdamW(learning_rate=opt._learning_rate, weight_decay=0.1, beta_1=0.9, beta_2=0.95,
                                 epsilon=1e-8)
    ref.exclude_from_weight_decay(var_list=[stock[1]])
    for mag in (10.0, 0.01, 3.0):
        g = [tf.constant(rng.normal(size=p.shape).astype(np.float32) * mag) for p in w0]
        gnorm = tf.linalg.global_norm(g)
        scale = clip_scale(gnorm, 1.0)
        assert float(scale) == pytest.approx(min(1.0, 1.0 / float(gnorm)), rel=1e-6)
        with _path(path):
            opt.apply_scaled(g, ours, scale)
        clipped, _ = tf.clip_by_global_norm(g, 1.0, use_norm=gnorm)
        ref.apply_gradients(zip(clipped, stock, strict=True))
        for a, b in zip(ours, stock, strict=True):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)
    assert clip_scale(gnorm, 0.0) is None


@pytest.mark.skipif(not ops.available(), reason="custom ops not built (make ops)")
def test_fused_kernel_against_float64_formula_and_bad_shapes():
    """SeeklineApplyAdamW directly: odd sizes (vector tails, 8192-element work items) against the
    float64 formula, and a gradient of the wrong shape as a one-line InvalidArgument."""
    rng = np.random.default_rng(5)
    for n in (1, 17, 8191, 8192 + 33):
        w, m, v, g = (rng.normal(size=n).astype(np.float32) for _ in range(4))
        v = np.abs(v)
        alpha, decay, b1, b2, eps, gs = 0.01, 0.002, 0.9, 0.95, 1e-8, 0.7
        tw, tm, tv = tf.Variable(w), tf.Variable(m), tf.Variable(v)
        ops.library().seekline_apply_adam_w(tw.handle, tm.handle, tv.handle, g, alpha, decay, b1, b2, eps, gs)
        g64, w64 = gs * g.astype(np.float64), w.astype(np.float64) * (1 - decay)
        m64 = m + (g64 - m) * (1 - b1)
        v64 = v + (g64 * g64 - v) * (1 - b2)
        w64 = w64 - alpha * m64 / (np.sqrt(v64) + eps)
        np.testing.assert_allclose(tm.numpy(), m64, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(tv.numpy(), v64, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(tw.numpy(), w64, rtol=1e-6, atol=1e-7)
    tw = tf.Variable(np.zeros(4, np.float32))
    with pytest.raises(tf.errors.InvalidArgumentError, match="same shape"):
        ops.library().seekline_apply_adam_w(tw.handle, tw.handle, tw.handle, np.zeros(5, np.float32),
                                            0.1, 0.0, 0.9, 0.95, 1e-8, 1.0)
