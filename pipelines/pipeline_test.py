"""The DAG holds exactly the components the config enables (the CLI's progress total uses the same list)."""
import pytest

from configs.schema import load_config
from pipelines.pipeline import create_pipeline


@pytest.mark.parametrize("sets,want_missing", [
    ([], set()),
    (["context_extension.enabled=false"], {"context_extension"}),
    (["sft.enabled=false"], {"sft", "grpo", "distill", "agent_trajectories", "agent_distill"}),
    (["grpo.enabled=false"], {"grpo"}),
    (["distill.enabled=false"], {"distill", "agent_trajectories", "agent_distill"}),
    (["agent.enabled=false"], {"agent_trajectories", "agent_distill"}),
    (["context_extension.enabled=false", "distill.enabled=false"],
     {"context_extension", "distill", "agent_trajectories", "agent_distill"}),
    (["evaluate.enabled=false"], {"evaluate", "export"}),
    (["export.enabled=false"], {"export"}),
])
def test_dag_components_follow_the_enabled_phases(tmp_path, sets, want_missing):
    from configs.schema import COMPONENT_IDS

    cfg = load_config("tiny", sets)
    p = create_pipeline(cfg, pipeline_root=str(tmp_path))
    ids = [c.id for c in p.components]
    assert sorted(ids) == sorted(cfg.enabled_components())  # (tiny has no baseline resolver)
    assert set(COMPONENT_IDS) - set(ids) == want_missing


def _evaluate_inputs(cfg, tmp_path):
    p = create_pipeline(cfg, pipeline_root=str(tmp_path))
    [ev] = [c for c in p.components if c.id == "evaluate"]
    return p, {name: ch.producer_component_id for name, ch in ev.inputs.items()}


@pytest.mark.parametrize("sets,want", [
    ([], {"candidate": "agent_distill", "teacher": "grpo"}),
    (["agent.enabled=false"], {"candidate": "distill", "teacher": "grpo"}),
    (["grpo.enabled=false"], {"candidate": "agent_distill", "teacher": "sft"}),
    (["distill.enabled=false"], {"candidate": "grpo"}),
    (["distill.enabled=false", "grpo.enabled=false"], {"candidate": "sft"}),
    (["sft.enabled=false"], {"candidate": "context_extension"}),
    (["sft.enabled=false", "context_extension.enabled=false"], {"candidate": "pretrain"}),
])
def test_evaluate_scores_the_newest_model_against_its_teacher(tmp_path, sets, want):
    _, inputs = _evaluate_inputs(load_config("tiny", sets), tmp_path)
    assert inputs == want


def test_baseline_comes_from_the_latest_blessed_model_resolver(tmp_path):
    from tfx import v1 as tfx

    from pipelines.pipeline import BASELINE_RESOLVER_ID

    cfg = load_config("tiny", ["evaluate.blessing.require_no_worse_than_baseline=true"])
    p, inputs = _evaluate_inputs(cfg, tmp_path)
    assert inputs == {"candidate": "agent_distill", "teacher": "grpo", "baseline_model": BASELINE_RESOLVER_ID,
                      "baseline_blessing": BASELINE_RESOLVER_ID}
    [resolver] = [c for c in p.components if c.id == BASELINE_RESOLVER_ID]
    assert tfx.dsl.experimental.LatestBlessedModelStrategy in resolver.exec_properties.values()
    # the evaluate component publishes what that strategy reads
    [ev] = [c for c in p.components if c.id == "evaluate"]
    assert ev.outputs["blessing"].type_name == "ModelBlessing"
    assert ev.outputs["evaluation"].type_name == "ModelEvaluation"


def test_distill_learns_from_the_grpo_model_on_the_sft_rows(tmp_path):
    p = create_pipeline(load_config("tiny", []), pipeline_root=str(tmp_path))
    by_id = {c.id: c for c in p.components}
    assert {k: ch.producer_component_id for k, ch in by_id["grpo"].inputs.items()} == {"sft_model": "sft"}
    assert {k: ch.producer_component_id for k, ch in by_id["distill"].inputs.items()} == \
        {"teacher": "grpo", "sft_model": "sft"}


@pytest.mark.parametrize("sets,corpus", [([], "ingest"), (["agent.retrieval=false"], None)])
def test_agent_student_continues_the_distilled_student_on_the_teachers_trajectories(tmp_path, sets, corpus):
    p = create_pipeline(load_config("tiny", sets), pipeline_root=str(tmp_path))
    by_id = {c.id: c for c in p.components}
    want = {"teacher": "grpo"} | ({"corpus": corpus} if corpus else {})
    assert {k: ch.producer_component_id for k, ch in by_id["agent_trajectories"].inputs.items()} == want
    assert {k: ch.producer_component_id for k, ch in by_id["agent_distill"].inputs.items()} == \
        {"teacher": "grpo", "sft_model": "sft", "student": "distill", "agent_data": "agent_trajectories"}


def test_export_runs_only_under_the_blessing_condition(tmp_path):
    from tfx.dsl.experimental.conditionals import conditional

    from pipelines.pipeline import export_push_dir

    cfg = load_config("tiny", [])
    p = create_pipeline(cfg, pipeline_root=str(tmp_path / "pipeline"))
    [ex] = [c for c in p.components if c.id == "export"]
    assert {k: ch.producer_component_id for k, ch in ex.inputs.items()} == \
        {"model": "agent_distill", "blessing": "evaluate", "evaluation": "evaluate"}
    # one Cond: evaluate's blessing, custom property `blessed` == 1
    [pred] = conditional.get_predicates(ex, p.dsl_context_registry)
    enc = " ".join(str(pred.encode()).split())
    for part in ('key: "_evaluate.blessing"', 'key: "blessed"', "is_custom_property: true", "int_value: 1",
                 "op: EQUAL"):
        assert part in enc, part
    assert ex.exec_properties["push_dir"] == str(tmp_path / "serving" / "seekline-tiny")
    assert export_push_dir(load_config("tiny", ["export.push_dir=/srv/models/x"]), "r") == "/srv/models/x"
