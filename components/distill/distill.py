"""The distillation phase: a smaller student learns the teacher's next-token distributions.

Steps (run_distill):
  1. teacher = an HF-layout model (the SFT phase's export by default); student = a smaller preset
     sized to the teacher's vocabulary (the two must share the tokenizer: checked);
  2. data = the SFT phase's rows (assistant-token targets), or any packed folder; with
     teacher_logits=offline the teacher's top-k log-probs are computed once over every row and
     stored beside them (OUTPUT/teacher_data/);
  3. the student's held-out numbers before training (CE, KL to the teacher), training through the
     shared engine with the distillation task (training/distill_task.py), the same numbers after;
     agent rows (config.json lists reason_mask / action_mask, components/agent/dataset.py) with
     distill.process_supervision.enabled train with the agent task instead
     (training/agent_task.py: SAD + tool-name / JSON-argument CE; online teacher, or with
     loss=ce the span-weighted CE on the trajectory text, no teacher) and report
     its held-out sad, tool_loss, json_loss, tool_name_acc, json_token_acc before and after;
  4. HF export of the student to OUTPUT/final/, report.json and the loss curve.
"""
from __future__ import annotations

import json
import os
from typing import Any

import tensorflow as tf

from common.errors import ConfigError, InputDataError
from common.fileio import atomic_write_text
from components.pretrain.pretrain import check_output_dir, export_final
from configs.training import DistillConfig
from model.decoder import num_weights
from training.data import check_rows, open_packed
from training.loop import Trainer, tokens_per_second
from training.strategy import Runtime, make_runtime

TEACHER_DATA_DIR = "teacher_data"


def student_config(cfg: DistillConfig, teacher_cfg, seq_len: int):
    """The student preset + overrides, with the teacher's vocabulary, special ids and at least seq_len context."""
    from model.config import ModelConfig

    base = ModelConfig.load(cfg.student_model).to_hf_dict()
    over = dict(cfg.student_overrides)
    if "vocab_size" in over and over["vocab_size"] != teacher_cfg.vocab_size:
        raise ConfigError(f"distill.student_overrides.vocab_size={over['vocab_size']} differs from the "
                          f"teacher's {teacher_cfg.vocab_size}: distillation needs one vocabulary")
    base.update(over)
    t = teacher_cfg.to_hf_dict()
    base.update(vocab_size=teacher_cfg.vocab_size, bos_token_id=t["bos_token_id"], eos_token_id=t["eos_token_id"])
    base["max_position_embeddings"] = max(int(over.get("max_position_embeddings", 0)), seq_len)
    return ModelConfig.from_hf_dict(base, source="distill.student_model")


def continue_from(cfg: DistillConfig, student_dir: str) -> DistillConfig:
    """cfg with the student taken from an HF-layout student folder (architecture and weights):
    a later distillation stage (agent distillation) continues the distilled student."""
    if not os.path.exists(os.path.join(student_dir, "config.json")):
        raise InputDataError(f"{student_dir}: not an HF-layout student model folder (no config.json)")
    with open(os.path.join(student_dir, "config.json"), encoding="utf-8") as f:
        context = int(json.load(f).get("max_position_embeddings", 0))
    # its own context is kept (student_config would otherwise size it to the rows)
    return cfg.model_copy(update={"student_model": os.path.join(student_dir, "config.json"),
                                  "student_overrides": {"max_position_embeddings": context},
                                  "student_init": student_dir})


def distill_spec(cfg: DistillConfig):
    from training.distill_task import DistillSpec
    return DistillSpec(loss=cfg.loss, alpha=cfg.alpha, temperature=cfg.temperature, beta=cfg.beta,
                       mtp_weight=cfg.trainer.mtp_weight, aux_loss_alpha=cfg.trainer.aux_loss_alpha)


def agent_spec(cfg: DistillConfig):
    from training.agent_losses import AgentLossSpec
    ps = cfg.process_supervision
    return AgentLossSpec(lambda_reason=ps.lambda_reason, lambda_act=ps.lambda_act, tool_weight=ps.tool_weight,
                         json_weight=ps.json_weight, temperature=cfg.temperature, normalize=ps.normalize,
                         alpha=cfg.alpha)


def uses_agent_task(cfg: DistillConfig, data) -> bool:
    """True when the rows carry the SAD span masks and process supervision is on."""
    from training.agent_losses import SPAN_FEATURES
    return cfg.process_supervision.enabled and all(f in data.extra_features for f in SPAN_FEATURES)


def _validity_inputs(tokenizer_json: str, data_dir: str):
    """(tokenizers.Tokenizer, pad id of the rows, reward) for the sampled-action validity term; the
    reward knows the tool registry the rows were built with (their config.json's tool_names)."""
    import functools

    from tokenizers import Tokenizer

    from components.agent.action_reward import action_reward
    from components.agent.process import DEFAULT_TOOLS
    if not os.path.exists(tokenizer_json):
        raise InputDataError(f"{tokenizer_json}: the validity term decodes the student's actions and needs "
                             "the tokenizer (pass --tokenizer or a teacher folder with tokenizer.json)")
    cfg_path = os.path.join(data_dir, "config.json")
    try:
        with open(cfg_path) as f:
            meta = json.load(f)
        pad_id = int(meta.get("pad_id", 0))
        tools = tuple(meta.get("tool_names") or DEFAULT_TOOLS)
    except (OSError, ValueError, TypeError, AttributeError) as e:
        raise InputDataError(f"{cfg_path}: unreadable pack config ({e})") from None
    return Tokenizer.from_file(tokenizer_json), pad_id, functools.partial(action_reward, tool_names=tools)


def run_distill(cfg: DistillConfig, teacher_dir: str | None, data_dir: str, tokenizer_dir: str | None,
                output_dir: str, *, runtime: Runtime | None = None, max_steps: int | None = None,
                checkpoint_every: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Distil the teacher (HF layout) into a new student trained on data_dir's rows."""
    import model as model_core
    from training.distill_task import DistillTask
    from training.teacher_logits import check_teacher_data, check_vocab, precompute_teacher_topk

    check_output_dir(output_dir)
    teacher_dir = cfg.teacher or teacher_dir
    if not teacher_dir or not os.path.exists(os.path.join(teacher_dir, "config.json")):
        raise InputDataError(f"{teacher_dir}: not an HF-layout teacher model folder (no config.json)")
    if tokenizer_dir is None:
        tokenizer_dir = teacher_dir
    rt = runtime or make_runtime(cfg.trainer.strategy, cfg.trainer.precision)
    teacher_cfg = model_core.ModelConfig.from_json_file(os.path.join(teacher_dir, "config.json"))
    data = open_packed(data_dir)
    check_rows(data, data.seq_len, teacher_cfg.vocab_size)
    s_cfg = student_config(cfg, teacher_cfg, data.seq_len)
    tok = os.path.join(tokenizer_dir, "tokenizer.json")
    teacher_tok = os.path.join(teacher_dir, "tokenizer.json")
    check_vocab(teacher_cfg, s_cfg, teacher_tok if os.path.exists(teacher_tok) else None,
                tok if os.path.exists(tok) else None)

    agent = uses_agent_task(cfg, data)
    validity = cfg.process_supervision.validity
    sample_actions = agent and validity.weight > 0
    if sample_actions and rt.num_replicas != 1:
        raise ConfigError("distill.process_supervision.validity samples on the host: it needs one replica "
                          f"(got {rt.num_replicas}); set its weight to 0 for multi-device runs")
    if agent and cfg.teacher_logits == "offline":
        raise ConfigError(f"{data_dir}: agent rows train with an online teacher; set distill.teacher_logits=online "
                          "(or distill.process_supervision.enabled=false for plain logit distillation)")
    teacher = None
    if cfg.teacher_logits == "offline":
        tdir = os.path.join(output_dir, TEACHER_DATA_DIR)
        if rt.is_chief and not tf.io.gfile.exists(os.path.join(tdir, "config.json")):
            t = model_core.load_hf_checkpoint(teacher_dir)
            precompute_teacher_topk(t, data, tdir, k=cfg.teacher_topk, temperature=cfg.temperature,
                                    batch_size=cfg.trainer.micro_batch_size)
            del t
        check_teacher_data(tdir, data_dir, vocab_size=teacher_cfg.vocab_size, k=cfg.teacher_topk,
                           temperature=cfg.temperature)
        data = open_packed(tdir)
    elif not (agent and cfg.loss == "ce"):
        # Online; with loss=ce the teacher still runs for the reported KL-to-teacher numbers
        # (agent rows with loss=ce: SAD is the span-weighted CE on the teacher's text, no KL).
        with rt.strategy.scope():
            teacher = model_core.load_hf_checkpoint(teacher_dir)

    def build():
        if cfg.student_init:
            return model_core.load_hf_checkpoint(cfg.student_init, config=s_cfg)
        return model_core.build_model(s_cfg, seed=cfg.trainer.seed)

    if agent:
        from training.agent_task import AgentDistillTask
        task = AgentDistillTask(agent_spec(cfg), teacher=teacher, mtp_weight=cfg.trainer.mtp_weight,
                                aux_loss_alpha=cfg.trainer.aux_loss_alpha,
                                validity_weight=validity.weight if sample_actions else 0.0,
                                validity_temperature=validity.temperature)
    else:
        task = DistillTask(distill_spec(cfg), teacher=teacher)
    objective = "agent SAD + process" + (" + validity" if sample_actions else "") if agent else cfg.loss
    trainer = Trainer(cfg.trainer, rt, build, task, output_dir, title=f"distill ({objective})")
    if sample_actions:
        # the student writes Action lines on the host between steps: it needs the tokenizer and
        # the rows' pad id, and one replica (checked before any compute)
        from training.agent_validity import ValiditySpec, fit_with_validity
        tokenizer, pad_id, reward = _validity_inputs(tok, data_dir)
    before = trainer.baseline_eval(data)
    if sample_actions:
        result = fit_with_validity(trainer, data, ValiditySpec.from_config(validity), tokenizer, reward,
                                   pad_id=pad_id, max_steps=max_steps, checkpoint_every=checkpoint_every,
                                   progress=progress)
    else:
        result = trainer.fit(data, max_steps=max_steps, checkpoint_every=checkpoint_every, progress=progress)
    report: dict[str, Any] = {
        "phase": "distill", "loss": "agent" if agent else cfg.loss, "teacher_logits": cfg.teacher_logits,
        "teacher": teacher_dir,
        "steps": result.steps, "target_steps": cfg.trainer.steps, "resumed_from_step": result.resumed_from,
        "nonfinite_steps": result.nonfinite_steps, "tokens_per_s": tokens_per_second(result.history),
        "data": data.root, "seq_len": data.seq_len,
        "student_parameters": int(num_weights(result.model)),
        "before": before, **result.final_eval}
    if agent:
        ps = cfg.process_supervision
        report["agent"] = {
            "lambda_reason": ps.lambda_reason, "lambda_act": ps.lambda_act, "tool_weight": ps.tool_weight,
            "json_weight": ps.json_weight, "temperature": cfg.temperature,
            "validity": ps.validity.model_dump() if sample_actions else None,
            **{k: {"before": before.get(f"eval_{k}"), "after": result.final_eval.get(f"eval_{k}")}
               for k in ("sad", "ce", "tool_loss", "json_loss", "tool_name_acc", "json_token_acc")}}
    if not rt.is_chief:
        return report
    phase = {"phase": "distill", "steps": result.steps, "loss": report["loss"]}
    teacher_phase = os.path.join(teacher_dir, "seekline_phase.json")
    if os.path.exists(teacher_phase):     # the student speaks the teacher's chat format
        template = json.loads(open(teacher_phase, encoding="utf-8").read()).get("chat_template")
        if template:
            phase["chat_template"] = template
    report["final"] = export_final(result.model, output_dir, tokenizer_dir,
                                   {"seekline_phase.json": json.dumps(phase)})
    atomic_write_text(os.path.join(output_dir, "config.json"), cfg.model_dump_json(indent=1))
    atomic_write_text(os.path.join(output_dir, "report.json"), json.dumps(report, indent=1, sort_keys=True))
    return report

