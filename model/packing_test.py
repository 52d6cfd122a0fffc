"""Packed rows (components/pack format: segment_ids 1..n per document, 0 on padding) train exactly
like the documents run one by one: same logits, same loss, no gradient across documents.

References are independent of the packed path: each document's own forward (no segment_ids) and
numpy cross-entropy over those per-document logits.
"""
import numpy as np
import pytest
import tensorflow as tf

from model.decoder import build_model
from model.losses import causal_lm_loss, mtp_loss

LENS = (7, 5, 9)      # three documents of different lengths
PAD = 3               # + padding at the end of the row
T = sum(LENS) + PAD


def _docs(seed=0):
    """Documents over disjoint vocab ranges (doc d uses ids 60·d+10 ..), so each embedding row
    belongs to exactly one document (the gradient test reads per-row embedding gradients)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(60 * d + 10, 60 * d + 70, size=n).astype(np.int32) for d, n in enumerate(LENS)]


def _pack(docs, pad_id=0):
    """One row as components/pack writes it: ids, segment ids (1..n, 0 pad), per-doc positions."""
    ids = np.concatenate(docs + [np.full(PAD, pad_id, np.int32)])
    seg = np.concatenate([np.full(len(d), k + 1, np.int32) for k, d in enumerate(docs)] + [np.zeros(PAD, np.int32)])
    pos = np.concatenate([np.arange(len(d), dtype=np.int32) for d in docs] + [np.zeros(PAD, np.int32)])
    return ids[None], seg[None], pos[None]                                  # (1, T) each


def _spans():
    starts = np.cumsum((0,) + LENS[:-1])
    return [slice(int(s), int(s) + n) for s, n in zip(starts, LENS, strict=True)]


def _ce_np(logits, labels):
    """Per-position CE in float64 numpy: logits (N, V), labels (N,) -> (N,)."""
    z = logits.astype(np.float64)
    z = z - z.max(-1, keepdims=True)
    return np.log(np.exp(z).sum(-1)) - z[np.arange(len(labels)), labels]


@pytest.mark.parametrize("preset", ["tiny", "tiny-qwen2"])
def test_packed_logits_equal_each_document_alone(preset):
    m = build_model(preset, seed=0)
    docs = _docs()
    ids, seg, pos = _pack(docs)
    with_mtp = bool(m.mtp)
    packed = m.forward(ids, segment_ids=seg, with_mtp=with_mtp)
    # explicit positions as the packer writes them == the default derived from segment_ids
    explicit = m.forward(ids, segment_ids=seg, position_ids=pos)["logits"].numpy()
    np.testing.assert_allclose(explicit, packed["logits"].numpy(), atol=1e-6)
    # the eager inference path (cached tf.function) threads segment_ids too
    np.testing.assert_allclose(m(ids, segment_ids=seg).numpy(), packed["logits"].numpy(), atol=1e-5)
    for doc, span in zip(docs, _spans(), strict=True):
        alone = m.forward(doc[None], with_mtp=with_mtp)
        np.testing.assert_allclose(packed["logits"].numpy()[0, span], alone["logits"].numpy()[0],
                                   atol=1e-5, rtol=1e-4)
        if with_mtp:
            # depth 1 at position i predicts t_{i+2}: compare where that target is in the document
            # (the last position sees Emb of the next document's first token when packed, of id 0
            # alone; the loss masks it either way)
            n_ok = len(doc) - 2
            np.testing.assert_allclose(packed["mtp_logits"][0].numpy()[0, span][:n_ok],
                                       alone["mtp_logits"][0].numpy()[0, :n_ok], atol=1e-5, rtol=1e-4)
    # the mask must matter: without segment_ids document 2 sees document 1 and its logits change
    unpacked = m.forward(ids)["logits"].numpy()[0, _spans()[1]]
    assert np.abs(unpacked - packed["logits"].numpy()[0, _spans()[1]]).max() > 1e-3


def test_packed_row_next_to_other_rows_in_a_batch():
    """Row 0 packed, row 1 a single document + padding: segment handling is per row."""
    m = build_model("tiny", seed=0)
    docs = _docs(1)
    ids0, seg0, _ = _pack(docs)
    single = np.random.default_rng(5).integers(2, 256, size=T - 4).astype(np.int32)
    ids1 = np.concatenate([single, np.zeros(4, np.int32)])[None]
    seg1 = np.concatenate([np.ones(T - 4, np.int32), np.zeros(4, np.int32)])[None]
    out = m.forward(np.concatenate([ids0, ids1]), segment_ids=np.concatenate([seg0, seg1]))["logits"].numpy()
    for doc, span in zip(docs, _spans(), strict=True):
        np.testing.assert_allclose(out[0, span], m.forward(doc[None])["logits"].numpy()[0], atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(out[1, :T - 4], m.forward(single[None])["logits"].numpy()[0], atol=1e-5, rtol=1e-4)


def test_packed_loss_is_token_weighted_mean_of_per_document_losses():
    m = build_model("tiny", seed=0)
    docs = _docs(2)
    ids, seg, _ = _pack(docs)
    packed = m.forward(ids, segment_ids=seg, with_mtp=True)
    ce_sum, n = 0.0, 0
    mtp_sum, n_mtp = 0.0, 0
    for doc in docs:
        alone = m.forward(doc[None], with_mtp=True)
        lg = alone["logits"].numpy()[0]
        ce_sum += _ce_np(lg[:-1], doc[1:]).sum()                           # position i -> t_{i+1}
        n += len(doc) - 1
        ml = alone["mtp_logits"][0].numpy()[0]
        mtp_sum += _ce_np(ml[:-2], doc[2:]).sum()                          # depth 1: i -> t_{i+2}
        n_mtp += len(doc) - 2
    got = causal_lm_loss(packed["logits"], ids, segment_ids=seg).numpy()
    np.testing.assert_allclose(got, ce_sum / n, rtol=1e-5)
    got_mtp = mtp_loss(packed["mtp_logits"], ids, weight=1.0, segment_ids=seg).numpy()
    np.testing.assert_allclose(got_mtp, mtp_sum / n_mtp, rtol=1e-5)
    # without segment_ids the boundary targets (and padding) are trained on: a different number
    assert abs(causal_lm_loss(packed["logits"], ids).numpy() - ce_sum / n) > 1e-3


@pytest.mark.parametrize("preset", ["tiny", "tiny-qwen2"])
def test_all_padding_row_is_finite(preset):
    m = build_model(preset, seed=0)
    ids = np.zeros((2, 8), np.int32)
    seg = np.zeros((2, 8), np.int32)
    ids[1, :5], seg[1, :5] = np.arange(3, 8), 1                             # row 1: one doc + padding
    emb = m.embed_tokens.weight
    with tf.GradientTape() as tape:
        out = m.forward(ids, segment_ids=seg, training=True, with_mtp=bool(m.mtp))
        loss = causal_lm_loss(out["logits"], ids, segment_ids=seg)
        if m.mtp:
            loss += mtp_loss(out["mtp_logits"], ids, segment_ids=seg)
    assert np.isfinite(out["logits"].numpy()).all()
    for lg in out.get("mtp_logits", []):
        assert np.isfinite(lg.numpy()).all()
    assert np.isfinite(loss.numpy())
    g = tape.gradient(loss, emb)
    g = tf.convert_to_tensor(g).numpy()
    assert np.isfinite(g).all()
    # a batch of nothing but padding: no target at all, loss 0 (not 0/0)
    pad_only = np.zeros((1, 8), np.int32)
    out = m.forward(pad_only, segment_ids=pad_only)
    assert np.isfinite(out["logits"].numpy()).all()
    assert causal_lm_loss(out["logits"], pad_only, segment_ids=pad_only).numpy() == 0.0


@pytest.mark.parametrize("preset", ["tiny", "tiny-qwen2"])
def test_no_gradient_across_documents(preset):
    """d(outputs of doc 2)/d(embeddings of doc 1's and doc 3's tokens) == 0 exactly.

    Documents use disjoint vocab ranges, so the embedding-table rows of doc d's ids receive
    gradient only through doc d's tokens. The target is the final hidden state (before the
    head: with tied embeddings the head itself reads every row) plus, with MTP, the MTP hidden
    output of the positions whose MTP input is still inside doc 2.
    """
    m = build_model(preset, seed=0)
    docs = _docs(3)
    ids, seg, _ = _pack(docs)
    spans = _spans()
    w = tf.constant(np.random.default_rng(0).normal(size=(1, T, m.cfg.hidden_size)), tf.float32)
    with tf.GradientTape() as tape:
        out = m.forward(ids, segment_ids=seg, training=True, with_mtp=bool(m.mtp))
        y = tf.reduce_sum(out["hidden"][:, spans[1]] * w[:, spans[1]])
        if m.mtp and m.lm_head is not None:
            # untied head: the MTP logits reach the table only through the MTP input embeddings
            mtp = out["mtp_logits"][0][:, spans[1].start:spans[1].stop - 1]  # Emb(t_{i+1}) in doc 2
            y += tf.reduce_sum(mtp)
    g = tf.convert_to_tensor(tape.gradient(y, m.embed_tokens.weight)).numpy()  # (V, D)
    rows = [np.unique(d) for d in docs]
    assert np.abs(g[rows[0]]).max() == 0.0
    assert np.abs(g[rows[2]]).max() == 0.0
    assert np.abs(g[rows[1]]).max() > 0.0                                   # the test can fail


def test_default_positions_restart_per_document():
    """RoPE scores depend only on offsets, so logits alone cannot see the positions forward
    picks: record the position_ids handed to rope and compare with the packer's format."""
    m = build_model("tiny-qwen2", seed=0)
    ids, seg, pos = _pack(_docs())
    seen = []
    rope = m.rope
    m.rope = lambda p: (seen.append(p.numpy()), rope(p))[1]
    try:
        m.forward(ids, segment_ids=seg)
        m.forward(ids)                                                      # no segments: 0..T-1
    finally:
        del m.rope
    np.testing.assert_array_equal(seen[0], pos)
    np.testing.assert_array_equal(seen[1], np.arange(T)[None])
