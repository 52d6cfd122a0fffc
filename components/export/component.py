"""TFX wrapper of the export phase (imports TFX; the logic is in export.py).

The pipeline runs it only inside `tfx.dsl.Cond` on the evaluate blessing (pipelines/pipeline.py),
and it checks the blessing again itself, so a hand-wired or unconditional use cannot export an
unblessed model."""

import json
import os

from tfx.components.evaluator import constants
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types.standard_artifacts import Model, ModelBlessing, ModelEvaluation, PushedModel

from common.errors import UserError
from components.export.export import run_export
from configs.training import ExportConfig


@component
def Export(  # noqa: N802
    model: InputArtifact[Model],
    blessing: InputArtifact[ModelBlessing],
    evaluation: InputArtifact[ModelEvaluation],
    pushed_model: OutputArtifact[PushedModel],
    config_json: Parameter[str],
    push_dir: Parameter[str],
    pipeline_name: Parameter[str],
) -> None:
    """Exports the blessed candidate: SavedModel (TF Serving version folder, also published to
    push_dir), HF files and manifest.json in the PushedModel artifact."""
    cfg = ExportConfig.model_validate_json(config_json)
    blessed = blessing.get_int_custom_property(constants.ARTIFACT_PROPERTY_BLESSED_KEY)
    if blessed != constants.BLESSED_VALUE:
        raise UserError(f"export: the model {model.uri} is not blessed ({blessing.uri}); nothing exported")
    summary_path = os.path.join(evaluation.uri, "summary.json")
    summary = json.load(open(summary_path, encoding="utf-8")) if os.path.exists(summary_path) else {}
    provenance = {
        "pipeline": pipeline_name,
        "model": {"uri": model.uri, "mlmd_id": model.id},
        "evaluation": {"uri": evaluation.uri, "mlmd_id": evaluation.id,
                       "candidate": {k: v for k, v in summary.get("candidate", {}).items() if k.startswith("pass@")},
                       "teacher": {k: v for k, v in summary.get("teacher", {}).items() if k.startswith("pass@")},
                       "problems": len(summary.get("problems", []))},
        "blessing": {"uri": blessing.uri, "mlmd_id": blessing.id, "blessed": True,
                     "rules": summary.get("blessing", {}).get("rules", [])},
    }
    manifest = run_export(cfg, os.path.join(model.uri, "final"), pushed_model.uri, push_dir or None, provenance)
    pushed_model.set_int_custom_property("pushed", 1)
    pushed_model.set_string_custom_property("pushed_destination", manifest["pushed_to"] or "")
    pushed_model.set_int_custom_property("pushed_version", manifest["version"])
