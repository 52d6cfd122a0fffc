"""Agent losses on hand-computable rows: V = 4, one row of T = 4 tokens [0, 1, 2, 3].

Student logits per position (position i predicts token i+1):
  pos 0: [0, ln 3, 0, 0]  → p_S = [1/6, 1/2, 1/6, 1/6]; target 1: CE = ln 2
  pos 1: [0, 0, 0, 0]     → p_S = 1/4 each;             target 2: CE = ln 4
  pos 2: [0, 0, 0, ln 5]  → p_S = [1/8, 1/8, 1/8, 5/8]; target 3: CE = ln(8/5)
  pos 3: no target (end of row).
"""
import math

import numpy as np
import pytest
import tensorflow as tf

from common.errors import ConfigError
from training import agent_losses as al

LN = math.log
IDS = tf.constant([[0, 1, 2, 3]])
STUDENT = tf.constant([[[0, LN(3), 0, 0], [0, 0, 0, 0], [0, 0, 0, LN(5)], [0, 0, 0, 0]]], tf.float32)
REASON = tf.constant([[0, 1, 0, 0]])   # token 1 is a REASON token → counted at pos 0
ACTION = tf.constant([[0, 0, 1, 1]])   # tokens 2, 3 are ACT tokens → pos 1, pos 2


def close(x, want, tol=1e-5):
    assert float(x) == pytest.approx(want, abs=tol)


def test_sad_ce_weights_reason_and_action_targets_and_normalises_by_total_weight():
    # λ_r = 2, λ_a = 1: w = [2, 1, 1, 0] → (2 ln 2 + ln 4 + ln 8/5) / 4
    got = al.sad_ce_loss(STUDENT, IDS, REASON, ACTION, lambda_reason=2.0, lambda_act=1.0)
    close(got, (2 * LN(2) + LN(4) + LN(8 / 5)) / 4)
    # scaling both λ by 3 changes nothing (weighted mean)
    close(al.sad_ce_loss(STUDENT, IDS, REASON, ACTION, lambda_reason=6.0, lambda_act=3.0), float(got))
    # λ_a = 0: only the reason target → ln 2
    close(al.sad_ce_loss(STUDENT, IDS, REASON, ACTION, lambda_reason=1.0, lambda_act=0.0), LN(2))


def test_segments_drop_targets_in_another_document_and_unmarked_tokens_get_no_loss():
    # seg [1, 1, 2, 2]: pos 1 → token 2 crosses documents; w = [2, 0, 1, 0]
    got = al.sad_ce_loss(STUDENT, IDS, REASON, ACTION, tf.constant([[1, 1, 2, 2]]), lambda_reason=2.0)
    close(got, (2 * LN(2) + LN(8 / 5)) / 3)
    # an observation row (no mask at all) → 0, not NaN
    zeros = tf.zeros_like(IDS)
    close(al.sad_ce_loss(STUDENT, IDS, zeros, zeros), 0.0)


def test_sad_kl_is_the_span_weighted_forward_kl():
    teacher = tf.constant([[[0, 0, 0, LN(5)], [0, 0, 0, 0], [LN(3), 0, 0, 0], [9, 0, 0, 0]]], tf.float32)
    student = tf.constant([[[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, LN(5)], [0, 0, 0, 0]]], tf.float32)
    # pos 0: p_T = [1/8, 1/8, 1/8, 5/8], p_S = 1/4 → 3/8 ln(1/2) + 5/8 ln(5/2)
    kl0 = 3 / 8 * LN(1 / 2) + 5 / 8 * LN(5 / 2)
    # pos 1: equal distributions → 0
    # pos 2: p_T = [1/2, 1/6, 1/6, 1/6], p_S = [1/8, 1/8, 1/8, 5/8]
    kl2 = 1 / 2 * LN(4) + 2 / 6 * LN(8 / 6) + 1 / 6 * LN((1 / 6) / (5 / 8))
    got = al.sad_kl_loss(student, teacher, IDS, REASON, ACTION, lambda_reason=2.0, lambda_act=1.0)
    close(got, (2 * kl0 + 0.0 + kl2) / 4)
    # temperature τ = 2 on doubled logits is τ = 1 on the originals
    got_t = al.sad_kl_loss(2 * student, 2 * teacher, IDS, REASON, ACTION, lambda_reason=2.0, temperature=2.0)
    close(got_t, (2 * kl0 + kl2) / 4)


def test_tool_and_json_losses_are_ce_on_their_targets():
    tool_mask = tf.constant([[0, 1, 0, 0]])   # target at pos 0 → ln 2
    json_mask = tf.constant([[0, 0, 0, 1]])   # target at pos 2 → ln(8/5)
    close(al.tool_selection_loss(STUDENT, IDS, tool_mask), LN(2))
    close(al.json_validity_loss(STUDENT, IDS, json_mask), LN(8 / 5))
    # accuracy: pos 0 argmax 1 = target, pos 1 argmax 0 ≠ 2, pos 2 argmax 3 = target
    close(al.masked_accuracy(STUDENT, IDS, ACTION), 0.5)
    close(al.masked_accuracy(STUDENT, IDS, tool_mask), 1.0)


def test_agent_distill_loss_combines_the_terms_with_configurable_weights():
    batch = {"input_ids": IDS, "segment_ids": tf.ones_like(IDS), al.REASON_MASK: REASON, al.ACTION_MASK: ACTION,
             al.TOOL_NAME_MASK: tf.constant([[0, 1, 0, 0]]), al.JSON_MASK: tf.constant([[0, 0, 0, 1]])}
    sad = (LN(2) + LN(4) + LN(8 / 5)) / 3                      # λ_r = λ_a = 1, Σ w = 3
    # default: weights 0.7 / 0.3 over the SAD term's Σ w — one target each, so / 3
    total, m = al.agent_distill_loss(STUDENT, batch)
    close(total, sad + (0.7 * LN(2) + 0.3 * LN(8 / 5)) / 3)
    close(m["sad"], sad)
    close(m["tool_loss"], LN(2))                                 # reported: the plain means
    close(m["json_loss"], LN(8 / 5))
    close(m["tool_name_acc"], 1.0)
    # normalize="term": each process term is a mean over its own targets
    total, _ = al.agent_distill_loss(STUDENT, batch, al.AgentLossSpec(normalize="term"))
    close(total, sad + 0.7 * LN(2) + 0.3 * LN(8 / 5))
    spec = al.AgentLossSpec(lambda_reason=2.0, lambda_act=1.0, tool_weight=1.5, json_weight=0.0, normalize="term")
    total, _ = al.agent_distill_loss(STUDENT, batch, spec)
    close(total, (2 * LN(2) + LN(4) + LN(8 / 5)) / 4 + 1.5 * LN(2))
    # "span" with λ_r = 2: Σ w = 4, two tool targets at pos 0 and 2 → (ln 2 + ln 8/5) / 4
    two = {**batch, al.TOOL_NAME_MASK: tf.constant([[0, 1, 0, 1]])}
    spec = al.AgentLossSpec(lambda_reason=2.0, lambda_act=1.0, tool_weight=1.5, json_weight=0.0)
    total, m = al.agent_distill_loss(STUDENT, two, spec)
    close(total, (2 * LN(2) + LN(4) + LN(8 / 5)) / 4 + 1.5 * (LN(2) + LN(8 / 5)) / 4)
    close(m["tool_loss"], (LN(2) + LN(8 / 5)) / 2)
    # without process-supervision fields the extra terms are 0
    plain = {k: batch[k] for k in ("input_ids", "segment_ids", al.REASON_MASK, al.ACTION_MASK)}
    total, m = al.agent_distill_loss(STUDENT, plain)
    close(total, sad)
    close(m["tool_loss"], 0.0)


def test_agent_distill_loss_uses_the_kl_form_with_teacher_logits():
    batch = {"input_ids": IDS, al.REASON_MASK: REASON, al.ACTION_MASK: ACTION}
    total, m = al.agent_distill_loss(STUDENT, batch, teacher_logits=STUDENT)
    close(total, 0.0)                                           # teacher = student: KL 0
    assert np.isfinite(float(m["json_token_acc"]))
    # α mixes the KL form with the CE form: KL 0 here, so (1 − α) · the span CE remains
    sad_ce = (LN(2) + LN(4) + LN(8 / 5)) / 3
    total, m = al.agent_distill_loss(STUDENT, batch, al.AgentLossSpec(alpha=0.25), teacher_logits=STUDENT)
    close(total, 0.75 * sad_ce)
    close(m["sad"], 0.75 * sad_ce)


def test_gradient_flows_only_through_weighted_positions():
    logits = tf.Variable(STUDENT)
    with tf.GradientTape() as tape:
        loss = al.sad_ce_loss(logits, IDS, REASON, tf.zeros_like(IDS))
    g = tape.gradient(loss, logits).numpy()[0]
    assert np.abs(g[0]).sum() > 0 and np.abs(g[1:]).sum() == 0


@pytest.mark.parametrize("kw", [{"tool_weight": -0.1}, {"lambda_reason": 0.0, "lambda_act": 0.0},
                                {"temperature": 0.0}, {"json_weight": "0.3"}, {"normalize": "mean"},
                                {"alpha": 1.5}])
def test_bad_weights_are_config_errors(kw):
    with pytest.raises(ConfigError):
        al.AgentLossSpec(**kw)
