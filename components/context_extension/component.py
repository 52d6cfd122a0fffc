"""TFX wrapper of the context-extension phase (imports TFX; the logic is in extend.py)."""

import os

from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types.standard_artifacts import Examples, Model

from components.common.tfjob import launch_phase
from components.context_extension.extend import run_context_extension
from components.tokenizer.component import TokenizerArtifact
from configs.training import ContextExtensionConfig


@component
def ExtendContext(  # noqa: N802
    pretrained: InputArtifact[Model],
    examples: InputArtifact[Examples],
    tokenizer: InputArtifact[TokenizerArtifact],
    model: OutputArtifact[Model],
    config_json: Parameter[str],
) -> None:
    """YaRN-extends the pretrained model and continues training on long rows; the report holds
    passkey retrieval at 1×/2×/4× the original context before and after."""
    cfg = ContextExtensionConfig.model_validate_json(config_json)
    if cfg.trainer.workers > 1:  # multi-node: a TFJob runs `seekline train` (components/common/tfjob.py)
        report = launch_phase("context_extension", cfg, model.uri, data=examples.uri, tokenizer=tokenizer.uri,
                              init=os.path.join(pretrained.uri, "final"))
    else:
        report = run_context_extension(cfg, os.path.join(pretrained.uri, "final"), examples.uri, tokenizer.uri,
                                       model.uri, progress=False)
    model.set_int_custom_property("steps", int(report["steps"]))
    model.set_int_custom_property("context", int(report["extended_context"]))
    for when in ("before", "after"):
        for mult, row in report.get(when, {}).items():
            if "accuracy" in row:
                model.set_float_custom_property(f"passkey_{when}_{mult}", float(row["accuracy"]))
    if report.get("eval_loss") is not None:
        model.set_float_custom_property("eval_loss", float(report["eval_loss"]))
