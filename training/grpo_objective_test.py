"""GRPO arithmetic on hand-computed cases (numbers worked out by hand from the formulas in the
module docstring / post_training.md, not by the code under test)."""
import math

import numpy as np
import pytest
import tensorflow as tf

from common.errors import ConfigError
from training.grpo_objective import (
    ADV_EPS,
    ObjectiveSpec,
    aggregate,
    group_advantages,
    kl_estimate,
    policy_loss,
    token_entropy,
    token_logprobs,
)

SQRT_HALF = math.sqrt(0.5)   # sample std (ddof 1) of {0, 1}


def test_group_scaling_uses_the_sample_std_of_each_group():
    a = group_advantages([1.0, 0.0, 0.0, 1.0], 2, "group")
    want = 0.5 / (SQRT_HALF + ADV_EPS)
    np.testing.assert_allclose(a.advantages, [want, -want, -want, want], rtol=1e-6)
    np.testing.assert_allclose(a.group_std, [SQRT_HALF, SQRT_HALF], rtol=1e-6)
    assert not a.zero_std.any()


def test_zero_std_groups_get_zero_advantage_and_are_flagged():
    a = group_advantages([1.0, 1.0, 0.0, 1.0], 2, "group")
    assert a.zero_std.tolist() == [True, False]
    assert a.advantages[:2].tolist() == [0.0, 0.0]


def test_unscored_completions_are_left_out_of_mean_and_std_and_get_zero():
    # scored members {1, 0}: mean 0.5, sample std sqrt(0.5)
    a = group_advantages([1.0, np.nan, 0.0], 3, "group")
    want = 0.5 / (SQRT_HALF + ADV_EPS)
    np.testing.assert_allclose(a.advantages, [want, 0.0, -want], rtol=1e-6)
    # one scored member: no signal
    b = group_advantages([np.nan, 1.0, np.nan], 3, "group")
    assert b.zero_std.tolist() == [True] and b.advantages.tolist() == [0.0, 0.0, 0.0]


def test_batch_scaling_centres_per_group_and_scales_by_the_batch_std():
    # batch {1, 0, 2, 2}: mean 1.25, squared deviations 0.0625 + 1.5625 + 0.5625 + 0.5625 = 2.75
    std = math.sqrt(2.75 / 3)
    a = group_advantages([1.0, 0.0, 2.0, 2.0], 2, "batch")
    np.testing.assert_allclose(a.advantages, [0.5 / (std + ADV_EPS), -0.5 / (std + ADV_EPS), 0.0, 0.0], rtol=1e-6)


def test_no_scaling_is_the_centred_reward():
    a = group_advantages([3.0, 1.0, 0.0, 0.5], 2, "none")
    np.testing.assert_allclose(a.advantages, [1.0, -1.0, -0.25, 0.25])


def test_bad_scale_and_shapes_are_errors():
    with pytest.raises(ConfigError, match="scale_rewards"):
        group_advantages([1.0, 0.0], 2, "groups")
    with pytest.raises(ValueError):
        group_advantages([1.0, 0.0, 1.0], 2)


LOGP = tf.constant([[0.0, -1.0, -2.0]])
OLD = tf.constant([[0.0, -1.5, -1.0]])      # log-ratios 0, +0.5, -1.0
MASK = tf.constant([[0.0, 1.0, 1.0]])


def test_token_level_clipped_objective_positive_advantage():
    loss, st = policy_loss(ObjectiveSpec(), LOGP, OLD, tf.constant([2.0]), MASK)
    # ρ1 = e^0.5 = 1.6487 → clipped 1.2: min(3.297, 2.4) = 2.4; ρ2 = e^-1 = 0.3679: min(0.7358, 1.6) = 0.7358
    np.testing.assert_allclose(loss.numpy()[0, 1:], [-2.4, -2 * math.exp(-1)], rtol=1e-5)
    assert st["clip_high"].numpy()[0].tolist() == [0.0, 1.0, 0.0]
    assert st["clip_low"].numpy()[0].tolist() == [0.0, 0.0, 0.0]     # low clipping only counts for A < 0


def test_token_level_negative_advantage_and_delta_cap():
    loss, st = policy_loss(ObjectiveSpec(), LOGP, OLD, tf.constant([-1.0]), MASK)
    # ρ1: min(-1.6487, -1.2) = -1.6487; ρ2: min(-0.3679, -0.8) = -0.8
    np.testing.assert_allclose(loss.numpy()[0, 1:], [math.exp(0.5), 0.8], rtol=1e-5)
    assert st["clip_low"].numpy()[0].tolist() == [0.0, 0.0, 1.0]
    capped, _ = policy_loss(ObjectiveSpec(delta=1.5), LOGP, OLD, tf.constant([-1.0]), MASK)
    np.testing.assert_allclose(capped.numpy()[0, 1:], [1.5, 0.8], rtol=1e-5)


def test_clip_higher_widens_only_the_upper_bound():
    loss, _ = policy_loss(ObjectiveSpec(epsilon_low=0.2, epsilon_high=0.28), LOGP, OLD, tf.constant([2.0]), MASK)
    np.testing.assert_allclose(loss.numpy()[0, 1:], [-2 * 1.28, -2 * math.exp(-1)], rtol=1e-5)


def test_sequence_level_ratio_is_the_geometric_mean_over_completion_tokens():
    # mean log-ratio over the two masked tokens = (0.5 - 1) / 2 = -0.25 → ρ = e^-0.25 = 0.7788 ≥ 0.8? no → clipped
    spec = ObjectiveSpec(importance_sampling="sequence")
    loss, st = policy_loss(spec, LOGP, OLD, tf.constant([2.0]), MASK)
    rho = math.exp(-0.25)
    np.testing.assert_allclose(loss.numpy()[0, 1:], [-2 * rho, -2 * rho], rtol=1e-5)   # min(2ρ, 1.6) = 2ρ
    np.testing.assert_allclose(st["ratio"].numpy()[0], [rho] * 3, rtol=1e-5)


def test_k1_and_k3_kl_terms():
    logp, ref = tf.constant([[-1.0, -2.0]]), tf.constant([[-1.5, -2.0]])
    np.testing.assert_allclose(kl_estimate(logp, ref, "k1").numpy(), [[0.5, 0.0]], atol=1e-6)
    np.testing.assert_allclose(kl_estimate(logp, ref, "k3").numpy(), [[math.exp(-0.5) + 0.5 - 1, 0.0]], atol=1e-6)
    spec = ObjectiveSpec(beta=0.1, kl_estimator="k3")
    lp = tf.constant([[0.0, -1.0]])
    loss, st = policy_loss(spec, lp, lp, tf.constant([0.0]), tf.constant([[0.0, 1.0]]), ref_logp=tf.constant([[0.0, -1.5]]))
    np.testing.assert_allclose(loss.numpy()[0, 1], 0.1 * (math.exp(-0.5) + 0.5 - 1), rtol=1e-5)
    with pytest.raises(ConfigError, match="ref_logp"):
        policy_loss(spec, lp, lp, tf.constant([0.0]), tf.constant([[0.0, 1.0]]))


PER_TOKEN = tf.constant([[1.0, 2.0, 3.0], [4.0, 5.0, 0.0], [7.0, 7.0, 7.0]])
AGG_MASK = tf.constant([[0.0, 1.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
ROWS = tf.constant([1.0, 1.0, 0.0])   # the third row is padding


@pytest.mark.parametrize("loss_type, want_loss, want_weight", [
    ("grpo", (2.5 + 5.0) / 2, 2.0),          # per-sequence means 2.5 and 5, over 2 real rows
    ("bnpo", 10.0 / 3, 1.0),                 # token mean of the micro-batch, weight 1
    ("dapo", 10.0 / 3, 3.0),                 # token mean, weighted by its 3 tokens
    ("dr_grpo", 10.0 / (2 * 4), 2.0),        # Σ / (rows · L_max = 4)
])
def test_loss_aggregations(loss_type, want_loss, want_weight):
    loss, w = aggregate(ObjectiveSpec(loss_type=loss_type, max_completion_len=4), PER_TOKEN, AGG_MASK, ROWS)
    assert float(loss) == pytest.approx(want_loss, rel=1e-6)
    assert float(w) == pytest.approx(want_weight)


def test_on_policy_gradient_is_minus_advantage_per_token():
    """With π_old = stop_gradient(π_θ) (num_iterations = 1) the ratio is 1 and d loss / d logp_t = −A·m_t / Σm
    for the dapo token mean: the plain policy gradient."""
    logp = tf.Variable([[0.0, -1.0, -2.0]])
    with tf.GradientTape() as tape:
        per_tok, _ = policy_loss(ObjectiveSpec(), logp, tf.stop_gradient(logp), tf.constant([1.5]), MASK)
        loss, _ = aggregate(ObjectiveSpec(), per_tok, MASK, tf.constant([1.0]))
    np.testing.assert_allclose(tape.gradient(loss, logp).numpy(), [[0.0, -0.75, -0.75]], rtol=1e-6)


def test_token_logprobs_and_entropy_by_hand():
    # V = 2; position 0 predicts token 1 with logits (ln 3, 0) → p = (3/4, 1/4)
    logits = tf.constant([[[math.log(3.0), 0.0], [0.0, 0.0], [5.0, 5.0]]])
    ids = tf.constant([[0, 1, 0]])
    lp = token_logprobs(logits, ids).numpy()[0]
    np.testing.assert_allclose(lp, [0.0, math.log(0.25), math.log(0.5)], rtol=1e-6)
    ent = token_entropy(logits).numpy()[0]
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    np.testing.assert_allclose(ent, [0.0, h, math.log(2.0)], rtol=1e-6)


def test_spec_validation():
    with pytest.raises(ConfigError, match="loss_type"):
        ObjectiveSpec(loss_type="ppo")
    with pytest.raises(ConfigError, match="delta"):
        ObjectiveSpec(delta=1.1)
    with pytest.raises(ConfigError, match="importance_sampling"):
        ObjectiveSpec(importance_sampling="segment")
