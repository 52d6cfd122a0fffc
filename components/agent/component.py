"""TFX wrapper of the agent-trajectory phase (imports TFX; the logic is in phase.py)."""


from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types.standard_artifacts import Examples, Model

from components.agent.phase import run_agent_trajectories
from configs.training import AgentConfig


@component
def AgentTrajectories(  # noqa: N802
    teacher: InputArtifact[Model],
    trajectories: OutputArtifact[Examples],
    config_json: Parameter[str],
    corpus: InputArtifact[Examples] = None,  # optional (TFX: an input artifact defaulting to None)
) -> None:
    """The teacher (agent.teacher's endpoint, else the pipeline's teacher model in process) solves
    tool-using tasks; the Examples artifact holds trajectories.jsonl, the quality report
    (agent_quality.json / .png) and the SAD / process-step rows (data/, Split-train / Split-eval)."""
    import os

    cfg = AgentConfig.model_validate_json(config_json)
    report = run_agent_trajectories(cfg, os.path.join(teacher.uri, "final"), corpus.uri if corpus else None,
                                    trajectories.uri)
    q = report["quality"]
    trajectories.split_names = '["train", "eval"]'
    trajectories.set_int_custom_property("trajectories", int(q["trajectories"]))
    trajectories.set_float_custom_property("success_rate", float(q["success_rate"] or 0.0))
    for split in ("train", "eval"):
        trajectories.set_int_custom_property(f"{split}_rows", int(report["dataset"][split]["rows"]))
