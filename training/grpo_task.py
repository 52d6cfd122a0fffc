"""The GRPO task: the engine's Task protocol (training/loop.py) over rollout batches.

A rollout batch (training/rollout_batch.py) holds B prompt + completion sequences, right-padded
to a fixed length T so the compiled step traces once:
  input_ids, segment_ids (1 on real tokens, 0 on padding), positions      (B, T) int32
  completion_mask   (B, T) float32, 1 on completion tokens that count (aligned like
                    token_logprobs: column t is token t, predicted from position t − 1)
  advantages        (B,) float32;  row_valid (B,) float32 (0 on rows that only fill the shape)
  old_logp          (B, T) float32, only with num_iterations > 1 (the rollout-time policy)
  ref_logp          (B, T) float32, only with β > 0 (the frozen reference model)
Log-probs are taken at the sampling temperature (logits / τ), the distribution the completions
were drawn from. The MoE balance terms ride along as in every causal-LM phase (the sequence-wise
aux loss; the engine's routing-bias update sees the real tokens' loads).
"""
from __future__ import annotations

from dataclasses import dataclass

import tensorflow as tf

from training.grpo_objective import (
    ObjectiveSpec,
    aggregate,
    masked_mean,
    policy_loss,
    token_entropy,
    token_logprobs,
)
from training.lm_task import with_model_terms
from training.loop import StepOutput

OLD_LOGP, REF_LOGP = "old_logp", "ref_logp"


@dataclass(frozen=True)
class GRPOTask:
    spec: ObjectiveSpec = ObjectiveSpec()
    temperature: float = 1.0
    aux_loss_alpha: float = 1e-4

    def weight(self, batch):
        _, w = aggregate(self.spec, tf.zeros_like(batch["completion_mask"]), batch["completion_mask"],
                         batch["row_valid"])
        return w

    def logprobs(self, model, batch, training: bool):
        """(B, T) log-probs of the batch's tokens at the sampling temperature, and the forward output."""
        out = model.forward(batch["input_ids"], position_ids=batch["positions"], segment_ids=batch["segment_ids"],
                            training=training, return_router=True)
        logits = tf.cast(out["logits"], tf.float32) / self.temperature          # (B, T, V)
        return token_logprobs(logits, batch["input_ids"]), logits, out

    def compute(self, model, batch, training: bool) -> StepOutput:
        spec = self.spec
        mask = batch["completion_mask"]                                          # (B, T)
        logp, logits, out = self.logprobs(model, batch, training)
        old = batch[OLD_LOGP] if OLD_LOGP in batch else tf.stop_gradient(logp)
        ref = batch.get(REF_LOGP)
        per_token, st = policy_loss(spec, logp, old, batch["advantages"], mask, ref_logp=ref)
        loss, _ = aggregate(spec, per_token, mask, batch["row_valid"])
        metrics = {
            "policy_loss": loss,
            "clip_ratio/low_mean": masked_mean(st["clip_low"], mask),
            "clip_ratio/high_mean": masked_mean(st["clip_high"], mask),
            "clip_ratio/region_mean": masked_mean(st["clip_low"] + st["clip_high"], mask),
            "ratio_mean": masked_mean(st["ratio"], mask),
            "entropy": masked_mean(tf.stop_gradient(token_entropy(logits)), mask),
        }
        if "kl" in st:
            metrics["kl"] = masked_mean(st["kl"], mask)
        if not training:
            return StepOutput(loss, {**metrics, "loss": loss})
        return with_model_terms(loss, metrics, model, out, batch, use_mtp=False, mtp_weight=0.0,
                                aux_loss_alpha=self.aux_loss_alpha)
