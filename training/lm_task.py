"""The causal-LM task on packed rows: next-token CE + MTP + the sequence-wise balance loss.

Pretraining and context extension both train with it; later phases (SFT) reuse it with a loss
mask. Batches are {input_ids, segment_ids, positions} (B, T) int32 as written by the pack phase:
attention never crosses a document (segment) boundary and positions restart per document.
"""
from __future__ import annotations

from dataclasses import dataclass

import tensorflow as tf

from model.losses import causal_lm_loss, mtp_loss, shift_targets, total_sequence_aux_loss
from training.loop import StepOutput

NO_TARGETS_MESSAGE = "a training batch has no loss targets (its loss_mask / assistant mask is all zero)"


@dataclass(frozen=True)
class CausalLMTask:
    mtp_weight: float = 0.3
    aux_loss_alpha: float = 1e-4
    # SFT: a training micro-batch whose loss mask selects no target is an error, not a silent
    # zero loss (an all-zero assistant mask is the classic chat-template bug).
    require_targets: bool = False

    def weight(self, batch):
        """Count of the targets causal_lm_loss averages over (the same validity mask)."""
        _, valid = shift_targets(batch["input_ids"], batch.get("loss_mask"), 1, batch["segment_ids"])
        return tf.reduce_sum(valid)

    def compute(self, model, batch, training: bool) -> StepOutput:
        ids, seg = batch["input_ids"], batch["segment_ids"]                 # (B, T)
        loss_mask = batch.get("loss_mask")
        cfg = model.cfg
        use_mtp = training and self.mtp_weight > 0 and cfg.num_nextn_predict_layers > 0
        out = model.forward(ids, position_ids=batch.get("positions"), segment_ids=seg,
                            training=training, return_router=True, with_mtp=use_mtp)
        lm = causal_lm_loss(out["logits"], ids, loss_mask, segment_ids=seg)
        if training and self.require_targets:
            with tf.control_dependencies([tf.debugging.assert_greater(
                    self.weight(batch), 0.0, message=NO_TARGETS_MESSAGE)]):
                lm = tf.identity(lm)
        if not training:
            # Held-out numbers are the plain next-token loss (perplexity = exp of it).
            return StepOutput(lm, {"loss": lm})
        return with_model_terms(lm, {"lm_loss": lm}, model, out, batch, use_mtp=use_mtp,
                                mtp_weight=self.mtp_weight, aux_loss_alpha=self.aux_loss_alpha)


def with_model_terms(loss, metrics: dict, model, out: dict, batch, *, use_mtp: bool, mtp_weight: float,
                     aux_loss_alpha: float) -> StepOutput:
    """The training StepOutput of `loss` plus the DeepSeek-V3 terms every causal-LM phase adds:
    the MTP loss on hard labels (when use_mtp) and the sequence-wise balance loss of the MoE
    routers (padding tokens excluded from load)."""
    ids, seg = batch["input_ids"], batch["segment_ids"]                 # (B, T)
    metrics = dict(metrics)
    if use_mtp:
        mtp = mtp_loss(out["mtp_logits"], ids, batch.get("loss_mask"), weight=mtp_weight, segment_ids=seg)
        metrics["mtp_loss"] = mtp
        loss = loss + mtp
    token_mask = tf.not_equal(seg, 0)                                   # (B, T) padding excluded
    routers = out.get("router", [])
    if routers and aux_loss_alpha > 0:
        b, t = tf.shape(ids)[0], tf.shape(ids)[1]
        aux = total_sequence_aux_loss(routers, b, t, model.cfg.num_experts_per_tok, aux_loss_alpha,
                                      token_mask=token_mask, segment_ids=seg)
        metrics["aux_loss"] = aux
        loss = loss + aux
    metrics["loss"] = loss
    return StepOutput(loss, metrics, routers, token_mask)
