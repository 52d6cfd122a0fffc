"""The DAG holds exactly the components the config enables (the CLI's progress total uses the same list)."""
import pytest

from configs.schema import load_config
from pipelines.pipeline import create_pipeline


@pytest.mark.parametrize("sets,want_missing", [
    ([], set()),
    (["context_extension.enabled=false"], {"context_extension"}),
    (["sft.enabled=false"], {"sft", "distill"}),
    (["distill.enabled=false"], {"distill"}),
    (["context_extension.enabled=false", "distill.enabled=false"], {"context_extension", "distill"}),
])
def test_dag_components_follow_the_enabled_phases(tmp_path, sets, want_missing):
    from configs.schema import COMPONENT_IDS

    cfg = load_config("tiny", sets)
    p = create_pipeline(cfg, pipeline_root=str(tmp_path))
    ids = [c.id for c in p.components]
    assert sorted(ids) == sorted(cfg.enabled_components())
    assert set(COMPONENT_IDS) - set(ids) == want_missing
