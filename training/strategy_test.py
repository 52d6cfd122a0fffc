"""Strategy selection from config / TF_CONFIG (the multi-worker path itself: multiworker_test)."""
import json

import pytest

from common.errors import ConfigError
from training.strategy import _role, make_runtime


@pytest.mark.parametrize(("cluster", "task", "want"), [
    ({"worker": ["a", "b"]}, {"type": "worker", "index": 0}, (True, 0)),
    ({"worker": ["a", "b"]}, {"type": "worker", "index": 1}, (False, 1)),
    # With a dedicated chief, it is index 0 and the workers follow it.
    ({"chief": ["c"], "worker": ["a", "b"]}, {"type": "chief", "index": 0}, (True, 0)),
    ({"chief": ["c"], "worker": ["a", "b"]}, {"type": "worker", "index": 0}, (False, 1)),
    ({"chief": ["c"], "worker": ["a", "b"]}, {"type": "worker", "index": 1}, (False, 2)),
])
def test_role_from_tf_config(cluster, task, want):
    assert _role({"cluster": cluster, "task": task}) == want


def test_bad_tf_config_is_a_config_error(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", "{cluster: ")
    with pytest.raises(ConfigError, match="TF_CONFIG is not valid JSON"):
        make_runtime()
    monkeypatch.setenv("TF_CONFIG", "[1]")
    with pytest.raises(ConfigError, match="JSON object"):
        make_runtime()
    monkeypatch.delenv("TF_CONFIG")
    with pytest.raises(ConfigError, match="multi_worker needs TF_CONFIG"):
        make_runtime("multi_worker", "fp32")


def test_auto_without_a_cluster_is_one_device(monkeypatch):
    # One worker in TF_CONFIG (a 1-replica TFJob) is not a multi-worker run.
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1"]},
                                                "task": {"type": "worker", "index": 0}}))
    rt = make_runtime("auto", "fp32")
    assert (rt.kind, rt.is_chief, rt.worker_index, rt.num_workers, rt.num_replicas) == \
        ("one_device", True, 0, 1, 1)
    assert rt.compute_dtype == "float32"
