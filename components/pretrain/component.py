"""TFX wrapper of the pretrain phase (imports TFX; the logic is in pretrain.py)."""

from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types.standard_artifacts import Examples, Model

from components.common.tfjob import launch_phase
from components.pretrain.pretrain import run_pretrain
from components.tokenizer.component import TokenizerArtifact
from configs.training import PretrainConfig


@component
def Pretrain(  # noqa: N802
    examples: InputArtifact[Examples],
    tokenizer: InputArtifact[TokenizerArtifact],
    model: OutputArtifact[Model],
    config_json: Parameter[str],
) -> None:
    """Trains the causal LM on the packed rows; the Model artifact holds checkpoints, the HF
    export (final/), the phase config, the report and the loss curve."""
    cfg = PretrainConfig.model_validate_json(config_json)
    if cfg.trainer.workers > 1:  # multi-node: a TFJob runs `seekline train pretrain` (components/common/tfjob.py)
        report = launch_phase("pretrain", cfg, model.uri, data=examples.uri, tokenizer=tokenizer.uri)
    else:
        report = run_pretrain(cfg, examples.uri, tokenizer.uri, model.uri, progress=False)
    model.set_int_custom_property("steps", int(report["steps"]))
    for key in ("eval_loss", "eval_perplexity", "eval_unigram_entropy"):
        if report.get(key) is not None:
            model.set_float_custom_property(key, float(report[key]))
