"""TFX wrapper of the SFT phase (imports TFX; the logic is in sft.py)."""

import os

from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types.standard_artifacts import Examples, Model

from components.common.tfjob import launch_phase
from components.sft.sft import run_sft
from components.tokenizer.component import TokenizerArtifact
from configs.training import SFTConfig


@component
def SupervisedFineTune(  # noqa: N802
    base_model: InputArtifact[Model],
    examples: InputArtifact[Examples],
    tokenizer: InputArtifact[TokenizerArtifact],
    model: OutputArtifact[Model],
    config_json: Parameter[str],
) -> None:
    """Fine-tunes the base model on chat / instruction data (assistant-token loss, packed rows,
    optional LoRA); the Model artifact holds the SFT rows (data/), checkpoints, the adapters when
    LoRA is on, the merged HF export (final/), the report and the loss curve."""
    cfg = SFTConfig.model_validate_json(config_json)
    if cfg.trainer.workers > 1:  # multi-node: a TFJob runs `seekline train sft` (components/common/tfjob.py)
        report = launch_phase("sft", cfg, model.uri, data=examples.uri, tokenizer=tokenizer.uri,
                              init=os.path.join(base_model.uri, "final"))
    else:
        report = run_sft(cfg, os.path.join(base_model.uri, "final"), examples.uri, tokenizer.uri, model.uri,
                         progress=False)
    model.set_int_custom_property("steps", int(report["steps"]))
    model.set_int_custom_property("lora", int(bool(report["lora"])))
    for key in ("eval_loss", "eval_loss_improvement"):
        if report.get(key) is not None:
            model.set_float_custom_property(key, float(report[key]))
    if report.get("before", {}).get("eval_loss") is not None:
        model.set_float_custom_property("eval_loss_before", float(report["before"]["eval_loss"]))
