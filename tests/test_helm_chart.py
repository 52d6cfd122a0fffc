"""The Helm chart: lints, renders offline (Helm's own Go library via helm-python-sdk, no
cluster) and every manifest validates against the Kubernetes 1.30 schemas."""

from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from helm_python import chart

CHART = Path(__file__).resolve().parents[1] / "infra" / "helm" / "seekline"


def render(values=None, name="prod", namespace="team-a"):
    out = chart.Chart.load(CHART).render(values or {}, name=name, namespace=namespace)
    docs = []
    for path, text in out.items():
        if path.endswith(".txt"):
            continue
        docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def by_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def test_lint_is_clean():
    report = chart.lint(CHART, strict=True, kube_version="v1.30.0")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"schedule": {"enabled": True}, "kfp": {"tokenSecret": {"name": "kfp-token"}}},
        {"register": {"enabled": False}, "rbac": {"create": False}, "serviceAccount": {"create": False}},
        {"nodeSelector": {"pool": "cpu"}, "tolerations": [{"key": "k", "operator": "Exists", "effect": "NoSchedule"}]},
    ],
)
def test_every_manifest_is_valid_kubernetes(values):
    for doc in render(values):
        kubernetes_validate.validate(doc, "1.30", strict=True)


def test_register_job_deploys_with_the_configured_preset_and_overrides():
    docs = render({"config": {"preset": "cluster", "overrides": ["kubeflow.default_image=r.example/seekline:1"]}})
    [job] = by_kind(docs, "Job")
    [c] = job["spec"]["template"]["spec"]["containers"]
    assert c["command"] == ["seekline", "deploy"]
    assert c["args"][:4] == ["--config", "cluster", "--set", "kubeflow.default_image=r.example/seekline:1"]
    assert "--no-run" in c["args"]
    env = {e["name"]: e for e in c["env"]}
    assert env["KFP_HOST"]["value"] == "http://ml-pipeline.kubeflow.svc.cluster.local:8888"
    assert "KFP_TOKEN" not in env
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == "prod-seekline"


def test_schedule_creates_a_recurring_run_with_the_token_from_a_secret():
    docs = render({"schedule": {"enabled": True, "cron": "0 30 2 * * 1", "name": "weekly"},
                   "kfp": {"tokenSecret": {"name": "kfp-token", "key": "t"}}})
    [c] = by_kind(docs, "Job")[0]["spec"]["template"]["spec"]["containers"]
    assert c["command"] == ["seekline", "schedule"]
    i = c["args"].index("--cron")
    assert c["args"][i + 1] == "0 30 2 * * 1" and c["args"][c["args"].index("--name") + 1] == "weekly"
    token = next(e for e in c["env"] if e["name"] == "KFP_TOKEN")
    assert token["valueFrom"]["secretKeyRef"] == {"name": "kfp-token", "key": "t"}


def test_pipeline_runner_may_launch_tfjobs():
    docs = render()
    [role] = by_kind(docs, "Role")
    tf_rule = next(r for r in role["rules"] if "kubeflow.org" in r["apiGroups"])
    assert "tfjobs" in tf_rule["resources"] and {"create", "watch", "delete"} <= set(tf_rule["verbs"])
    [binding] = by_kind(docs, "RoleBinding")
    assert {"name": "pipeline-runner", "kind": "ServiceAccount", "namespace": "team-a"} in binding["subjects"]


def test_values_schema_rejects_five_field_cron_and_unknown_keys():
    with pytest.raises(Exception, match="schedule/cron"):
        render({"schedule": {"enabled": True, "cron": "0 3 * * *"}})
    with pytest.raises(Exception, match="imagee"):
        render({"imagee": {}})
