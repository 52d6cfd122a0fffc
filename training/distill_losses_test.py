"""Distillation losses against numpy formulas (probability space, written out here) and hand
values on V = 3 / 4."""
import math

import numpy as np
import pytest
import tensorflow as tf

from model.losses import shift_targets
from training import distill_losses as dl


# ------------------------------------------------------------------ numpy references
def np_softmax(z, t=1.0):
    z = np.asarray(z, np.float64) / t
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_kl(p, q):
    """Σ p log(p/q) over the last axis, 0 log 0 = 0."""
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(p > 0, p * np.log(p / q), 0.0)
    return t.sum(-1)


def np_jsd(ps, pt, beta):
    m = (1 - beta) * ps + beta * pt                       # the mixture in probability space
    return beta * np_kl(pt, m) + (1 - beta) * np_kl(ps, m)


def np_mean(per_pos, valid):
    return float((per_pos * valid).sum() / max(valid.sum(), 1.0))


def np_ce(s, labels, valid):
    p = np_softmax(s)
    nll = -np.log(np.take_along_axis(p, labels[..., None], -1)[..., 0])
    return np_mean(nll, valid)


def np_topk(teacher_logits, k, t=1.0):
    """Teacher top-k ids and their log-probs at temperature t (log-softmax over all of V first)."""
    lp = np.log(np_softmax(teacher_logits, t))
    ids = np.argsort(-lp, axis=-1, kind="stable")[..., :k]
    return ids, np.take_along_axis(lp, ids, -1)


def np_buckets(s, ids, lp_t, t=1.0):
    """(p_S, p_T) on the k ids + tail, written as plain sums of probabilities."""
    ps = np_softmax(s, t)
    s_top = np.take_along_axis(ps, ids, -1)
    t_top = np.exp(lp_t)
    s_b = np.concatenate([s_top, 1 - s_top.sum(-1, keepdims=True)], -1)
    t_b = np.concatenate([t_top, np.maximum(1 - t_top.sum(-1, keepdims=True), 0)], -1)
    return s_b, t_b


def rand_case(seed, b=2, t=5, v=4, scale=2.0):
    rng = np.random.default_rng(seed)
    s = rng.normal(size=(b, t, v)) * scale
    te = rng.normal(size=(b, t, v)) * scale
    labels = rng.integers(0, v, size=(b, t))
    valid = (rng.random((b, t)) > 0.3).astype(np.float64)
    valid[0, 0] = 1.0
    return s.astype(np.float32), te.astype(np.float32), labels, valid.astype(np.float32)


def f(x):
    return float(x.numpy())


# ------------------------------------------------------------------ hand values
P_T = np.array([0.5, 0.25, 0.25])
P_S = np.array([1 / 3, 1 / 3, 1 / 3])
LOGITS_T = np.log(P_T)[None, None].astype(np.float32)
LOGITS_S = np.log(P_S)[None, None].astype(np.float32)
ONE = np.ones((1, 1), np.float32)


def test_kl_hand_values():
    # KL(p_T‖p_S) = .5 ln 1.5 + 2·.25 ln .75 = .5 ln 1.125; KL(p_S‖p_T) = 1/3 ln(2/3·16/9 ... )
    fwd = 0.5 * math.log(1.125)
    rev = (1 / 3) * (math.log((1 / 3) / 0.5) + 2 * math.log((1 / 3) / 0.25))
    assert f(dl.forward_kl(LOGITS_S, LOGITS_T, ONE)) == pytest.approx(fwd, abs=1e-6)
    assert f(dl.reverse_kl(LOGITS_S, LOGITS_T, ONE)) == pytest.approx(rev, abs=1e-6)
    assert f(dl.forward_kl(LOGITS_T, LOGITS_T, ONE)) == pytest.approx(0.0, abs=1e-7)


def test_ce_hand_value():
    # −log p_S(label) = ln 3 for a uniform student; −log 0.25 for the teacher's distribution.
    assert f(dl.ce_loss(LOGITS_S, np.array([[2]]), ONE)) == pytest.approx(math.log(3), abs=1e-6)
    assert f(dl.ce_loss(LOGITS_T, np.array([[1]]), ONE)) == pytest.approx(math.log(4), abs=1e-6)


def test_jsd_half_is_the_js_divergence_by_hand():
    # β = ½: M = (p_S + p_T)/2 = (5/12, 7/24, 7/24); JSD = ½ KL(p_T‖M) + ½ KL(p_S‖M).
    m = np.array([5 / 12, 7 / 24, 7 / 24])
    kl_t = 0.5 * math.log(0.5 / m[0]) + 2 * 0.25 * math.log(0.25 / m[1])
    kl_s = (1 / 3) * (math.log((1 / 3) / m[0]) + 2 * math.log((1 / 3) / m[1]))
    got = f(dl.generalized_jsd(LOGITS_S, LOGITS_T, ONE, beta=0.5))
    assert got == pytest.approx(0.5 * kl_t + 0.5 * kl_s, abs=1e-6)


def test_kd_temperature_squared_and_alpha_by_hand():
    # τ = 2 on logits 2·log p: softmax(logits/2) = p, so the soft KL is the hand value above.
    fwd = 0.5 * math.log(1.125)
    s2, t2 = 2 * LOGITS_S, 2 * LOGITS_T
    label = np.array([[0]])
    ce = -math.log(np_softmax(s2[0, 0])[0])
    assert f(dl.kd_loss(s2, t2, label, ONE, temperature=2.0, alpha=1.0)) == pytest.approx(4 * fwd, abs=1e-6)
    assert f(dl.kd_loss(s2, t2, label, ONE, temperature=2.0, alpha=0.0)) == pytest.approx(ce, abs=1e-6)
    assert f(dl.kd_loss(s2, t2, label, ONE, temperature=2.0, alpha=0.25)) == \
        pytest.approx(0.25 * 4 * fwd + 0.75 * ce, abs=1e-6)


# ------------------------------------------------------------------ numpy formulas, masks
@pytest.mark.parametrize("temp", [1.0, 0.7, 3.0])
def test_full_losses_match_numpy_with_mask(temp):
    s, te, labels, valid = rand_case(1, v=4)
    ps, pt = np_softmax(s, temp), np_softmax(te, temp)
    assert f(dl.forward_kl(s, te, valid, temp)) == pytest.approx(np_mean(np_kl(pt, ps), valid), abs=1e-5)
    assert f(dl.reverse_kl(s, te, valid, temp)) == pytest.approx(np_mean(np_kl(ps, pt), valid), abs=1e-5)
    for beta in (0.1, 0.5, 0.9):
        assert f(dl.generalized_jsd(s, te, valid, beta, temp)) == \
            pytest.approx(np_mean(np_jsd(ps, pt, beta), valid), abs=1e-5)
    kd = temp ** 2 * np_mean(np_kl(pt, ps), valid)
    ce = np_ce(s, labels, valid)
    assert f(dl.ce_loss(s, labels, valid)) == pytest.approx(ce, abs=1e-5)
    assert f(dl.kd_loss(s, te, labels, valid, temperature=temp, alpha=0.6)) == \
        pytest.approx(0.6 * kd + 0.4 * ce, abs=1e-5)


def test_masked_positions_do_not_count():
    s, te, labels, valid = rand_case(2, v=3)
    s2, te2 = s.copy(), te.copy()
    off = valid == 0
    s2[off] = 50.0 * np.random.default_rng(0).normal(size=s2[off].shape)  # garbage where masked
    for fn in (dl.forward_kl, dl.reverse_kl):
        assert f(fn(s, te, valid)) == pytest.approx(f(fn(s2, te2, valid)), abs=1e-6)
    assert f(dl.ce_loss(s, labels, valid)) == pytest.approx(f(dl.ce_loss(s2, labels, valid)), abs=1e-6)


def test_shift_targets_mask_on_packed_rows():
    # Two documents + padding; loss_mask marks targets 2..4 of doc 1 and all of doc 2.
    ids = np.array([[5, 6, 7, 8, 9, 10, 11, 0]])
    seg = np.array([[1, 1, 1, 1, 1, 2, 2, 0]])
    lm = np.array([[0, 0, 1, 1, 1, 1, 1, 0]])
    _, valid = shift_targets(ids, lm, 1, seg)
    # position i counts when target i+1 is marked and in i's own document: 1, 2, 3, 5
    want = np.array([[0, 1, 1, 1, 0, 1, 0, 0]], np.float32)
    np.testing.assert_array_equal(valid.numpy(), want)
    s, te, _, _ = rand_case(3, b=1, t=8, v=4)
    got = f(dl.forward_kl(s, te, valid))
    ref = np.mean([np_kl(np_softmax(te[0, i]), np_softmax(s[0, i])) for i in (1, 2, 3, 5)])
    assert got == pytest.approx(ref, abs=1e-5)


def test_jsd_endpoints_are_the_kls_and_the_formula_approaches_them():
    s, te, _, valid = rand_case(4, v=4)
    fwd, rev = f(dl.forward_kl(s, te, valid)), f(dl.reverse_kl(s, te, valid))
    assert f(dl.generalized_jsd(s, te, valid, 0.0)) == pytest.approx(fwd, abs=1e-7)
    assert f(dl.generalized_jsd(s, te, valid, 1.0)) == pytest.approx(rev, abs=1e-7)
    # Interior β: JSD_β/β → forward KL (β → 0) and JSD_β/(1−β) → reverse KL (β → 1).
    ps, pt = np_softmax(s), np_softmax(te)
    for b in (1e-2, 1e-3):
        got = f(dl.generalized_jsd(s, te, valid, b))
        assert got == pytest.approx(np_mean(np_jsd(ps, pt, b), valid), rel=1e-3)
        assert got / b == pytest.approx(fwd, rel=3 * b * 10)
        got1 = f(dl.generalized_jsd(s, te, valid, 1 - b))
        assert got1 / b == pytest.approx(rev, rel=3 * b * 10)
    with pytest.raises(ValueError):
        dl.generalized_jsd(s, te, valid, 1.5)


# ------------------------------------------------------------------ top-k buckets
def test_topk_buckets_by_hand():
    # V = 4, k = 2: teacher p = (.4, .3, .2, .1) -> buckets (.4, .3 | .3); student uniform on the
    # same ids (.25, .25 | .5).
    pt = np.array([0.4, 0.3, 0.2, 0.1])
    ids = np.array([[[0, 1]]])
    lp = np.log(pt[:2])[None, None].astype(np.float32)
    s = np.zeros((1, 1, 4), np.float32)
    lp_s, lp_t = dl.topk_buckets(s, ids, lp)
    np.testing.assert_allclose(np.exp(lp_s.numpy())[0, 0], [0.25, 0.25, 0.5], atol=1e-6)
    np.testing.assert_allclose(np.exp(lp_t.numpy())[0, 0], [0.4, 0.3, 0.3], atol=1e-6)
    kl = 0.4 * math.log(0.4 / 0.25) + 0.3 * math.log(0.3 / 0.25) + 0.3 * math.log(0.3 / 0.5)
    assert f(dl.topk_forward_kl(s, ids, lp, ONE)) == pytest.approx(kl, abs=1e-6)


@pytest.mark.parametrize("temp", [1.0, 2.0])
def test_topk_with_k_equal_v_is_the_full_loss(temp):
    s, te, labels, valid = rand_case(5, v=4)
    ids, lp = np_topk(te, 4, temp)
    lp = lp.astype(np.float32)
    pairs = [
        (dl.topk_forward_kl(s, ids, lp, valid, temp), dl.forward_kl(s, te, valid, temp)),
        (dl.topk_reverse_kl(s, ids, lp, valid, temp), dl.reverse_kl(s, te, valid, temp)),
        (dl.topk_generalized_jsd(s, ids, lp, valid, 0.3, temp), dl.generalized_jsd(s, te, valid, 0.3, temp)),
        (dl.topk_kd_loss(s, ids, lp, labels, valid, temperature=temp, alpha=0.5),
         dl.kd_loss(s, te, labels, valid, temperature=temp, alpha=0.5)),
    ]
    for got, want in pairs:
        assert f(got) == pytest.approx(f(want), abs=2e-5)


def test_topk_matches_numpy_buckets_and_is_a_lower_bound():
    for seed in range(6):
        s, te, _, valid = rand_case(10 + seed, b=3, t=4, v=6, scale=3.0)
        for k in (1, 2, 3, 5):
            ids, lp64 = np_topk(te, k)
            lp = lp64.astype(np.float32)                     # what the loss is given
            sb, tb = np_buckets(s, ids, lp.astype(np.float64))
            sb_x, tb_x = np_buckets(s, ids, lp64)            # exact buckets, for the bound
            ps, pt = np_softmax(s), np_softmax(te)
            cases = [
                (dl.topk_forward_kl(s, ids, lp, valid), np_kl(tb, sb), np_kl(tb_x, sb_x), np_kl(pt, ps)),
                (dl.topk_reverse_kl(s, ids, lp, valid), np_kl(sb, tb), np_kl(sb_x, tb_x), np_kl(ps, pt)),
                (dl.topk_generalized_jsd(s, ids, lp, valid, 0.5), np_jsd(sb, tb, 0.5),
                 np_jsd(sb_x, tb_x, 0.5), np_jsd(ps, pt, 0.5)),
            ]
            for got, bucket_ref, exact_bucket, full_ref in cases:
                assert f(got) == pytest.approx(np_mean(bucket_ref, valid), rel=2e-5, abs=2e-5)
                # data-processing inequality, position by position, and for the loss itself
                assert np.all(exact_bucket <= full_ref + 1e-9)
                assert f(got) <= np_mean(full_ref, valid) + 1e-4


def test_topk_gradient_is_finite_and_matches_full_at_k_equal_v():
    s, te, _, valid = rand_case(6, v=4)
    ids, lp = np_topk(te, 4)
    sv = tf.Variable(s)
    with tf.GradientTape(persistent=True) as tape:
        a = dl.topk_forward_kl(sv, ids, lp.astype(np.float32), valid)
        b = dl.forward_kl(sv, te, valid)
        c = dl.topk_reverse_kl(sv, ids, lp.astype(np.float32), valid)
    ga, gb, gc = tape.gradient(a, sv), tape.gradient(b, sv), tape.gradient(c, sv)
    assert np.all(np.isfinite(ga.numpy())) and np.all(np.isfinite(gc.numpy()))
    np.testing.assert_allclose(ga.numpy(), gb.numpy(), atol=1e-5)


def test_teacher_tail_is_clamped_at_zero():
    # Log-probs whose exps sum past 1 (rounding): the teacher tail is the floor, not negative.
    lp = np.log(np.array([[[0.6, 0.40001]]])).astype(np.float32)
    ids = np.array([[[0, 1]]])
    s = np.log(np.array([[[0.5, 0.3, 0.2]]])).astype(np.float32)
    _, lp_t = dl.topk_buckets(s, ids, lp)
    assert np.exp(lp_t.numpy()[0, 0, -1]) == pytest.approx(dl.TAIL_FLOOR, rel=1e-3)
    assert np.isfinite(f(dl.topk_reverse_kl(s, ids, lp, ONE)))
