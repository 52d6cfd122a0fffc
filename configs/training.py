"""Typed config of the training phases: the shared engine settings and each phase's section.

`TrainerConfig` is what the one training engine (training/) reads; every phase section embeds
its own copy, so pretraining and context extension can differ in steps, learning rate or batch
without a change to one invalidating the other's cache.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class TrainerConfig(_Strict):
    """The training engine: optimisation, batching, checkpointing, logging, distribution."""

    steps: int = Field(1000, ge=1)
    # Rows per replica per micro-step; the global batch is
    # micro_batch_size × grad_accum_steps × replicas (workers × devices).
    micro_batch_size: int = Field(8, ge=1)
    grad_accum_steps: int = Field(1, ge=1)
    # AdamW (decoupled weight decay, PyTorch semantics: w -= lr·wd·w) with linear warmup then
    # cosine decay to min_lr_ratio·lr.
    lr: float = Field(3e-4, gt=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    warmup_steps: int = Field(100, ge=0)
    weight_decay: float = Field(0.1, ge=0)
    beta1: float = Field(0.9, gt=0, lt=1)
    beta2: float = Field(0.95, gt=0, lt=1)
    eps: float = Field(1e-8, gt=0)
    # Global gradient-norm clipping (0 = off).
    clip_norm: float = Field(1.0, ge=0)
    # DeepSeek-V3 training terms: MTP loss weight λ, sequence-wise balance loss α, routing-bias
    # update speed γ (aux-loss-free balancing).
    mtp_weight: float = Field(0.3, ge=0)
    aux_loss_alpha: float = Field(1e-4, ge=0)
    bias_update_gamma: float = Field(1e-3, ge=0)
    # A step whose loss or gradient is NaN/Inf is skipped and counted; this many in a row stop
    # the run with an error.
    max_nonfinite_steps: int = Field(5, ge=1)
    # Checkpoint every K steps and at the end; keep the newest N.
    checkpoint_every: int = Field(100, ge=1)
    keep_checkpoints: int = Field(3, ge=1)
    # Held-out evaluation every K steps (0 = only at the end) over at most `eval_batches`.
    eval_every: int = Field(0, ge=0)
    eval_batches: int = Field(20, ge=1)
    log_every: int = Field(10, ge=1)
    seed: int = 0
    # Rows held in the shuffle buffer (per epoch; a new seeded order every epoch).
    shuffle_buffer: int = Field(10_000, ge=1)
    # auto = bf16 compute on GPU, fp32 on CPU.
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # auto = MultiWorkerMirroredStrategy when TF_CONFIG names more than one worker,
    # MirroredStrategy with more than one GPU, else the default (one device).
    strategy: Literal["auto", "one_device", "mirrored", "multi_worker"] = "auto"
    # TF op determinism: on CPU a resumed run ends bit-identical to an uninterrupted one.
    deterministic: bool = True
    # Compile the train step with XLA (jit_compile); off by default (CPU XLA is slower here).
    jit_compile: bool = False

    @model_validator(mode="after")
    def _schedule(self) -> TrainerConfig:
        if self.warmup_steps > self.steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) > steps ({self.steps}): "
                             "the learning rate would never finish warming up")
        return self


class PretrainConfig(_Strict):
    """Pretraining on the packed rows of the data phases."""

    # Model preset name (model/presets) or a path to an HF config.json; vocab_size comes from the
    # trained tokenizer and max_position_embeddings from the packed seq_len.
    model: str = "tiny"
    # HF config.json keys to override on the preset (e.g. {"num_hidden_layers": 4}).
    model_overrides: dict[str, Any] = {"rope_scaling": None}
    trainer: TrainerConfig = TrainerConfig()


class PasskeyConfig(_Strict):
    """Synthetic passkey retrieval (filler text from the eval corpus, a key to recall)."""

    samples: int = Field(32, ge=1)
    digits: int = Field(5, ge=1, le=12)
    # Context lengths as multiples of the original (pretraining) context.
    multiples: list[float] = [1.0, 2.0, 4.0]
    seed: int = 1234


class ContextExtensionConfig(_Strict):
    """YaRN context extension: stretch RoPE by `factor` and continue at the longer length."""

    enabled: bool = True
    factor: float = Field(4.0, gt=1.0)
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float = 1.0
    mscale_all_dim: float = 1.0
    # Long-document rows: documents are packed into rows of factor × pretraining seq_len;
    # only documents at least this many tokens long are used (0 = all documents).
    min_doc_tokens: int = Field(0, ge=0)
    # Share of synthetic passkey rows mixed into the extension data (0 = none, 1 = only them).
    passkey_train_fraction: float = Field(0.0, ge=0, le=1)
    # Train passkey rows on the answer tokens only (a retrieval drill) instead of every token.
    passkey_answer_only_loss: bool = False
    trainer: TrainerConfig = TrainerConfig(steps=200, warmup_steps=20, lr=1e-4)
    passkey: PasskeyConfig = PasskeyConfig()
