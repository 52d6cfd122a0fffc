"""GRPOTask on a fixture model: engine weights per loss type, the on-policy policy gradient against
a hand-written surrogate, the stored old policy's ratio with clip-higher, and the β > 0 guard."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from common.errors import ConfigError
from model.conftest import load_fixture_model
from training.grpo_objective import ObjectiveSpec, token_logprobs
from training.grpo_task import OLD_LOGP, REF_LOGP, GRPOTask
from training.rollout_batch import build_rows

TEMP = 0.8
ADV = [1.0, -0.5, 2.0]


def _batch(prompts=((7, 8, 9), (10,), (11, 12)), comps=((20, 21), (22, 23, 24), (25, 26, 27))):
    rows = build_rows([list(p) for p in prompts], [list(c) for c in comps], seq_len=7)
    b = {k: tf.constant(v) for k, v in rows.items()}
    b["advantages"] = tf.constant(ADV, tf.float32)                          # (B,)
    b["row_valid"] = tf.ones([len(prompts)], tf.float32)
    return b


def test_weight_per_loss_type_by_hand():
    mask = tf.constant([[0, 1, 1, 0], [0, 1, 1, 1], [0, 0, 0, 0]], tf.float32)   # 2 + 3 + 0 tokens
    batch = {"completion_mask": mask, "row_valid": tf.constant([1.0, 1.0, 0.0])}  # the last row only pads
    want = {"grpo": 2.0, "bnpo": 1.0, "dr_grpo": 2.0, "dapo": 5.0}
    for loss_type, w in want.items():
        assert float(GRPOTask(ObjectiveSpec(loss_type=loss_type)).weight(batch)) == w, loss_type
    empty = {"completion_mask": tf.zeros([2, 4]), "row_valid": tf.ones([2])}
    assert float(GRPOTask(ObjectiveSpec(loss_type="bnpo")).weight(empty)) == 0.0   # nothing to average
    assert float(GRPOTask(ObjectiveSpec(loss_type="dapo")).weight(empty)) == 0.0


def _reference_grads(model, batch, token_weight):
    """∇ of −Σ_t w_t·A·logπ(t) / Σm, logπ from a plain forward at the sampling temperature."""
    m = batch["completion_mask"]
    adv = batch["advantages"][:, None]                                       # (B, 1)
    with tf.GradientTape() as tape:
        out = model.forward(batch["input_ids"], position_ids=batch["positions"],
                            segment_ids=batch["segment_ids"], training=True)
        logp = token_logprobs(tf.cast(out["logits"], tf.float32) / TEMP, batch["input_ids"])   # (B, T)
        surrogate = -tf.reduce_sum(adv * token_weight * logp) / tf.reduce_sum(m)
    return logp, tape.gradient(surrogate, model.trainable_variables)


def _task_grads(task, model, batch):
    with tf.GradientTape() as tape:
        out = task.compute(model, batch, training=True)
    return out, tape.gradient(out.loss, model.trainable_variables)


def _assert_grads_close(got, want):
    pairs = [(g, w) for g, w in zip(got, want, strict=True) if w is not None]
    assert pairs and sum(float(tf.reduce_sum(tf.abs(w))) for _, w in pairs) > 0
    for g, w in pairs:
        np.testing.assert_allclose(tf.convert_to_tensor(g).numpy(), tf.convert_to_tensor(w).numpy(),
                                   atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("name", ["dsv3_qlora", "qwen2_gqa_tied"])
def test_on_policy_dapo_gradient_is_the_policy_gradient(name):
    model = load_fixture_model(name)
    batch = _batch()
    task = GRPOTask(ObjectiveSpec(loss_type="dapo"), temperature=TEMP, aux_loss_alpha=0.0)
    out, got = _task_grads(task, model, batch)
    m = batch["completion_mask"]
    _, want = _reference_grads(model, batch, m)
    _assert_grads_close(got, want)
    # ρ = 1 on-policy: the loss value is −Σ A·m / Σm = −(1·2 − 0.5·3 + 2·3) / 8
    np.testing.assert_allclose(float(out.loss), -(2 * 1.0 - 3 * 0.5 + 3 * 2.0) / 8, rtol=1e-6)
    assert float(out.metrics["clip_ratio/high_mean"]) == 0.0 and float(out.metrics["clip_ratio/low_mean"]) == 0.0
    np.testing.assert_allclose(float(out.metrics["ratio_mean"]), 1.0, atol=1e-6)
    assert "kl" not in out.metrics and "aux_loss" not in out.metrics


def test_stored_old_policy_ratio_is_clipped_high():
    """old_logp = logp − 0.5 on row 0's first completion token (A = +1): ρ = e^0.5 ≈ 1.65 > 1 + ε_high,
    so that token is clipped (no gradient) and counted in clip_ratio/high_mean (1 of 8 tokens)."""
    model = load_fixture_model("dsv3_qlora")
    batch = _batch()
    m = batch["completion_mask"]
    logp, _ = _reference_grads(model, batch, m)
    bump = np.zeros(m.shape, np.float32)
    bump[0, 3] = 0.5                                                         # row 0: prompt of 3, token 3 is the first completion token
    assert float(m[0, 3]) == 1.0
    batch[OLD_LOGP] = tf.constant(logp.numpy() - bump)
    task = GRPOTask(ObjectiveSpec(loss_type="dapo", epsilon_low=0.2, epsilon_high=0.28), temperature=TEMP,
                    aux_loss_alpha=0.0)
    out, got = _task_grads(task, model, batch)
    np.testing.assert_allclose(float(out.metrics["clip_ratio/high_mean"]), 1 / 8, rtol=1e-6)
    assert float(out.metrics["clip_ratio/low_mean"]) == 0.0
    np.testing.assert_allclose(float(out.metrics["ratio_mean"]), (np.exp(0.5) + 7) / 8, rtol=1e-5)
    # the loss: the clipped token contributes −(1 + 0.28)·A, the others −ρ·A with ρ = 1
    np.testing.assert_allclose(float(out.loss), -(1.28 * 1.0 + 1 * 1.0 - 3 * 0.5 + 3 * 2.0) / 8, rtol=1e-5)
    # the gradient: every unclipped token's policy gradient; the clipped one adds nothing
    _, want = _reference_grads(model, batch, m * (1.0 - (bump > 0)))
    _assert_grads_close(got, want)


def test_beta_needs_reference_logprobs():
    model = load_fixture_model("qwen2_gqa_tied")
    batch = _batch()
    task = GRPOTask(ObjectiveSpec(beta=0.1), temperature=TEMP, aux_loss_alpha=0.0)
    with pytest.raises(ConfigError, match="beta > 0 needs the reference model's log-probs"):
        task.compute(model, batch, training=True)
    # with them, the KL (k3, here exactly 0 for ref = π_θ) is reported
    logp, _ = _reference_grads(model, batch, batch["completion_mask"])
    out = task.compute(model, {**batch, REF_LOGP: logp}, training=True)
    assert abs(float(out.metrics["kl"])) < 1e-6
