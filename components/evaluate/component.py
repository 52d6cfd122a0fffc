"""TFX wrapper of the evaluation phase (imports TFX; the logic is in evaluate.py).

The blessing artifact carries what TFX's own Evaluator records, so TFX's resolver strategies and
an export gated with tfx.dsl.Cond read it the same way: custom properties ``blessed`` (1 / 0),
``current_model`` (URI) and ``current_model_id`` (the candidate Model artifact's MLMD id — what
LatestBlessedModelStrategy matches Models by), plus a BLESSED or NOT_BLESSED file in its folder.
A copy of summary.json sits beside the marker, so a later run that resolves this blessing as its
baseline reads the baseline's numbers without evaluating it again.
"""

import json
import os

from tfx.components.evaluator import constants
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types.standard_artifacts import Model, ModelBlessing, ModelEvaluation

from common.fileio import atomic_write_json, atomic_write_text
from components.evaluate.evaluate import SUMMARY_FILE, run_evaluate
from configs.training import EvaluateConfig


@component
def Evaluate(  # noqa: N802
    candidate: InputArtifact[Model],
    evaluation: OutputArtifact[ModelEvaluation],
    blessing: OutputArtifact[ModelBlessing],
    config_json: Parameter[str],
    teacher: InputArtifact[Model] = None,
    baseline_model: InputArtifact[Model] = None,
    baseline_blessing: InputArtifact[ModelBlessing] = None,
) -> None:
    """Samples code from the candidate (and the teacher), runs HumanEval/MBPP unit tests in the
    sandbox, reports pass@k (summary.json, per-problem JSONL, report.png/html) and blesses the
    candidate when every configured rule holds."""
    cfg = EvaluateConfig.model_validate_json(config_json)
    baseline_summary = None
    if baseline_blessing is not None:
        path = os.path.join(baseline_blessing.uri, SUMMARY_FILE)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                baseline_summary = json.load(f)
    summary = run_evaluate(
        cfg, os.path.join(candidate.uri, "final"), evaluation.uri,
        teacher_dir=os.path.join(teacher.uri, "final") if teacher is not None else None,
        baseline_summary=baseline_summary,
        baseline_dir=os.path.join(baseline_model.uri, "final") if baseline_model is not None else None)
    blessed = bool(summary["blessing"]["blessed"])
    for role in ("candidate", "teacher", "baseline"):
        for key, value in summary.get(role, {}).items():
            if key.startswith("pass@"):
                evaluation.set_float_custom_property(f"{role}_{key}", float(value))
    blessing.set_int_custom_property(constants.ARTIFACT_PROPERTY_BLESSED_KEY,
                                     constants.BLESSED_VALUE if blessed else constants.NOT_BLESSED_VALUE)
    blessing.set_string_custom_property(constants.ARTIFACT_PROPERTY_CURRENT_MODEL_URI_KEY, candidate.uri)
    blessing.set_int_custom_property(constants.ARTIFACT_PROPERTY_CURRENT_MODEL_ID_KEY, candidate.id)
    if baseline_model is not None:
        blessing.set_string_custom_property(constants.ARTIFACT_PROPERTY_BASELINE_MODEL_URI_KEY, baseline_model.uri)
        blessing.set_int_custom_property(constants.ARTIFACT_PROPERTY_BASELINE_MODEL_ID_KEY, baseline_model.id)
    atomic_write_json(os.path.join(blessing.uri, SUMMARY_FILE), summary)
    marker = constants.BLESSED_FILE_NAME if blessed else constants.NOT_BLESSED_FILE_NAME
    atomic_write_text(os.path.join(blessing.uri, marker), "")
