"""GRPO's pieces that are pure arithmetic: group advantages (host, numpy) and the clipped
policy objective with its KL term and loss aggregations (TensorFlow, inside the train step).

Notation (DeepSeekMath / R1; TRL's names in brackets): a prompt q has a group of G completions
o_1..o_G with scalar rewards r_i.

Advantages [scale_rewards]:
  group  A_i = (r_i − mean_g r) / (std_g r + eps)        (GRPO)
  batch  A_i = (r_i − mean_g r) / (std_batch r + eps)    (group-centred, batch-scaled)
  none   A_i =  r_i − mean_g r                            (Dr. GRPO)
std is the sample standard deviation (ddof = 1, as torch.std), eps = 1e-4. A reward of NaN
(no reward function could score the completion) is left out of its group's mean and std and
the completion gets advantage 0. A group whose scored rewards are all equal (or that has fewer
than two scored members) carries no signal: its advantages are 0 and, with dynamic sampling
(DAPO), the whole group is dropped from the batch.

Per completion token t of o_i, with log-probs at the sampling temperature:
  ρ_it = exp(log π_θ − log π_old)                          token-level ratio, or
  ρ_i  = exp(mean_t (log π_θ − log π_old))                 sequence-level (GSPO), the same for all t
  L_it = −min(ρ·A_i, clip(ρ, 1 − ε_low, 1 + ε_high)·A_i) + β·KL_it
with ρ first capped at δ when two-sided clipping is on (bounds the loss for A < 0), and
  k1: KL_it = log π_θ − log π_ref        k3: KL_it = π_ref/π_θ − log(π_ref/π_θ) − 1  (≥ 0).
With num_iterations = 1, π_old is π_θ itself under stop_gradient (ρ = 1, the gradient is the
policy gradient); with more iterations π_old is the rollout-time policy, stored with the batch.

Aggregation [loss_type] over the completion-token mask m:
  grpo     mean_i ( Σ_t m·L / Σ_t m )            (per-sequence means, then over sequences)
  bnpo     Σ m·L / Σ m per micro-batch, micro-batches weighted equally
  dr_grpo  Σ m·L / (B · max_completion_len)
  dapo     Σ m·L / Σ m over the whole global batch (every replica and micro-step)
The engine combines micro-batches by weight (training/loop.py), so each type is a
(per-micro-batch loss, weight) pair: grpo (mean over rows, rows), bnpo (token mean, 1),
dr_grpo (Σ m·L / (rows·L_max), rows), dapo (token mean, tokens).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from common.errors import ConfigError
from model.ops.softmax_xent import sparse_softmax_xent

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
SCALE_REWARDS = ("group", "batch", "none")
IMPORTANCE_LEVELS = ("token", "sequence")
KL_ESTIMATORS = ("k1", "k3")
ADV_EPS = 1e-4


@dataclass(frozen=True)
class GroupAdvantages:
    advantages: np.ndarray      # (N,) float32; 0 for unscored completions and zero-std groups
    group_std: np.ndarray       # (N // G,) sample std of each group's scored rewards (0 if < 2)
    zero_std: np.ndarray        # (N // G,) bool: the group carries no learning signal


def group_advantages(rewards, group_size: int, scale: str = "group", eps: float = ADV_EPS) -> GroupAdvantages:
    """rewards (N,) with NaN for unscored, grouped as consecutive runs of group_size."""
    if scale not in SCALE_REWARDS:
        raise ConfigError(f"scale_rewards: {scale!r} is not one of {', '.join(SCALE_REWARDS)}")
    r = np.asarray(rewards, np.float64)
    if r.ndim != 1 or group_size < 1 or r.size % group_size:
        raise ValueError(f"rewards of shape {r.shape} do not split into groups of {group_size}")
    g = r.reshape(-1, group_size)                                       # (P, G)
    scored = ~np.isnan(g)
    n = scored.sum(axis=1)                                              # (P,)
    safe = np.where(scored, g, 0.0)
    mean = safe.sum(axis=1) / np.maximum(n, 1)                          # (P,)
    dev = np.where(scored, g - mean[:, None], 0.0)
    var = (dev ** 2).sum(axis=1) / np.maximum(n - 1, 1)
    std = np.where(n >= 2, np.sqrt(var), 0.0)                           # (P,)
    zero_std = std <= 1e-12
    if scale == "group":
        denom = std[:, None] + eps
    elif scale == "batch":
        flat = r[~np.isnan(r)]
        denom = (np.std(flat, ddof=1) if flat.size >= 2 else 0.0) + eps
    else:
        denom = 1.0
    adv = np.where(scored & ~zero_std[:, None], dev / denom, 0.0)
    return GroupAdvantages(adv.reshape(-1).astype(np.float32), std.astype(np.float32), zero_std)


@dataclass(frozen=True)
class ObjectiveSpec:
    loss_type: str = "dapo"
    epsilon_low: float = 0.2
    epsilon_high: float = 0.2
    delta: float | None = None          # two-sided clipping cap on ρ; None = off
    importance_sampling: str = "token"  # token | sequence (GSPO)
    beta: float = 0.0                   # KL weight; 0 = no reference model
    kl_estimator: str = "k3"
    max_completion_len: int = 64        # dr_grpo's constant normaliser

    def __post_init__(self):
        if self.loss_type not in LOSS_TYPES:
            raise ConfigError(f"grpo loss_type: {self.loss_type!r} is not one of {', '.join(LOSS_TYPES)}")
        if self.importance_sampling not in IMPORTANCE_LEVELS:
            raise ConfigError(f"grpo importance_sampling: {self.importance_sampling!r} is not one of "
                              f"{', '.join(IMPORTANCE_LEVELS)}")
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ConfigError(f"grpo kl_estimator: {self.kl_estimator!r} is not one of {', '.join(KL_ESTIMATORS)}")
        if not (0 <= self.epsilon_low < 1 and self.epsilon_high >= 0):
            raise ConfigError("grpo epsilon_low must be in [0, 1) and epsilon_high >= 0")
        if self.delta is not None and self.delta <= 1.0 + self.epsilon_high:
            raise ConfigError(f"grpo delta: must be > 1 + epsilon_high ({1 + self.epsilon_high}), got {self.delta}")
        if self.beta < 0:
            raise ConfigError(f"grpo beta: must be >= 0, got {self.beta}")
        if self.max_completion_len < 1:
            raise ConfigError("grpo max_completion_len must be >= 1")


def token_logprobs(logits, token_ids):
    """logits (B, T, V), token_ids (B, T) -> (B, T) float32: [:, t] = log p(token t | tokens < t)
    from position t − 1's logits; column 0 (no context) is 0."""
    lp = -sparse_softmax_xent(logits[:, :-1], token_ids[:, 1:])                  # (B, T-1) fp32
    return tf.pad(lp, [[0, 0], [1, 0]])


def token_entropy(logits):
    """logits (B, T, V) -> (B, T) entropy of the next-token distribution at each position, aligned
    like token_logprobs (column t is the distribution token t was drawn from; column 0 is 0)."""
    logits = tf.cast(logits[:, :-1], tf.float32)
    logp = tf.nn.log_softmax(logits, axis=-1)
    ent = -tf.reduce_sum(tf.exp(logp) * logp, axis=-1)                  # (B, T-1)
    return tf.pad(ent, [[0, 0], [1, 0]])


def kl_estimate(logp, ref_logp, estimator: str):
    """Per-token KL(π_θ ‖ π_ref) estimate from log-probs of the sampled tokens (B, T)."""
    if estimator == "k1":
        return logp - ref_logp
    d = ref_logp - logp
    return tf.exp(d) - d - 1.0


def policy_loss(spec: ObjectiveSpec, logp, old_logp, advantages, mask, ref_logp=None):
    """Per-token GRPO loss and its diagnostics.

    logp, old_logp, ref_logp: (B, T) log-probs of the sampled tokens; advantages (B,);
    mask (B, T) float, 1 on counted completion tokens.
    Returns (per_token_loss (B, T), stats dict of (B, T) float tensors: ratio, low/high clip flags, kl).
    """
    mask = tf.cast(mask, tf.float32)
    log_ratio = logp - old_logp                                          # (B, T)
    if spec.importance_sampling == "sequence":
        seq = tf.reduce_sum(log_ratio * mask, -1) / tf.maximum(tf.reduce_sum(mask, -1), 1.0)   # (B,)
        log_w = seq[:, None] + tf.zeros_like(log_ratio)                  # (B, T) the same per token
    else:
        log_w = log_ratio
    coef1 = tf.exp(log_w)
    coef2 = tf.clip_by_value(coef1, 1.0 - spec.epsilon_low, 1.0 + spec.epsilon_high)
    if spec.delta is not None:
        coef1 = tf.minimum(coef1, spec.delta)
    adv = tf.cast(advantages, tf.float32)[:, None]                       # (B, 1)
    per_token = -tf.minimum(coef1 * adv, coef2 * adv)
    stats = {
        "ratio": tf.exp(log_w),
        "clip_low": tf.cast((tf.exp(log_w) < 1.0 - spec.epsilon_low) & (adv < 0), tf.float32),
        "clip_high": tf.cast((tf.exp(log_w) > 1.0 + spec.epsilon_high) & (adv > 0), tf.float32),
    }
    if spec.beta > 0:
        if ref_logp is None:
            raise ConfigError("grpo beta > 0 needs the reference model's log-probs (ref_logp)")
        kl = kl_estimate(logp, ref_logp, spec.kl_estimator)
        per_token = per_token + spec.beta * kl
        stats["kl"] = kl
    return per_token, stats


def aggregate(spec: ObjectiveSpec, per_token, mask, row_valid):
    """(micro-batch loss, engine weight) for spec.loss_type. per_token, mask (B, T); row_valid (B,)
    1 for real rows (0 for padding rows added to fill the fixed batch shape)."""
    mask = tf.cast(mask, tf.float32)
    rows = tf.reduce_sum(tf.cast(row_valid, tf.float32))
    tokens = tf.reduce_sum(mask)
    total = tf.reduce_sum(per_token * mask)
    if spec.loss_type == "grpo":
        per_seq = tf.reduce_sum(per_token * mask, -1) / tf.maximum(tf.reduce_sum(mask, -1), 1.0)   # (B,)
        return tf.reduce_sum(per_seq * tf.cast(row_valid, tf.float32)) / tf.maximum(rows, 1.0), rows
    if spec.loss_type == "bnpo":
        return total / tf.maximum(tokens, 1.0), tf.cast(tokens > 0, tf.float32)
    if spec.loss_type == "dr_grpo":
        return total / (tf.maximum(rows, 1.0) * float(spec.max_completion_len)), rows
    return total / tf.maximum(tokens, 1.0), tokens      # dapo


def masked_mean(x, mask):
    mask = tf.cast(mask, tf.float32)
    return tf.reduce_sum(x * mask) / tf.maximum(tf.reduce_sum(mask), 1.0)
