"""The distillation task: a student trained towards a teacher's next-token distributions.

It implements the engine's Task protocol (training/loop.py) like CausalLMTask: the student runs
one forward on the packed batch {input_ids, segment_ids, positions[, loss_mask]} (B, T); the
teacher's view of the same positions comes either
  online  — an in-process teacher DecoderLM the task holds, run with training=False under
            tf.stop_gradient (the Trainer only differentiates the student's variables anyway;
            stop_gradient keeps the tape from recording the teacher at all), or
  offline — the batch's teacher_topk_ids / teacher_topk_logprobs (B, T, K) written by
            training/teacher_logits.py; the divergences are then the bucketed top-k ones
            (training/distill_losses.py), which equal the full ones at k = V.
Targets are those of the causal-LM loss: position i predicts token i+1 and counts when that
token is a loss target (loss_mask, SFT data) inside position i's own document (segment_ids).

Objective (DistillSpec), CE = hard-label next-token CE of the student at temperature 1:
  'ce'          CE (the no-teacher baseline; the teacher still gives kl_to_teacher)
  'kd'          α · τ² · KL(p_T^τ ‖ p_S^τ) + (1 − α) · CE
  'forward_kl'  α · KL(p_T^τ ‖ p_S^τ) + (1 − α) · CE
  'reverse_kl'  α · KL(p_S^τ ‖ p_T^τ) + (1 − α) · CE
  'jsd'         α · JSD_β(p_S^τ, p_T^τ) + (1 − α) · CE   (β = 0 forward KL, β = 1 reverse KL)
plus, in training, the MTP loss on hard labels and the student's sequence-wise balance loss,
as CausalLMTask adds them. Only 'kd' scales by τ² (the classic soft-target convention); the
others are the plain divergences at τ.

Metrics: loss (the total), ce, distill_loss (the divergence term before α), kl_to_teacher
(forward KL at τ = 1 online — the number the learning check follows; offline it is the bucketed
forward KL at the temperature the top-k log-probs were stored at, which equals τ, see
check_teacher_data), mtp_loss and aux_loss when present. In evaluation (training=False) the
returned loss is the held-out CE (so the engine's eval_loss / eval_perplexity stay the
student's next-token numbers) and the metrics carry ce, distill_loss and kl_to_teacher;
`evaluate_distill` averages them over the eval split.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import tensorflow as tf

from common.errors import ConfigError, UserError
from model.losses import shift_targets
from training import distill_losses as dl
from training.data import TEACHER_IDS, TEACHER_LOGPROBS, PackedData, eval_stream
from training.lm_task import with_model_terms
from training.loop import StepOutput

LOSSES = ("kd", "forward_kl", "reverse_kl", "jsd", "ce")


@dataclass(frozen=True)
class DistillSpec:
    loss: str = "kd"              # one of LOSSES
    alpha: float = 0.5            # weight of the divergence; 1 − alpha goes to hard-label CE
    temperature: float = 2.0      # τ of both distributions in the divergence
    beta: float = 0.5             # JSD_β mixture weight of the teacher ('jsd' only)
    mtp_weight: float = 0.3       # λ of the MTP loss (hard labels); 0 = off
    aux_loss_alpha: float = 1e-4  # sequence-wise balance loss of the student's MoE layers

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ConfigError(f"distill loss: {self.loss!r} is not one of {', '.join(LOSSES)}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"distill alpha: must be in [0, 1], got {self.alpha}")
        if not self.temperature > 0:
            raise ConfigError(f"distill temperature: must be > 0, got {self.temperature}")
        if not 0.0 <= self.beta <= 1.0:
            raise ConfigError(f"distill beta: must be in [0, 1], got {self.beta}")
        if self.mtp_weight < 0 or self.aux_loss_alpha < 0:
            raise ConfigError("distill mtp_weight / aux_loss_alpha: must be >= 0")


@dataclass(frozen=True, eq=False)
class DistillTask:
    spec: DistillSpec = DistillSpec()
    teacher: Any = None           # online teacher DecoderLM; None = offline top-k batch features

    def weight(self, batch):
        """Count of the targets the losses average over (causal_lm_loss's validity mask)."""
        _, valid = shift_targets(batch["input_ids"], batch.get("loss_mask"), 1, batch["segment_ids"])
        return tf.reduce_sum(valid)

    def _divergences(self, s_logits, batch, valid):
        """(distill term D, kl_to_teacher) from the online teacher or the offline features."""
        spec, tau = self.spec, self.spec.temperature
        offline = TEACHER_IDS in batch
        if offline and self.teacher is not None:
            raise UserError("distillation: the data carries offline teacher top-k features and an online "
                            "teacher was given too; use one (drop the teacher or use the plain data)")
        if offline:
            ids, lps = batch[TEACHER_IDS], batch[TEACHER_LOGPROBS]          # (B, T, K)
            kl = dl.topk_forward_kl(s_logits, ids, lps, valid, tau)
            fns = {"kd": lambda: tau ** 2 * kl,
                   "forward_kl": lambda: kl,
                   "reverse_kl": lambda: dl.topk_reverse_kl(s_logits, ids, lps, valid, tau),
                   "jsd": lambda: dl.topk_generalized_jsd(s_logits, ids, lps, valid, spec.beta, tau)}
            return (fns[spec.loss]() if spec.loss != "ce" else None), kl
        if self.teacher is None:
            raise UserError("distillation: no teacher — give DistillTask an online teacher model or "
                            "train on data with offline teacher top-k features (teacher_logits.py)")
        t_out = self.teacher.forward(batch["input_ids"], position_ids=batch.get("positions"),
                                     segment_ids=batch["segment_ids"], training=False)
        t_logits = tf.stop_gradient(tf.cast(t_out["logits"], tf.float32))   # (B, T, V)
        fns = {"kd": lambda: tau ** 2 * dl.forward_kl(s_logits, t_logits, valid, tau),
               "forward_kl": lambda: dl.forward_kl(s_logits, t_logits, valid, tau),
               "reverse_kl": lambda: dl.reverse_kl(s_logits, t_logits, valid, tau),
               "jsd": lambda: dl.generalized_jsd(s_logits, t_logits, valid, spec.beta, tau)}
        return (fns[spec.loss]() if spec.loss != "ce" else None), dl.forward_kl(s_logits, t_logits, valid, 1.0)

    def compute(self, model, batch, training: bool) -> StepOutput:
        spec = self.spec
        ids, seg = batch["input_ids"], batch["segment_ids"]                 # (B, T)
        loss_mask = batch.get("loss_mask")
        cfg = model.cfg
        use_mtp = training and spec.mtp_weight > 0 and cfg.num_nextn_predict_layers > 0
        out = model.forward(ids, position_ids=batch.get("positions"), segment_ids=seg,
                            training=training, return_router=True, with_mtp=use_mtp)
        s_logits = tf.cast(out["logits"], tf.float32)                       # (B, T, V)
        labels, valid = shift_targets(ids, loss_mask, 1, seg)               # (B, T) each
        ce = dl.ce_loss(s_logits, labels, valid)
        distill, kl = self._divergences(s_logits, batch, valid)
        objective = ce if distill is None else spec.alpha * distill + (1.0 - spec.alpha) * ce
        metrics = {"ce": ce, "distill_loss": ce if distill is None else distill, "kl_to_teacher": kl}
        if not training:
            return StepOutput(ce, {**metrics, "loss": ce})
        return with_model_terms(objective, metrics, model, out, batch, use_mtp=use_mtp,
                                mtp_weight=spec.mtp_weight, aux_loss_alpha=spec.aux_loss_alpha)


def evaluate_distill(task: DistillTask, model, data: PackedData, *, batch_size: int,
                     max_batches: int) -> dict[str, float]:
    """Held-out means of ce, distill_loss and kl_to_teacher over the eval split (weighted by
    targets, as the engine weights eval_loss): the numbers a distillation learning check reads."""
    @tf.function(autograph=False)
    def one(batch):
        out = task.compute(model, batch, False)
        w = tf.cast(task.weight(batch), tf.float32)
        return {k: tf.cast(v, tf.float32) * w for k, v in out.metrics.items()}, w

    sums: dict[str, float] = {}
    count = 0.0
    for batch in eval_stream(data.eval_files, data.seq_len, batch_size, max_batches):
        s, w = one(batch)
        for k, v in s.items():
            sums[k] = sums.get(k, 0.0) + float(v)
        count += float(w)
    return {f"eval_{k}": v / count for k, v in sums.items()} if count else {}
