"""The Helm chart: lints, renders offline (Helm's own Go library via helm-python-sdk, no
cluster) and every manifest validates against the Kubernetes 1.30 schemas."""

import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from helm_python import chart

CHART = Path(__file__).resolve().parents[1] / "infra" / "helm" / "seekline"
CLUSTER_VALUES = yaml.safe_load((CHART / "values-cluster.yaml").read_text())
SERVING = {"serving": {"enabled": True, "model": {"pvc": {"claimName": "models", "path": "seekline/hf"}}}}


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
        CLUSTER_VALUES,
        SERVING,
        {**SERVING, "retrainCronJob": {"enabled": True, "timeZone": "Europe/Berlin"}},
        {"serving": {"enabled": True, "model": {"uri": "gs://b/m/hf"}, "autoscaling": {"enabled": True, "metrics": [
            {"type": "Pods", "pods": {"metric": {"name": "seekline_requests_waiting"},
                                      "target": {"type": "AverageValue", "averageValue": "4"}}}]}}},
    ],
    ids=["default", "schedule", "minimal", "placement", "cluster", "serving-pvc", "cronjob", "serving-gcs-custom-hpa"],
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


def test_lint_is_clean_with_the_cluster_values():
    report = chart.lint(CHART, values=CLUSTER_VALUES, strict=True, kube_version="v1.30.0")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_default_values_serve_nothing_and_schedule_nothing_from_kubernetes():
    kinds = {d["kind"] for d in render()}
    assert kinds.isdisjoint({"Deployment", "Service", "HorizontalPodAutoscaler", "ConfigMap", "CronJob"})


def test_serving_deployment_runs_seekline_serve_on_the_pvc_model():
    docs = render({**SERVING, "serving": {**SERVING["serving"], "port": 8080,
                                          "apiKeys": {"existingSecret": "seekline-api-keys", "key": "keys"}}})
    [dep] = by_kind(docs, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    [c] = pod["containers"]
    assert c["command"] == ["seekline", "serve"]
    assert c["args"][:5] == ["/models/seekline/hf", "--host", "0.0.0.0", "--port", "8080"]
    assert "initContainers" not in pod
    [vol] = pod["volumes"]
    assert vol["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
    assert c["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/health", "port": "http"}
    env = {e["name"]: e for e in c["env"]}
    assert env["SEEKLINE_API_KEYS"]["valueFrom"]["secretKeyRef"] == {"name": "seekline-api-keys", "key": "keys"}
    assert dep["spec"]["replicas"] == 1
    # the Service and the pods agree on labels, and the register Job's pods are not selected
    [svc] = by_kind(docs, "Service")
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert svc["spec"]["ports"][0]["targetPort"] == "http"
    job_labels = by_kind(docs, "Job")[0]["spec"]["template"]["metadata"]["labels"]
    assert not set(svc["spec"]["selector"].items()) <= set(job_labels.items())


def _expand(arg: str, env: dict) -> str:
    """Kubernetes' $(VAR) expansion of container args from the container's env."""
    for k, v in env.items():
        arg = arg.replace(f"$({k})", v)
    return arg


def test_configmap_settings_become_serve_flags_the_cli_accepts():
    from pipelines.cli import build_parser

    settings = {"maxBatchSize": 4, "maxSeqLen": 1024, "timeoutSeconds": 60, "rateLimitPerMinute": 0,
                "agentMaxSteps": 3, "agentTimeLimitSeconds": 30, "xla": True}
    docs = render({"serving": {**SERVING["serving"], "settings": settings, "model": {
        "pvc": {"claimName": "models"}, "name": "sl"}}})
    [cm] = by_kind(docs, "ConfigMap")
    [dep] = by_kind(docs, "Deployment")
    [c] = dep["spec"]["template"]["spec"]["containers"]
    assert c["envFrom"] == [{"configMapRef": {"name": cm["metadata"]["name"]}}]
    argv = [_expand(a, cm["data"]) for a in c["args"]]
    assert not any("$(" in a for a in argv)
    # the real CLI parser reads what the pod will run
    args = build_parser().parse_args(c["command"][1:] + argv)
    assert (args.model_dir, args.host, args.port, args.model_name) == ("/models", "0.0.0.0", 8000, "sl")
    assert (args.max_batch_size, args.max_seq_len, args.request_timeout_s) == (4, 1024, 60.0)
    assert (args.rate_limit_per_minute, args.agent_max_steps, args.agent_time_limit_s, args.xla) == (0.0, 3, 30.0, True)
    # a settings change changes the pod template, so the pods roll
    other = render({"serving": {**SERVING["serving"], "settings": {**settings, "maxBatchSize": 16}}})
    assert (by_kind(other, "Deployment")[0]["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
            != dep["spec"]["template"]["metadata"]["annotations"]["checksum/config"])


def test_gcs_model_is_fetched_by_an_init_container_that_really_copies(tmp_path):
    docs = render({"serving": {"enabled": True, "model": {"uri": "gs://bucket/run/export/pushed_model/7/hf"}}})
    pod = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]
    [init] = pod["initContainers"]
    [c] = pod["containers"]
    assert init["args"][1:] == ["gs://bucket/run/export/pushed_model/7/hf", "/models/current"]
    assert c["args"][0] == "/models/current" and pod["volumes"] == [{"name": "model", "emptyDir": {}}]
    assert init["volumeMounts"] == c["volumeMounts"] == [{"name": "model", "mountPath": "/models"}]
    # Run the init container's program on a local folder (tf.io.gfile treats a path and gs://
    # alike): the model folder, with a subfolder, arrives byte for byte.
    src = tmp_path / "hf"
    (src / "sub").mkdir(parents=True)
    files = {"config.json": b"{}", "model.safetensors": bytes(range(256)) * 4, "sub/x.txt": b"x"}
    for name, data in files.items():
        (src / name).write_bytes(data)
    dst = tmp_path / "models" / "current"
    program = init["command"][1:] + [init["args"][0], str(src), str(dst)]
    proc = subprocess.run([sys.executable, *program], capture_output=True, text=True, timeout=120,
                          env={"TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert {n: (dst / n).read_bytes() for n in files} == files
    # no config.json there: the pod fails at start with a message naming the setting
    proc = subprocess.run([sys.executable, *init["command"][1:], init["args"][0], str(src / "sub"), str(dst)],
                          capture_output=True, text=True, timeout=120, env={"TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 1 and "serving.model.uri" in proc.stderr


def test_hpa_scales_the_serving_deployment_and_owns_the_replica_count():
    docs = render({"serving": {**SERVING["serving"], "autoscaling": {"enabled": True, "minReplicas": 2,
                                                                    "maxReplicas": 6}}})
    [hpa] = by_kind(docs, "HorizontalPodAutoscaler")
    [dep] = by_kind(docs, "Deployment")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": dep["metadata"]["name"]}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    assert hpa["spec"]["metrics"][0]["resource"]["target"] == {"type": "Utilization", "averageUtilization": 70}
    assert "replicas" not in dep["spec"]  # a fixed count would fight the HPA on every upgrade
    # CPU utilisation needs a CPU request on the pods
    assert dep["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"]


def test_retrain_cronjob_runs_seekline_deploy_with_the_config_and_token():
    docs = render({"retrainCronJob": {"enabled": True, "schedule": "30 2 * * 1"},
                   "config": {"preset": "cluster", "overrides": ["kubeflow.pipeline_root=gs://b/root"]},
                   "kfp": {"tokenSecret": {"name": "kfp-token"}}})
    [cron] = by_kind(docs, "CronJob")
    assert cron["apiVersion"] == "batch/v1"
    assert cron["spec"]["schedule"] == "30 2 * * 1" and cron["spec"]["concurrencyPolicy"] == "Forbid"
    [c] = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert c["command"] == ["seekline", "deploy"]
    assert c["args"] == ["--config", "cluster", "--set", "kubeflow.pipeline_root=gs://b/root",
                         "--set", "kubeflow.output_file=/tmp/pipeline.yaml"]
    env = {e["name"]: e for e in c["env"]}
    assert env["KFP_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "kfp-token", "key": "token"}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"serving": {"enabled": True}}, "serving.model: set pvc.claimName"),
        ({"serving": {"enabled": True, "model": {"uri": "gs://b/m", "pvc": {"claimName": "x"}}}}, "not both"),
        ({"serving": {"enabled": True, "model": {"uri": "bucket/m"}}}, "serving/model/uri"),
        ({"retrainCronJob": {"enabled": True}, "schedule": {"enabled": True}}, "enable one"),
        ({"retrainCronJob": {"enabled": True, "schedule": "0 0 3 * * 0"}}, "retrainCronJob/schedule"),
        ({"serving": {"enabled": True, "autoscaling": {"targetCPU": 50}}}, "targetCPU"),
    ],
)
def test_bad_serving_and_cronjob_values_fail_the_render(values, message):
    with pytest.raises(Exception, match=message):
        render(values)
