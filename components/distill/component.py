"""TFX wrapper of the distillation phase (imports TFX; the logic is in distill.py)."""

import os

from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types.standard_artifacts import Model

from components.distill.distill import run_distill
from components.sft.sft import DATA_DIR
from configs.training import DistillConfig


@component
def Distill(  # noqa: N802
    teacher: InputArtifact[Model],
    sft_model: InputArtifact[Model],
    model: OutputArtifact[Model],
    config_json: Parameter[str],
) -> None:
    """Distils the teacher (the GRPO model, else the SFT model) into a smaller student on the SFT
    rows (kept in the SFT artifact); the Model artifact holds the student's checkpoints, HF export
    (final/), report and loss curve."""
    cfg = DistillConfig.model_validate_json(config_json)
    final = os.path.join(teacher.uri, "final")
    report = run_distill(cfg, final, os.path.join(sft_model.uri, DATA_DIR), final, model.uri, progress=False)
    model.set_int_custom_property("steps", int(report["steps"]))
    model.set_int_custom_property("student_parameters", int(report["student_parameters"]))
    for key in ("eval_loss", "eval_kl_to_teacher", "eval_ce"):
        if report.get(key) is not None:
            model.set_float_custom_property(key, float(report[key]))
