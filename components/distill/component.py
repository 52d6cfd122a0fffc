"""TFX wrapper of the distillation phase (imports TFX; the logic is in distill.py)."""

import os

from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types.standard_artifacts import Examples, Model

from components.common.tfjob import launch_phase
from components.distill.distill import continue_from, run_distill
from components.sft.sft import DATA_DIR
from configs.training import DistillConfig


@component
def Distill(  # noqa: N802
    teacher: InputArtifact[Model],
    sft_model: InputArtifact[Model],
    model: OutputArtifact[Model],
    config_json: Parameter[str],
    student: InputArtifact[Model] = None,  # optional inputs (TFX: an input artifact defaulting to None)
    agent_data: InputArtifact[Examples] = None,
) -> None:
    """Distils the teacher (the GRPO model, else the SFT model) into a smaller student; the Model
    artifact holds the student's checkpoints, HF export (final/), report and loss curve.

    Rows: the SFT rows (kept in the SFT artifact), or — with agent_data (the agent_trajectories
    artifact) — the agent rows, trained with the SAD + process-step objective. student: continue
    that distilled student (its architecture and weights) instead of a fresh one."""
    from components.agent.phase import DATA_DIR as AGENT_DATA_DIR

    cfg = DistillConfig.model_validate_json(config_json)
    if student is not None:
        cfg = continue_from(cfg, os.path.join(student.uri, "final"))
    data = os.path.join(agent_data.uri, AGENT_DATA_DIR) if agent_data is not None else \
        os.path.join(sft_model.uri, DATA_DIR)
    final = os.path.join(teacher.uri, "final")
    if cfg.trainer.workers > 1:  # multi-node: a TFJob runs `seekline train distill` (components/common/tfjob.py)
        report = launch_phase("distill", cfg, model.uri, data=data, tokenizer=final, init=final)
    else:
        report = run_distill(cfg, final, data, final, model.uri, progress=False)
    model.set_int_custom_property("steps", int(report["steps"]))
    model.set_int_custom_property("student_parameters", int(report["student_parameters"]))
    for key in ("eval_loss", "eval_kl_to_teacher", "eval_ce", "eval_tool_name_acc", "eval_json_token_acc"):
        if report.get(key) is not None:
            model.set_float_custom_property(key, float(report[key]))
