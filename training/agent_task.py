"""The agent-distillation task: a student trained on agent trajectories' teacher-written spans.

It implements the engine's Task protocol (training/loop.py) like DistillTask. Batches are agent
rows (components/agent/dataset.py; training/data.py parses the masks their config.json lists):
{input_ids, segment_ids, positions, loss_mask, reason_mask, action_mask[, tool_name_mask,
mask_valid_json_tokens, …]} (B, T). The objective is training/agent_losses.agent_distill_loss:
  SAD     span-weighted (λ_r on REASON, λ_a on ACT targets) KL(p_T ‖ p_S) when an online teacher
          DecoderLM is given — run with training=False under tf.stop_gradient, as DistillTask
          does — else the span-weighted CE on the teacher's text;
  + tool_weight · L_tool + json_weight · L_json (process-step supervision, 0 without the masks),
plus, in training, the MTP loss (hard labels on loss_mask = reason OR action) and the student's
sequence-wise balance loss (lm_task.with_model_terms), and — on the steps whose batch carries
rollout features (training/agent_validity.ValiditySource) with validity_weight > 0 —
validity_weight · L_valid, the policy gradient of the parse reward on the student's own actions.

weight(batch) = Σ_i w(i), the SAD weights the loss is normalised by: the engine scales each
micro-batch by its share of the step's total weight, so the step's SAD term is the weighted
mean over all its targets (the process terms, with their own denominators, are averaged by the
same shares — an approximation when micro-batches differ in tool-name / JSON token counts).

Metrics: loss (the total), sad, ce (span-weighted CE of the student, = sad without a teacher),
tool_loss, json_loss, tool_name_acc, json_token_acc, mtp_loss / aux_loss when present. In
evaluation the returned loss is `ce` (so the engine's eval_loss / eval_perplexity are the
student's next-token numbers on teacher-written tokens) and the metrics carry the rest.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import tensorflow as tf

from common.errors import UserError
from training import agent_losses as al
from training import agent_validity as av
from training.data import TEACHER_IDS
from training.lm_task import with_model_terms
from training.loop import StepOutput

METRICS = ("sad", "ce", "tool_loss", "json_loss", "tool_name_acc", "json_token_acc")   # + validity_loss when sampled


def _check_batch(batch) -> None:
    missing = [k for k in al.SPAN_FEATURES if k not in batch]
    if missing:
        raise UserError(f"agent distillation: the batch has no {', '.join(missing)} — train on agent rows "
                        "(components/agent/dataset.py) whose config.json lists them under 'features'")
    if TEACHER_IDS in batch:
        raise UserError("agent distillation: offline teacher top-k features are not supported; use an "
                        "online teacher or the teacher's trajectory text (no teacher)")


@dataclass(frozen=True, eq=False)
class AgentDistillTask:
    spec: al.AgentLossSpec = al.AgentLossSpec()
    teacher: Any = None           # online teacher DecoderLM; None = span-weighted CE on the text
    mtp_weight: float = 0.0       # λ of the MTP loss (hard labels on loss_mask); 0 = off
    aux_loss_alpha: float = 1e-4  # sequence-wise balance loss of the student's MoE layers
    validity_weight: float = 0.0  # weight of the sampled-action validity term (training/agent_validity.py)
    validity_temperature: float = 1.0   # τ the rollouts were sampled at (their log-probs are taken at it)

    def weight(self, batch):
        """Σ_i w(i): the λ-weighted count of REASON / ACT targets (float32 scalar)."""
        _check_batch(batch)
        return tf.reduce_sum(al.sad_weights(batch["input_ids"], batch[al.REASON_MASK], batch[al.ACTION_MASK],
                                            batch.get("segment_ids"), lambda_reason=self.spec.lambda_reason,
                                            lambda_act=self.spec.lambda_act))

    def teacher_logits(self, batch):
        """(B, T, V) float32 teacher logits under stop_gradient, or None without a teacher."""
        if self.teacher is None:
            return None
        t_out = self.teacher.forward(batch["input_ids"], position_ids=batch.get("positions"),
                                     segment_ids=batch["segment_ids"], training=False)
        return tf.stop_gradient(tf.cast(t_out["logits"], tf.float32))

    def compute(self, model, batch, training: bool) -> StepOutput:
        _check_batch(batch)
        spec = self.spec
        ids, seg = batch["input_ids"], batch["segment_ids"]                 # (B, T)
        use_mtp = training and self.mtp_weight > 0 and model.cfg.num_nextn_predict_layers > 0
        out = model.forward(ids, position_ids=batch.get("positions"), segment_ids=seg,
                            training=training, return_router=True, with_mtp=use_mtp)
        s_logits = tf.cast(out["logits"], tf.float32)                       # (B, T, V)
        objective, metrics = al.agent_distill_loss(s_logits, batch, spec, self.teacher_logits(batch))
        if self.teacher is None:
            metrics["ce"] = metrics["sad"]
        else:
            metrics["ce"] = al.sad_ce_loss(s_logits, ids, batch[al.REASON_MASK], batch[al.ACTION_MASK], seg,
                                           lambda_reason=spec.lambda_reason, lambda_act=spec.lambda_act)
        if not training:
            return StepOutput(metrics["ce"], {**metrics, "loss": metrics["ce"]})
        if av.ROLLOUT_IDS in batch and self.validity_weight > 0:
            # a sampling step (agent_validity.ValiditySource): the student's own actions, rewarded
            v_loss, v_metrics = av.validity_loss(model, batch, self.validity_temperature)
            objective = objective + self.validity_weight * v_loss
            metrics.update(v_metrics)
        return with_model_terms(objective, metrics, model, out, batch, use_mtp=use_mtp,
                                mtp_weight=self.mtp_weight, aux_loss_alpha=self.aux_loss_alpha)
