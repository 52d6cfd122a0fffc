"""TFX wrapper of the GRPO phase (imports TFX; the logic is in grpo.py)."""

import os

from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types.standard_artifacts import Model

from components.common.tfjob import launch_phase
from components.grpo.grpo import run_grpo
from configs.training import GRPOConfig


@component
def GroupRelativePolicyOptimization(  # noqa: N802
    sft_model: InputArtifact[Model],
    model: OutputArtifact[Model],
    config_json: Parameter[str],
) -> None:
    """Optimises the SFT model with GRPO on verifiable tasks (rewards from the sandboxed unit tests,
    exact answers, format, ...); the Model artifact holds the checkpoints, the rollout samples
    (rollouts/), the HF export (final/), the report, the reward and loss curves."""
    cfg = GRPOConfig.model_validate_json(config_json)
    if cfg.trainer.workers > 1:  # multi-node: a TFJob runs `seekline train grpo` (components/common/tfjob.py)
        report = launch_phase("grpo", cfg, model.uri, init=None if cfg.init else os.path.join(sft_model.uri, "final"))
    else:
        report = run_grpo(cfg, os.path.join(sft_model.uri, "final"), model.uri, progress=False)
    model.set_int_custom_property("steps", int(report["steps"]))
    for key in ("eval_reward_mean", "eval_success_rate", "eval_kl_to_reference", "eval_reward_improvement"):
        if report.get(key) is not None:
            model.set_float_custom_property(key, float(report[key]))
    if report.get("before", {}).get("eval_reward_mean") is not None:
        model.set_float_custom_property("eval_reward_mean_before", float(report["before"]["eval_reward_mean"]))
