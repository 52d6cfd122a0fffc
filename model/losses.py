"""Training losses the trainer combines: next-token CE, MTP loss, sequence-wise balance loss.

They take the outputs of `DecoderLM.forward(...)` (logits, mtp_logits, router) explicitly —
nothing is hidden inside call() — so each phase decides what to add and with which weight.
"""
from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

from model.layers.moe import RouterOutput


def _masked_ce(logits, labels, mask):
    """Mean CE over positions where mask is 1. logits (B, T, V), labels/mask (B, T)."""
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(labels, tf.int32),
                                                        logits=tf.cast(logits, tf.float32))
    mask = tf.cast(mask, tf.float32)
    return tf.reduce_sum(ce * mask) / tf.maximum(tf.reduce_sum(mask), 1.0)


def _shift(token_ids, loss_mask, k):
    """Targets k positions ahead: labels[:, i] = t[i+k]; positions without a target are masked."""
    b, t = tf.shape(token_ids)[0], tf.shape(token_ids)[1]
    labels = tf.concat([token_ids[:, k:], tf.zeros([b, k], token_ids.dtype)], axis=1)
    valid = tf.cast(tf.range(t) < t - k, tf.float32)[None, :] * tf.ones([b, 1])
    if loss_mask is not None:
        m = tf.cast(loss_mask, tf.float32)
        # both the input position and the target position must be real tokens
        valid = valid * m * tf.concat([m[:, k:], tf.zeros([b, k])], axis=1)
    return labels, valid


def causal_lm_loss(logits, token_ids, loss_mask=None):
    """Next-token cross-entropy: logits[:, i] predicts token_ids[:, i+1]."""
    labels, valid = _shift(token_ids, loss_mask, 1)
    return _masked_ce(logits, labels, valid)


def mtp_loss(mtp_logits: Sequence, token_ids, loss_mask=None, weight: float = 0.3):
    """L_MTP = λ/D · Σ_k CE_k, where depth k (1-based) at position i predicts t_{i+k+1}.

    λ (`weight`) is 0.3 early in V3 pre-training and 0.1 later; the schedule is the trainer's.
    """
    if not mtp_logits:
        return tf.constant(0.0)
    total = 0.0
    for k, logits in enumerate(mtp_logits, start=1):
        labels, valid = _shift(token_ids, loss_mask, k + 1)
        total += _masked_ce(logits, labels, valid)
    return weight * total / len(mtp_logits)


def sequence_aux_loss(router: RouterOutput, batch: int, seq_len: int, top_k: int,
                      alpha: float = 1e-4, token_mask=None):
    """Complementary sequence-wise balance loss (V3 report eq. 17-20), mean over sequences.

    For each sequence: f_i = N_r / (K_r · T) · Σ_t 1[i ∈ TopK_t],  P_i = mean_t s'_{i,t} with
    s' = s / Σ_j s_j, and L = α · Σ_i f_i · P_i. `router` holds (B·T)-row tensors from one layer.
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
    n_tok = tf.maximum(tf.reduce_sum(m, axis=1, keepdims=True), 1.0)                  # (B, 1)
    f = e / top_k * tf.reduce_sum(chosen * m[..., None], axis=1) / n_tok              # (B, E)
    p = tf.reduce_sum(s_norm * m[..., None], axis=1) / n_tok                          # (B, E)
    return alpha * tf.reduce_mean(tf.reduce_sum(f * p, axis=-1))


def total_sequence_aux_loss(routers: Sequence[RouterOutput], batch: int, seq_len: int,
                            top_k: int, alpha: float = 1e-4, token_mask=None):
    """Sum of `sequence_aux_loss` over MoE layers (how the report applies it)."""
    return tf.add_n([sequence_aux_loss(r, batch, seq_len, top_k, alpha, token_mask) for r in routers]) \
        if routers else tf.constant(0.0)
