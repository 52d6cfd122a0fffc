"""Distillation losses: hard-label CE, logit KD, forward / reverse KL, generalised JSD, and their
offline top-k (bucketed) versions.

Every loss takes per-position logits (B, T, V) and a validity mask `valid` (B, T) of *targets*,
the one `model.losses.shift_targets(ids, loss_mask, 1, segment_ids)` returns: student and
teacher logits at position i both predict token i+1, and position i counts only when that
target exists, is a marked loss target (SFT `loss_mask`) and lies in position i's own document.
Each loss is the mean over valid positions of a per-position term, in float32.

Conventions (p_T teacher, p_S student, both softmax(logits / τ) at temperature τ):
  forward KL   KL(p_T ‖ p_S) = Σ_v p_T (log p_T − log p_S)     (mode-covering)
  reverse KL   KL(p_S ‖ p_T) = Σ_v p_S (log p_S − log p_T)     (mode-seeking)
  KD           α · τ² · KL(p_T^τ ‖ p_S^τ) + (1 − α) · CE(hard labels, student at τ = 1);
               τ² keeps the soft-target gradients on the scale of the CE ones (Hinton et al.).
  JSD(β)       GKD's generalised JSD: M = (1−β) p_S + β p_T (its log is a logsumexp of the two
               log-probs, never a log of a sum of probabilities), JSD_β = β KL(p_T‖M) +
               (1−β) KL(p_S‖M). Taken literally this formula is 0 at both β = 0 and β = 1 (M
               becomes one of the two distributions and the other term has weight 0); it
               approaches the KLs only after rescaling: JSD_β / β → KL(p_T‖p_S) as β → 0 and
               JSD_β / (1−β) → KL(p_S‖p_T) as β → 1. Following the reference ("β = 0 → forward
               KL, β = 1 → reverse KL", as TRL's GKD trainer does) the endpoints are *defined*
               as those KLs: `generalized_jsd(β=0)` returns forward KL and `β=1` reverse KL.
               The value therefore jumps at the endpoints (0 < β ≪ 1 gives ≈ β·KL); it is a
               choice of objective, not a continuous family.

Top-k (offline teacher): the teacher is stored as its k most likely ids (B, T, K) with their
log-probs at temperature τ (log-softmax over the full vocabulary, then top-k). Both
distributions are collapsed onto k + 1 buckets: the k ids, and one tail bucket holding the rest
— for the teacher 1 − Σ exp(logprobs) (clamped at 0), for the student the softmax mass of every
id *not* among the k (a logsumexp over the complement, exact and free of the 1 − Σ cancellation).
Any divergence above is then taken over the buckets. With k = V the tail is empty and the
bucketed loss is the full-vocabulary loss. With k < V it is a lower bound of the full one:
bucketing is one deterministic map applied to both distributions, and the data-processing
inequality says no f-divergence (KL either way, and each KL term of JSD_β, whose mixture M
buckets into the mixture of the bucketed distributions) can grow under such a map.
Numerics: both tails get a floor of TAIL_FLOOR probability so that a tail which rounds to zero
on one side (float32 log-probs whose exps sum to 1 ± 1e-7) never meets log 0 on the other; this
shifts the losses by O(1e-6), well below what training can see.
"""
from __future__ import annotations

import math

import tensorflow as tf

from model.ops.softmax_xent import sparse_softmax_xent

# Probability floor of the top-k tail bucket on both sides (see the module docstring).
TAIL_FLOOR = 1e-10


# ------------------------------------------------------------------ per-position divergences
def _masked_mean(per_pos, valid):
    """Mean of per_pos (B, T) over positions where valid (B, T) is 1."""
    valid = tf.cast(valid, tf.float32)
    return tf.reduce_sum(per_pos * valid) / tf.maximum(tf.reduce_sum(valid), 1.0)


def _kl(logp, logq):
    """Σ_v p (log p − log q) over the last axis: (…, N) log-probs -> (…). Terms with p = 0 are 0
    (their log p may be −inf); the where keeps those terms' gradients at 0, not NaN."""
    p = tf.exp(logp)
    term = tf.where(p > 0, p * (logp - logq), tf.zeros_like(p))
    return tf.reduce_sum(term, axis=-1)


def _jsd(logp_s, logp_t, beta: float):
    """Generalised JSD per position from log-probs (…, N) -> (…); endpoints as the docstring."""
    if beta == 0.0:
        return _kl(logp_t, logp_s)
    if beta == 1.0:
        return _kl(logp_s, logp_t)
    # log M = logsumexp(log(1−β) + log p_S, log β + log p_T), elementwise over the two
    log_m = tf.reduce_logsumexp(tf.stack([logp_s + math.log(1.0 - beta), logp_t + math.log(beta)]), axis=0)
    return beta * _kl(logp_t, log_m) + (1.0 - beta) * _kl(logp_s, log_m)


def _check_beta(beta: float) -> None:
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"jsd beta must be in [0, 1], got {beta}")


def _log_softmax(logits, temperature: float):
    return tf.nn.log_softmax(tf.cast(logits, tf.float32) / temperature, axis=-1)    # (B, T, V)


# ------------------------------------------------------------------ full-vocabulary losses
def ce_loss(student_logits, labels, valid):
    """Hard-label cross-entropy: mean over valid positions of −log p_S(labels) (temperature 1)."""
    ce = sparse_softmax_xent(student_logits, labels)
    return _masked_mean(ce, valid)                                          # ce (B, T)


def forward_kl(student_logits, teacher_logits, valid, temperature: float = 1.0):
    """Mean over valid positions of KL(p_T ‖ p_S), both at `temperature`."""
    lp_s, lp_t = _log_softmax(student_logits, temperature), _log_softmax(teacher_logits, temperature)
    return _masked_mean(_kl(lp_t, lp_s), valid)


def reverse_kl(student_logits, teacher_logits, valid, temperature: float = 1.0):
    """Mean over valid positions of KL(p_S ‖ p_T), both at `temperature`."""
    lp_s, lp_t = _log_softmax(student_logits, temperature), _log_softmax(teacher_logits, temperature)
    return _masked_mean(_kl(lp_s, lp_t), valid)


def generalized_jsd(student_logits, teacher_logits, valid, beta: float, temperature: float = 1.0):
    """Mean over valid positions of GKD's JSD_β (β = 0: forward KL, β = 1: reverse KL)."""
    _check_beta(beta)
    lp_s, lp_t = _log_softmax(student_logits, temperature), _log_softmax(teacher_logits, temperature)
    return _masked_mean(_jsd(lp_s, lp_t, beta), valid)


def kd_loss(student_logits, teacher_logits, labels, valid, *, temperature: float, alpha: float):
    """Logit KD: α · τ² · KL(p_T^τ ‖ p_S^τ) + (1 − α) · CE(labels)."""
    kd = temperature ** 2 * forward_kl(student_logits, teacher_logits, valid, temperature)
    return alpha * kd + (1.0 - alpha) * ce_loss(student_logits, labels, valid)


# ------------------------------------------------------------------ top-k (bucketed) losses
def _log1mexp(x):
    """log(1 − e^x) for x ≤ 0, accurate at both ends (Mächler's switch at −ln 2)."""
    x = tf.minimum(x, tf.zeros_like(x))
    return tf.where(x > -math.log(2.0), tf.math.log(-tf.math.expm1(x)), tf.math.log1p(-tf.exp(x)))


def _chosen_mask(ids, full_shape):
    """(B, T, V) bool: True at the ids (B, T, K). A scatter, not a (B, T, K, V) one-hot, so the
    memory is that of the logits whatever k is."""
    b, t, v = full_shape[0], full_shape[1], full_shape[2]
    k = tf.shape(ids)[-1]
    rows = tf.repeat(tf.range(b * t), k)                                    # (B·T·K,) flat position
    idx = tf.stack([rows, tf.reshape(ids, [-1])], axis=1)                   # (B·T·K, 2)
    hits = tf.scatter_nd(idx, tf.ones_like(rows, tf.float32), tf.stack([b * t, v]))  # (B·T, V)
    return tf.reshape(hits > 0, full_shape)


def topk_buckets(student_logits, teacher_ids, teacher_logprobs, temperature: float = 1.0):
    """Both distributions on the k + 1 buckets (teacher's k ids, then the tail).

    student_logits (B, T, V); teacher_ids (B, T, K) int; teacher_logprobs (B, T, K) log-probs at
    `temperature` over the full vocabulary. Returns (logp_s, logp_t), each (B, T, K + 1).
    """
    lp_s_full = _log_softmax(student_logits, temperature)                   # (B, T, V)
    ids = tf.cast(teacher_ids, tf.int32)
    lp_s_top = tf.gather(lp_s_full, ids, batch_dims=2)                      # (B, T, K)
    chosen = _chosen_mask(ids, tf.shape(lp_s_full))                         # (B, T, V) bool
    # Student tail = logsumexp over the ids not chosen, with the floor as one more term (it
    # also keeps the logsumexp finite when k = V leaves nothing, so its gradient is not NaN).
    floor = tf.fill(tf.shape(lp_s_full[..., :1]), math.log(TAIL_FLOOR))    # (B, T, 1)
    rest = tf.where(chosen, tf.fill(tf.shape(lp_s_full), -math.inf), lp_s_full)
    lp_s_tail = tf.reduce_logsumexp(tf.concat([rest, floor], axis=-1), axis=-1, keepdims=True)
    lp_t_top = tf.cast(teacher_logprobs, tf.float32)                        # (B, T, K)
    # tail = max(1 − Σ p, 0) + floor, in log space. In float64: when the top-k cover nearly all
    # the mass, 1 − Σ p cancels, and float32 rounding of the sum alone moved the reverse KL by
    # ~1e-3 on a 6-token test vocabulary (the teacher carries no gradient; this costs (B, T, K)).
    lp64 = tf.cast(teacher_logprobs, tf.float64)
    covered = tf.minimum(tf.reduce_logsumexp(lp64, axis=-1, keepdims=True), 0.0)  # log Σ p
    tail = tf.concat([_log1mexp(covered), tf.cast(floor, tf.float64)], axis=-1)
    lp_t_tail = tf.cast(tf.reduce_logsumexp(tail, axis=-1, keepdims=True), tf.float32)
    return (tf.concat([lp_s_top, lp_s_tail], axis=-1),                      # (B, T, K+1)
            tf.concat([lp_t_top, lp_t_tail], axis=-1))


def topk_forward_kl(student_logits, teacher_ids, teacher_logprobs, valid, temperature: float = 1.0):
    """Bucketed KL(p_T ‖ p_S) (≤ the full-vocabulary one; equal at k = V)."""
    lp_s, lp_t = topk_buckets(student_logits, teacher_ids, teacher_logprobs, temperature)
    return _masked_mean(_kl(lp_t, lp_s), valid)


def topk_reverse_kl(student_logits, teacher_ids, teacher_logprobs, valid, temperature: float = 1.0):
    """Bucketed KL(p_S ‖ p_T)."""
    lp_s, lp_t = topk_buckets(student_logits, teacher_ids, teacher_logprobs, temperature)
    return _masked_mean(_kl(lp_s, lp_t), valid)


def topk_generalized_jsd(student_logits, teacher_ids, teacher_logprobs, valid, beta: float,
                         temperature: float = 1.0):
    """Bucketed JSD_β (endpoints as `generalized_jsd`)."""
    _check_beta(beta)
    lp_s, lp_t = topk_buckets(student_logits, teacher_ids, teacher_logprobs, temperature)
    return _masked_mean(_jsd(lp_s, lp_t, beta), valid)


def topk_kd_loss(student_logits, teacher_ids, teacher_logprobs, labels, valid, *, temperature: float,
                 alpha: float):
    """α · τ² · bucketed KL(p_T^τ ‖ p_S^τ) + (1 − α) · CE(labels); the teacher log-probs must
    have been taken at this same τ."""
    kd = temperature ** 2 * topk_forward_kl(student_logits, teacher_ids, teacher_logprobs, valid,
                                            temperature)
    return alpha * kd + (1.0 - alpha) * ce_loss(student_logits, labels, valid)
