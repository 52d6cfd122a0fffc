"""Agent-distillation losses: structured agent distillation (SAD) and process-step supervision.

Batches are agent rows (components/agent/dataset.py) of (B, T) features: input_ids, segment_ids
and the 0/1 token masks named below. Targets are aligned as `model.losses.shift_targets` does:
position i predicts token i+1, and position i counts for a mask m when the TARGET token i+1 has
m = 1 and lies in position i's own, non-padding document. Everything is float32.

SAD (arXiv 2505.13820), with m_r / m_a the reason / action masks of the targets:
  w(i)      = λ_r · m_r(i) + λ_a · m_a(i)          (a token in both spans gets λ_r + λ_a)
  KL form   L = Σ_i w(i) · KL(p_T(i) ‖ p_S(i)) / Σ_i w(i)   (both at temperature τ, no τ² factor)
  CE form   L = Σ_i w(i) · −log p_S(t_{i+1} | i) / Σ_i w(i)   (only teacher *text* available)
  With a teacher the SAD term is α · KL form + (1 − α) · CE form (alpha, default 1 = the KL
  form alone; the distill phase passes distill.alpha, as logit KD mixes its KL with CE).
  Normalised by the total weight Σ_i w(i), so L is a weighted mean per target token: it stays on
  the scale of a plain CE / KL whatever the span lengths, and λ_r : λ_a sets how much one
  reason token counts against one action token (scaling both λ by c leaves L unchanged).
  Observation tokens are in neither mask: they get no loss. No target at all gives L = 0.
Process-step supervision (seed "Knowledge Distillation Guide"), with ℓ(i) = −log p_S(t_{i+1} | i):
  tool-selection  on the targets in tool_name_mask (weight tool_weight, default 0.7)
  JSON validity   on the targets in mask_valid_json_tokens (weight json_weight, default 0.3)
  normalize="span" (default): each term is Σ_mask ℓ(i) / Σ_i w(i) — the SAD term's own
      denominator, so a tool-name target counts (its SAD weight + tool_weight) against the span
      tokens' w: an emphasis inside one per-target mean.
  normalize="term": each term is its own mean, Σ_mask ℓ(i) / Σ_mask 1 — a tool-name target then
      weighs tool_weight / (tool-name targets in the batch), tens of times a span token
      (docs/agent.md, "Learning check", has what each choice did to a student).
  (0 when the batch has no such target or does not carry the mask).
Combined: L = L_SAD + tool_weight · L_tool + json_weight · L_json. Reported metrics tool_loss /
json_loss are the plain means over their targets, whichever normalisation trains.
"""
from __future__ import annotations

from dataclasses import dataclass

import tensorflow as tf

from common.errors import ConfigError
from model.losses import shift_targets
from model.ops.softmax_xent import sparse_softmax_xent

# Batch keys of agent rows. All (T,) int64 in the TFRecords; masks are 0/1.
REASON_MASK = "reason_mask"
ACTION_MASK = "action_mask"
TOOL_NAME_IDS = "tool_name_ids"            # registry index of the tool named at the token, -1 elsewhere
TOOL_NAME_MASK = "tool_name_mask"
GOLD_JSON_IDS = "gold_json_text_ids"       # input_ids on valid-JSON argument tokens, -1 elsewhere
JSON_MASK = "mask_valid_json_tokens"
TOOL_RESULT_FIELDS = "tool_result_fields"  # 1 + index of the reused Observation, 0 elsewhere
INTEGRATION_MASK = "integration_mask"
SPAN_FEATURES = (REASON_MASK, ACTION_MASK)
PROCESS_FEATURES = (TOOL_NAME_IDS, TOOL_NAME_MASK, GOLD_JSON_IDS, JSON_MASK, TOOL_RESULT_FIELDS, INTEGRATION_MASK)
# Value of each feature on padding and where nothing is marked (a reader's default_value).
FEATURE_FILL = {REASON_MASK: 0, ACTION_MASK: 0, TOOL_NAME_IDS: -1, TOOL_NAME_MASK: 0, GOLD_JSON_IDS: -1,
                JSON_MASK: 0, TOOL_RESULT_FIELDS: 0, INTEGRATION_MASK: 0}


@dataclass(frozen=True)
class AgentLossSpec:
    """Weights of the agent-distillation objective (the seed's process_supervision section)."""

    lambda_reason: float = 1.0    # λ_r: weight of REASON targets in the SAD term
    lambda_act: float = 1.0       # λ_a: weight of ACT targets in the SAD term
    tool_weight: float = 0.7      # tool-selection CE
    json_weight: float = 0.3      # JSON-validity CE
    temperature: float = 1.0      # τ of both distributions in the SAD KL
    alpha: float = 1.0            # with a teacher: SAD = α·KL form + (1 − α)·CE form (1 = KL only)
    normalize: str = "span"       # process terms over Σ w ("span") or over their own targets ("term")

    def __post_init__(self):
        for k in ("lambda_reason", "lambda_act", "tool_weight", "json_weight"):
            v = getattr(self, k)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
                raise ConfigError(f"agent loss {k}: must be a number >= 0, got {v!r}")
        if self.lambda_reason + self.lambda_act <= 0:
            raise ConfigError("agent loss lambda_reason + lambda_act: must be > 0 (the SAD term would be empty)")
        if not isinstance(self.alpha, (int, float)) or isinstance(self.alpha, bool) or not 0 <= self.alpha <= 1:
            raise ConfigError(f"agent loss alpha: must be in [0, 1], got {self.alpha!r}")
        if self.normalize not in ("span", "term"):
            raise ConfigError(f"agent loss normalize: 'span' or 'term', got {self.normalize!r}")
        if not isinstance(self.temperature, (int, float)) or not self.temperature > 0:
            raise ConfigError(f"agent loss temperature: must be > 0, got {self.temperature!r}")


def target_mask(input_ids, mask, segment_ids=None):
    """(B, T) float: position i counts when token i+1 is marked in `mask` and in i's document."""
    return shift_targets(input_ids, mask, 1, segment_ids)[1]


def _weighted_mean(per_pos, weights):
    """Σ w · x / Σ w over (B, T); 0 when Σ w = 0."""
    return tf.math.divide_no_nan(tf.reduce_sum(per_pos * weights), tf.reduce_sum(weights))


def _token_ce(student_logits, input_ids):
    """(B, T) −log p_S(t_{i+1} | i); the last position's label is a dummy its masks drop."""
    labels, _ = shift_targets(input_ids, None, 1)
    return sparse_softmax_xent(student_logits, labels)


def _forward_kl(student_logits, teacher_logits, temperature):
    """(B, T) KL(p_T ‖ p_S) at τ; terms with p_T = 0 are 0."""
    lp_s = tf.nn.log_softmax(tf.cast(student_logits, tf.float32) / temperature, axis=-1)   # (B, T, V)
    lp_t = tf.nn.log_softmax(tf.cast(teacher_logits, tf.float32) / temperature, axis=-1)
    p_t = tf.exp(lp_t)
    return tf.reduce_sum(tf.where(p_t > 0, p_t * (lp_t - lp_s), tf.zeros_like(p_t)), axis=-1)


def sad_weights(input_ids, reason_mask, action_mask, segment_ids=None, *, lambda_reason: float = 1.0,
                lambda_act: float = 1.0):
    """(B, T) w(i) = λ_r · m_r(i+1) + λ_a · m_a(i+1) over valid targets."""
    return (lambda_reason * target_mask(input_ids, reason_mask, segment_ids)
            + lambda_act * target_mask(input_ids, action_mask, segment_ids))


def sad_kl_loss(student_logits, teacher_logits, input_ids, reason_mask, action_mask, segment_ids=None, *,
                lambda_reason: float = 1.0, lambda_act: float = 1.0, temperature: float = 1.0):
    """Span-weighted KL(p_T ‖ p_S), normalised by Σ w (module docstring). Logits (B, T, V)."""
    w = sad_weights(input_ids, reason_mask, action_mask, segment_ids, lambda_reason=lambda_reason,
                    lambda_act=lambda_act)
    return _weighted_mean(_forward_kl(student_logits, teacher_logits, temperature), w)


def sad_ce_loss(student_logits, input_ids, reason_mask, action_mask, segment_ids=None, *,
                lambda_reason: float = 1.0, lambda_act: float = 1.0):
    """Span-weighted next-token CE on the teacher's text, normalised by Σ w."""
    w = sad_weights(input_ids, reason_mask, action_mask, segment_ids, lambda_reason=lambda_reason,
                    lambda_act=lambda_act)
    return _weighted_mean(_token_ce(student_logits, input_ids), w)


def masked_ce_loss(student_logits, input_ids, mask, segment_ids=None):
    """Mean next-token CE over the targets marked in `mask` (tool-selection / JSON-validity)."""
    return _weighted_mean(_token_ce(student_logits, input_ids), target_mask(input_ids, mask, segment_ids))


def tool_selection_loss(student_logits, input_ids, tool_name_mask, segment_ids=None):
    """CE on the tool-name tokens (unweighted; `agent_distill_loss` applies tool_weight)."""
    return masked_ce_loss(student_logits, input_ids, tool_name_mask, segment_ids)


def json_validity_loss(student_logits, input_ids, json_mask, segment_ids=None):
    """CE on the valid-JSON argument tokens (unweighted; `agent_distill_loss` applies json_weight)."""
    return masked_ce_loss(student_logits, input_ids, json_mask, segment_ids)


def masked_accuracy(student_logits, input_ids, mask, segment_ids=None):
    """Share of the targets marked in `mask` whose argmax prediction is the target token."""
    labels, _ = shift_targets(input_ids, None, 1)
    hit = tf.cast(tf.equal(tf.argmax(student_logits, axis=-1, output_type=tf.int32), tf.cast(labels, tf.int32)),
                  tf.float32)                                               # (B, T)
    return _weighted_mean(hit, target_mask(input_ids, mask, segment_ids))


def agent_distill_loss(student_logits, batch, spec: AgentLossSpec = AgentLossSpec(), teacher_logits=None):
    """(total loss, metrics) of one batch: SAD (KL form with teacher_logits (B, T, V), else the CE
    form) + tool_weight · L_tool + json_weight · L_json (normalised as spec.normalize says). A batch without tool_name_mask /
    mask_valid_json_tokens (process supervision off) gets 0 for that term.

    metrics: sad, tool_loss, json_loss (unweighted terms), tool_name_acc, json_token_acc (argmax
    accuracy on those targets; 0 without them)."""
    ids, seg = batch["input_ids"], batch.get("segment_ids")
    ce_form = sad_ce_loss(student_logits, ids, batch[REASON_MASK], batch[ACTION_MASK], seg,
                          lambda_reason=spec.lambda_reason, lambda_act=spec.lambda_act)
    if teacher_logits is not None:
        kl_form = sad_kl_loss(student_logits, teacher_logits, ids, batch[REASON_MASK], batch[ACTION_MASK], seg,
                              lambda_reason=spec.lambda_reason, lambda_act=spec.lambda_act,
                              temperature=spec.temperature)
        sad = spec.alpha * kl_form + (1.0 - spec.alpha) * ce_form if spec.alpha < 1 else kl_form
    else:
        sad = ce_form
    zero = tf.constant(0.0)
    tool = tool_selection_loss(student_logits, ids, batch[TOOL_NAME_MASK], seg) if TOOL_NAME_MASK in batch else zero
    js = json_validity_loss(student_logits, ids, batch[JSON_MASK], seg) if JSON_MASK in batch else zero
    train_tool, train_js = tool, js
    if spec.normalize == "span":
        w_sum = tf.reduce_sum(sad_weights(ids, batch[REASON_MASK], batch[ACTION_MASK], seg,
                                          lambda_reason=spec.lambda_reason, lambda_act=spec.lambda_act))
        ce = _token_ce(student_logits, ids)                                  # (B, T)

        def over_w(mask_key):
            if mask_key not in batch:
                return zero
            return tf.math.divide_no_nan(tf.reduce_sum(ce * target_mask(ids, batch[mask_key], seg)), w_sum)
        train_tool, train_js = over_w(TOOL_NAME_MASK), over_w(JSON_MASK)
    metrics = {
        "sad": sad, "tool_loss": tool, "json_loss": js,
        "tool_name_acc": masked_accuracy(student_logits, ids, batch[TOOL_NAME_MASK], seg)
        if TOOL_NAME_MASK in batch else zero,
        "json_token_acc": masked_accuracy(student_logits, ids, batch[JSON_MASK], seg) if JSON_MASK in batch else zero,
    }
    return sad + spec.tool_weight * train_tool + spec.json_weight * train_js, metrics
