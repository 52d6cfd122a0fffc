"""Auxiliary-loss-free load balancing (DeepSeek-V3 §2.1.2).

After each training step the trainer reads each MoE layer's expert load and nudges the routing
bias: b_i -= γ if expert i got more than the mean load, += γ if it got less. The bias only
changes which experts are *selected*; combine weights use the unbiased scores.
"""
from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

from model.layers.moe import RouterOutput


def expert_load(topk_idx, n_experts: int, token_mask=None):
    """Number of tokens routed to each expert this step: (N, K) int -> (E,) float32.

    token_mask (N,) or (B, T) with B·T = N: tokens where it is 0 are not counted. For packed rows
    pass `segment_ids != 0` so padding (which is still routed) does not count as load and does
    not skew the bias update.
    """
    onehot = tf.one_hot(topk_idx, n_experts, dtype=tf.float32)                 # (N, K, E)
    if token_mask is not None:
        onehot = onehot * tf.reshape(tf.cast(token_mask, tf.float32), [-1, 1, 1])
    return tf.reduce_sum(onehot, axis=[0, 1])


def layer_loads(routers: Sequence[RouterOutput], n_experts: int, token_mask=None) -> list[tf.Tensor]:
    """expert_load for every MoE layer, in `DecoderLM.moe_layers()` order.

    Every layer (MTP ones included) routes the same B·T token positions, so one token_mask
    (e.g. `segment_ids != 0` on packed rows) applies to all of them.
    """
    return [expert_load(r.topk_idx, n_experts, token_mask) for r in routers]


def bias_delta(load, gamma: float = 1e-3):
    """γ·sign(mean − load): overloaded experts get −γ, underloaded +γ, exactly-mean 0."""
    load = tf.cast(load, tf.float32)
    return gamma * tf.sign(tf.reduce_mean(load) - load)


def update_routing_bias(model, loads: Sequence, gamma: float = 1e-3) -> None:
    """Apply bias_delta to each MoE layer's e_score_correction_bias (in place, no gradients).

    `loads` align with model.moe_layers(); fewer loads than layers (forward without MTP) update
    only the first len(loads) layers.
    """
    layers = model.moe_layers()
    if len(loads) > len(layers):
        raise ValueError(f"got {len(loads)} load vectors for {len(layers)} MoE layers")
    for layer, load in zip(layers, loads, strict=False):
        if layer.e_score_correction_bias is None:
            continue  # V2-style routing has no bias to adjust
        layer.e_score_correction_bias.assign_add(bias_delta(load, gamma))
