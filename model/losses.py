"""Training losses the trainer combines: next-token CE, MTP loss, sequence-wise balance loss.

They take the outputs of `DecoderLM.forward(...)` (logits, mtp_logits, router) explicitly —
nothing is hidden inside call() — so each phase decides what to add and with which weight.

Packed rows (components/pack, docs/data.md): pass the row's `segment_ids` (B, T) (1..n per
document, 0 on padding). The CE losses then drop every target that lies in another document or in
padding, and the balance loss is taken per document (see `sequence_aux_loss`).
"""
from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

from model.layers.moe import RouterOutput
from model.ops.softmax_xent import sparse_softmax_xent


def _masked_ce(logits, labels, mask):
    """Mean CE over positions where mask is 1. logits (B, T, V), labels/mask (B, T)."""
    ce = sparse_softmax_xent(logits, labels)                              # (B, T) fp32
    mask = tf.cast(mask, tf.float32)
    return tf.reduce_sum(ce * mask) / tf.maximum(tf.reduce_sum(mask), 1.0)


def shift_targets(token_ids, loss_mask, k, segment_ids=None):
    """Targets k positions ahead: labels[:, i] = t[i+k]; positions without a target are masked.

    loss_mask (B, T) marks the tokens that are loss *targets* (TRL's labels != -100): valid[:, i]
    requires loss_mask[i+k] == 1. SFT marks the assistant tokens, so the first assistant token
    is trained from the (unmarked) header before it.
    With segment_ids (B, T), the target must also be in the same, non-padding document:
    valid[:, i] requires segment_ids[i] == segment_ids[i+k] != 0.
    """
    token_ids = tf.convert_to_tensor(token_ids)
    b, t = tf.shape(token_ids)[0], tf.shape(token_ids)[1]
    labels = tf.concat([token_ids[:, k:], tf.zeros([b, k], token_ids.dtype)], axis=1)
    valid = tf.cast(tf.range(t) < t - k, tf.float32)[None, :] * tf.ones([b, 1])
    if loss_mask is not None:
        m = tf.cast(loss_mask, tf.float32)
        valid = valid * tf.concat([m[:, k:], tf.zeros([b, k])], axis=1)    # the target is marked
    if segment_ids is not None:
        seg = tf.cast(segment_ids, tf.int32)                                # (B, T)
        # -1 past the end never equals a real id; the range term above masks those anyway
        seg_ahead = tf.concat([seg[:, k:], tf.fill([b, k], -1)], axis=1)    # (B, T) seg of t[i+k]
        same_doc = tf.equal(seg, seg_ahead) & tf.not_equal(seg, 0)          # (B, T)
        valid = valid * tf.cast(same_doc, tf.float32)
    return labels, valid


def causal_lm_loss(logits, token_ids, loss_mask=None, segment_ids=None):
    """Next-token cross-entropy: logits[:, i] predicts token_ids[:, i+1].

    Mean over all valid targets of the batch (token-weighted), so on a packed row it equals
    Σ_docs CE-sum_doc / Σ_docs (len_doc − 1) — what the documents give when run separately.
    """
    labels, valid = shift_targets(token_ids, loss_mask, 1, segment_ids)
    return _masked_ce(logits, labels, valid)


def mtp_loss(mtp_logits: Sequence, token_ids, loss_mask=None, weight: float = 0.3,
             segment_ids=None):
    """L_MTP = λ/D · Σ_k CE_k, where depth k (1-based) at position i predicts t_{i+k+1}.

    λ (`weight`) is 0.3 early in V3 pre-training and 0.1 later; the schedule is the trainer's.
    With segment_ids, a target t_{i+k+1} counts only inside position i's own document.
    """
    if not mtp_logits:
        return tf.constant(0.0)
    total = 0.0
    for k, logits in enumerate(mtp_logits, start=1):
        labels, valid = shift_targets(token_ids, loss_mask, k + 1, segment_ids)
        total += _masked_ce(logits, labels, valid)
    return weight * total / len(mtp_logits)


def sequence_aux_loss(router: RouterOutput, batch: int, seq_len: int, top_k: int,
                      alpha: float = 1e-4, token_mask=None, segment_ids=None):
    """Complementary sequence-wise balance loss (V3 report eq. 17-20), mean over sequences.

    For each sequence: f_i = N_r / (K_r · T) · Σ_t 1[i ∈ TopK_t],  P_i = mean_t s'_{i,t} with
    s' = s / Σ_j s_j, and L = α · Σ_i f_i · P_i. `router` holds (B·T)-row tensors from one layer.

    What a "sequence" is: without segment_ids, one row of the batch — for packed data the whole
    packed row (several documents), over its tokens where token_mask (B, T) is 1 (pass
    segment_ids != 0 to drop padding); T is then the row's unmasked token count. With
    segment_ids (B, T), each document (a (row, segment id) pair, id != 0, also AND-ed with
    token_mask) is its own sequence and L is the mean over documents with at least one token.
    The V3 report trains on packed rows without cross-document masking, so its "sequence" is
    the row; we mask attention per document, and a balance term that asks each *document* not
    to collapse onto a few experts matches that. It is cheap: one unsorted_segment_sum over the
    B·T tokens, the same work as the per-row sums.
    """
    e = router.scores.shape[-1]
    s = tf.reshape(tf.cast(router.scores, tf.float32), [batch, seq_len, e])           # (B, T, E)
    s_norm = s / tf.reduce_sum(s, -1, keepdims=True)
    chosen = tf.reduce_sum(tf.one_hot(router.topk_idx, e, dtype=tf.float32), axis=-2)  # (N, E)
    chosen = tf.reshape(chosen, [batch, seq_len, e])
    if token_mask is None:
        m = tf.ones([batch, seq_len], tf.float32)
    else:
        m = tf.cast(token_mask, tf.float32)
    if segment_ids is not None:
        return alpha * _per_segment_balance(s_norm, chosen, m, segment_ids, e, top_k)
    n_tok = tf.maximum(tf.reduce_sum(m, axis=1, keepdims=True), 1.0)                  # (B, 1)
    f = e / top_k * tf.reduce_sum(chosen * m[..., None], axis=1) / n_tok              # (B, E)
    p = tf.reduce_sum(s_norm * m[..., None], axis=1) / n_tok                          # (B, E)
    return alpha * tf.reduce_mean(tf.reduce_sum(f * p, axis=-1))


def _per_segment_balance(s_norm, chosen, m, segment_ids, e: int, top_k: int):
    """Mean over documents of Σ_i f_i · P_i. s_norm/chosen (B, T, E), m (B, T) float mask."""
    seg = tf.cast(segment_ids, tf.int32)                                               # (B, T)
    m = m * tf.cast(tf.not_equal(seg, 0), tf.float32)                                  # padding out
    n_seg = tf.reduce_max(seg) + 1                                                     # ids 0..max
    b = tf.shape(seg)[0]
    # group g = row · n_seg + segment id: documents of different rows never share a group
    group = tf.reshape(tf.range(b)[:, None] * n_seg + seg, [-1])                      # (B·T,)
    n_groups = b * n_seg
    mf = tf.reshape(m, [-1, 1])                                                        # (B·T, 1)
    n_tok = tf.math.unsorted_segment_sum(mf, group, n_groups)                          # (G, 1)
    cnt = tf.math.unsorted_segment_sum(tf.reshape(chosen, [-1, e]) * mf, group, n_groups)  # (G, E)
    p_sum = tf.math.unsorted_segment_sum(tf.reshape(s_norm, [-1, e]) * mf, group, n_groups)  # (G, E)
    denom = tf.maximum(n_tok, 1.0)
    per_doc = tf.reduce_sum((e / top_k * cnt / denom) * (p_sum / denom), axis=-1)      # (G,)
    present = tf.cast(n_tok[:, 0] > 0, tf.float32)                                     # (G,) real docs
    return tf.reduce_sum(per_doc * present) / tf.maximum(tf.reduce_sum(present), 1.0)


def total_sequence_aux_loss(routers: Sequence[RouterOutput], batch: int, seq_len: int,
                            top_k: int, alpha: float = 1e-4, token_mask=None, segment_ids=None):
    """Sum of `sequence_aux_loss` over MoE layers (how the report applies it); token_mask and
    segment_ids as there (pass the packed row's segment_ids to balance per document)."""
    return tf.add_n([sequence_aux_loss(r, batch, seq_len, top_k, alpha, token_mask, segment_ids)
                     for r in routers]) if routers else tf.constant(0.0)
