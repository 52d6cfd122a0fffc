import numpy as np
import tensorflow as tf

from model.layers.moe import RouterOutput
from model.losses import causal_lm_loss, mtp_loss, sequence_aux_loss


def _ce(logits, label):
    z = logits - logits.max()
    return -(z[label] - np.log(np.exp(z).sum()))


def test_causal_lm_loss_formula():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 4, 7)).astype(np.float32)
    ids = rng.integers(0, 7, size=(2, 4))
    want = np.mean([_ce(logits[b, i], ids[b, i + 1]) for b in range(2) for i in range(3)])
    np.testing.assert_allclose(causal_lm_loss(tf.constant(logits), tf.constant(ids)).numpy(), want, rtol=1e-5)


def test_mtp_loss_formula_two_depths():
    rng = np.random.default_rng(1)
    t, v = 6, 5
    ids = rng.integers(0, v, size=(1, t))
    l1 = rng.normal(size=(1, t, v)).astype(np.float32)
    l2 = rng.normal(size=(1, t, v)).astype(np.float32)
    ce1 = np.mean([_ce(l1[0, i], ids[0, i + 2]) for i in range(t - 2)])   # depth 1 predicts t+2
    ce2 = np.mean([_ce(l2[0, i], ids[0, i + 3]) for i in range(t - 3)])   # depth 2 predicts t+3
    got = mtp_loss([tf.constant(l1), tf.constant(l2)], tf.constant(ids), weight=0.3).numpy()
    np.testing.assert_allclose(got, 0.3 / 2 * (ce1 + ce2), rtol=1e-5)


def test_mtp_loss_respects_mask():
    rng = np.random.default_rng(2)
    ids = rng.integers(0, 5, size=(1, 6))
    l1 = rng.normal(size=(1, 6, 5)).astype(np.float32)
    mask = np.array([[1, 1, 0, 1, 1, 1]])     # marks targets: t2 is not one, so i=0 drops
    want = np.mean([_ce(l1[0, i], ids[0, i + 2]) for i in range(1, 4)])
    got = mtp_loss([tf.constant(l1)], tf.constant(ids), tf.constant(mask), weight=1.0).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_sequence_aux_loss_formula():
    rng = np.random.default_rng(3)
    b, t, e, k, alpha = 2, 5, 6, 2, 1e-4
    s = rng.uniform(0.1, 0.9, size=(b * t, e)).astype(np.float32)
    idx = np.stack([rng.choice(e, k, replace=False) for _ in range(b * t)]).astype(np.int32)
    r = RouterOutput(tf.constant(s), tf.constant(idx), tf.constant(np.ones((b * t, k), np.float32)))
    losses = []
    for seq in range(b):
        rows = slice(seq * t, (seq + 1) * t)
        f = np.array([e / (k * t) * sum(i in idx[rows][j] for j in range(t)) for i in range(e)])
        sp = s[rows] / s[rows].sum(-1, keepdims=True)
        losses.append(alpha * (f * sp.mean(0)).sum())
    got = sequence_aux_loss(r, b, t, k, alpha).numpy()
    np.testing.assert_allclose(got, np.mean(losses), rtol=1e-5)
    # perfectly balanced uniform routing gives α (f_i = 1, P_i = 1/E)


def test_losses_skip_targets_across_documents_and_padding():
    """Row segments [1 1 1 2 2 0]: valid next-token pairs by hand (0->1, 1->2, 3->4);
    depth-1 MTP (i -> i+2): only 0->2."""
    rng = np.random.default_rng(4)
    ids = rng.integers(0, 7, size=(1, 6))
    seg = np.array([[1, 1, 1, 2, 2, 0]])
    logits = rng.normal(size=(1, 6, 7)).astype(np.float32)
    want = np.mean([_ce(logits[0, i], ids[0, j]) for i, j in ((0, 1), (1, 2), (3, 4))])
    got = causal_lm_loss(tf.constant(logits), tf.constant(ids), segment_ids=tf.constant(seg)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5)
    got = mtp_loss([tf.constant(logits)], tf.constant(ids), weight=1.0, segment_ids=tf.constant(seg)).numpy()
    np.testing.assert_allclose(got, _ce(logits[0, 0], ids[0, 2]), rtol=1e-5)
    # segment_ids and loss_mask combine; the mask marks targets: unmarking token 1 drops only
    # 0->1 (1->2 still trains), unmarking token 4 drops 3->4
    mask = np.array([[1, 0, 1, 1, 0, 1]])
    got = causal_lm_loss(tf.constant(logits), tf.constant(ids), tf.constant(mask), tf.constant(seg)).numpy()
    np.testing.assert_allclose(got, _ce(logits[0, 1], ids[0, 2]), rtol=1e-5)
    # MTP depth 1: 0->2 needs token 2 marked
    got = mtp_loss([tf.constant(logits)], tf.constant(ids), tf.constant(mask), weight=1.0,
                   segment_ids=tf.constant(seg)).numpy()
    np.testing.assert_allclose(got, _ce(logits[0, 0], ids[0, 2]), rtol=1e-5)
    mask2 = np.array([[1, 1, 0, 1, 1, 1]])
    got = mtp_loss([tf.constant(logits)], tf.constant(ids), tf.constant(mask2), weight=1.0,
                   segment_ids=tf.constant(seg)).numpy()
    assert got == 0.0


def test_sequence_aux_loss_per_document():
    """With segment_ids each (row, segment) is a sequence; padding (0) counts nowhere."""
    rng = np.random.default_rng(5)
    b, t, e, k, alpha = 2, 6, 5, 2, 1e-2
    seg = np.array([[1, 1, 1, 2, 2, 0],
                    [1, 1, 1, 1, 1, 1]])
    s = rng.uniform(0.1, 0.9, size=(b * t, e)).astype(np.float32)
    idx = np.stack([rng.choice(e, k, replace=False) for _ in range(b * t)]).astype(np.int32)
    r = RouterOutput(tf.constant(s), tf.constant(idx), tf.constant(np.ones((b * t, k), np.float32)))

    def one(rows):   # eq. 17-20 over the given flat token rows
        n = len(rows)
        f = np.array([e / (k * n) * sum(i in idx[j] for j in rows) for i in range(e)])
        sp = s[rows] / s[rows].sum(-1, keepdims=True)
        return alpha * (f * sp.mean(0)).sum()

    docs = [[0, 1, 2], [3, 4], list(range(6, 12))]    # flat rows of the three documents
    got = sequence_aux_loss(r, b, t, k, alpha, segment_ids=tf.constant(seg)).numpy()
    np.testing.assert_allclose(got, np.mean([one(d) for d in docs]), rtol=1e-5)
    # per row with padding masked: row 0 = its five real tokens as one sequence
    got = sequence_aux_loss(r, b, t, k, alpha, token_mask=tf.constant(seg != 0)).numpy()
    np.testing.assert_allclose(got, np.mean([one([0, 1, 2, 3, 4]), one(list(range(6, 12)))]), rtol=1e-5)
