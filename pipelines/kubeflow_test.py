"""Kubeflow: the compiled PipelineSpec (parsed with kfp's proto) and the KFP REST calls, against
a KFP API double on loopback."""

import json
import socket

import pytest
import yaml

from components.common.errors import DeployError
from configs.schema import COMPONENT_IDS, load_config
from pipelines import kubeflow as kf
from pipelines.pipeline import BASELINE_RESOLVER_ID
from tests.kfp_fake import FakeKFP

GPU_OVERRIDES = [
    "resources.components.statistics.gpu=2",
    "resources.components.statistics.node_selector={cloud.google.com/gke-accelerator: nvidia-h100-80gb}",
    "resources.components.statistics.tolerations=[{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]",
]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    cfg = load_config("cluster", GPU_OVERRIDES)
    path = kf.compile_pipeline(cfg, tmp_path_factory.mktemp("kfp") / "pipeline.yaml")
    return cfg, path


def test_spec_parses_and_has_every_component(compiled):
    cfg, path = compiled
    spec, _ = kf.load_pipeline_spec(path)
    assert spec.pipeline_info.name == cfg.pipeline.name
    # KFP's compiler turns the latest-blessed-model resolver into two resolver tasks
    resolvers = {f"{BASELINE_RESOLVER_ID}-model-resolver", f"{BASELINE_RESOLVER_ID}-model-blessing-resolver"}
    assert set(spec.root.dag.tasks) == {"ingest", "tokenizer", "pack", "statistics", "schema", "validate",
                                        "pretrain", "context_extension", "sft", "grpo", "distill",
                                        "agent_trajectories", "agent_distill", "evaluate", "export", *resolvers}
    # every task but the resolvers (metadata queries, no pod of their own) can be given resources
    assert set(COMPONENT_IDS) == set(spec.root.dag.tasks) - resolvers
    assert spec.default_pipeline_root == cfg.kubeflow.pipeline_root
    assert list(spec.root.dag.tasks["validate"].dependent_tasks) == ["schema", "statistics"]
    # training waits for validation (a task dependency) and reads pack's rows + the tokenizer
    assert set(spec.root.dag.tasks["pretrain"].dependent_tasks) == {"pack", "tokenizer", "validate"}
    assert set(spec.root.dag.tasks["context_extension"].dependent_tasks) == {"pretrain", "ingest", "tokenizer"}
    # post-training: SFT on the extended model, GRPO on the SFT model, which teaches the distilled
    # student on the SFT rows and then, as an agent, on its own trajectories
    assert set(spec.root.dag.tasks["sft"].dependent_tasks) == {"context_extension", "ingest", "tokenizer"}
    assert set(spec.root.dag.tasks["grpo"].dependent_tasks) == {"sft"}
    assert set(spec.root.dag.tasks["distill"].dependent_tasks) == {"grpo", "sft"}
    assert set(spec.root.dag.tasks["agent_trajectories"].dependent_tasks) == {"grpo", "ingest"}
    assert set(spec.root.dag.tasks["agent_distill"].dependent_tasks) == {"grpo", "sft", "distill", "agent_trajectories"}
    # the student is evaluated against its teacher and the latest blessed model (cluster preset)
    producers = {k: a.task_output_artifact.producer_task
                 for k, a in spec.root.dag.tasks["evaluate"].inputs.artifacts.items()}
    assert producers == {"candidate": "agent_distill", "teacher": "grpo",
                         "baseline_model": f"{BASELINE_RESOLVER_ID}-model-resolver",
                         "baseline_blessing": f"{BASELINE_RESOLVER_ID}-model-blessing-resolver"}
    # the export runs only when KFP's trigger policy finds the blessing's `blessed` == 1
    export = spec.root.dag.tasks["export"]
    assert set(export.dependent_tasks) == {"agent_distill", "evaluate"}
    assert export.trigger_policy.condition == \
        "(inputs.artifacts['_evaluate.blessing'].artifacts[0].metadata['blessed'] == 1.0)"
    ev = spec.components[spec.root.dag.tasks["evaluate"].component_ref.name]
    assert set(ev.output_definitions.artifacts) == {"evaluation", "blessing"}
    assert "title: tfx.ModelBlessing" in ev.output_definitions.artifacts["blessing"].artifact_type.instance_schema


def test_ingest_is_never_served_from_cache_on_kubeflow(compiled):
    # A scheduled run re-uses one compiled spec: ingest's parameters never change, so only an
    # uncached ingest sees a changed corpus. Everything else stays cacheable, except the baseline
    # resolvers: they must ask ML Metadata for the latest blessed model on every run.
    _, path = compiled
    spec, _ = kf.load_pipeline_spec(path)
    tasks = spec.root.dag.tasks
    assert tasks["ingest"].caching_options.enable_cache is False
    resolvers = {t for t in tasks if t.startswith(BASELINE_RESOLVER_ID)}
    assert len(resolvers) == 2 and not any(tasks[t].caching_options.enable_cache for t in resolvers)
    assert all(tasks[t].caching_options.enable_cache for t in tasks if t != "ingest" and t not in resolvers)


def test_container_runs_the_configured_image_and_tfx_entrypoint(compiled):
    cfg, path = compiled
    spec, _ = kf.load_pipeline_spec(path)
    executors = spec.deployment_spec["executors"]
    ingest = executors["ingest_executor"]["container"]
    assert ingest["image"] == cfg.kubeflow.default_image
    assert list(ingest["command"]) == kf.CONTAINER_COMMAND
    args = list(ingest["args"])
    assert args[args.index("--executor_class_path") + 1] == "components.ingest.component.Ingest_Executor"
    assert "{{$}}" in args


def test_resources_come_from_config(compiled):
    _, path = compiled
    spec, _ = kf.load_pipeline_spec(path)
    ex = spec.deployment_spec["executors"]
    ingest = ex["ingest_executor"]["container"]["resources"]
    # cluster preset: ingest cpu "16", memory "64Gi" = 68.719476736 GB
    assert ingest["cpuLimit"] == 16.0 and ingest["memoryLimit"] == pytest.approx(68.719477)
    stats = ex["statistics_executor"]["container"]["resources"]
    assert stats["accelerator"]["type"] == "nvidia.com/gpu"
    assert int(stats["accelerator"]["count"]) == 2
    assert "accelerator" not in ex["schema_executor"]["container"]["resources"]


def test_node_selectors_and_tolerations_in_kubernetes_platform_spec(compiled):
    _, path = compiled
    _, extra = kf.load_pipeline_spec(path)
    executors = extra[0]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    stats = executors["statistics_executor"]
    # a component's node_selector replaces the default's (GPU pods leave the CPU pool)
    assert stats["nodeSelector"]["labels"] == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
    assert stats["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert executors["ingest_executor"]["nodeSelector"]["labels"] == {"seekline.dev/pool": "cpu"}
    # every key names an executor that exists in the spec
    spec, _ = kf.load_pipeline_spec(path)
    assert set(executors) <= set(spec.deployment_spec["executors"])


def test_profile_volumes_secrets_and_images_reach_the_compiled_spec(tmp_path):
    cfg = load_config("cluster", [
        "resources.components.pretrain.image=ghcr.io/acme/seekline-gpu:1",
        "resources.components.pack.pvc_mounts=[{claim: corpus-pvc, mount_path: /data}]",
        "resources.components.evaluate.secret_env=[{secret: kfp, key: token, env: KFP_TOKEN},"
        " {secret: kfp, key: host, env: KFP_HOST}]"])
    spec, extra = kf.load_pipeline_spec(kf.compile_pipeline(cfg, tmp_path / "p.yaml"))
    from google.protobuf import json_format

    deploy = json_format.MessageToDict(spec.deployment_spec)
    images = {k: v["container"]["image"] for k, v in deploy["executors"].items() if "container" in v}
    assert images["pretrain_executor"] == "ghcr.io/acme/seekline-gpu:1"
    assert images["sft_executor"] == "ghcr.io/seekline/seekline-gpu:latest"   # the preset's GPU image
    assert images["ingest_executor"] == cfg.kubeflow.default_image          # the default elsewhere
    ex = extra[0]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    # the cluster preset's /dev/shm on the 8-GPU training pods, as a memory-backed emptyDir
    for cid in ("pretrain", "sft", "grpo", "distill", "agent_distill"):
        assert ex[f"{cid}_executor"]["emptyDirMounts"] == [
            {"volumeName": "dshm", "mountPath": "/dev/shm", "medium": "Memory", "sizeLimit": "32Gi"}], cid
    assert "emptyDirMounts" not in ex["ingest_executor"]
    assert ex["pack_executor"]["pvcMount"] == [{"constant": "corpus-pvc", "mountPath": "/data",
                                               "pvcNameParameter": {"runtimeValue": {"constant": "corpus-pvc"}}}]
    assert ex["evaluate_executor"]["secretAsEnv"] == [
        {"secretName": "kfp", "secretNameParameter": {"runtimeValue": {"constant": "kfp"}},
         "keyToEnv": [{"secretKey": "token", "envVar": "KFP_TOKEN"}, {"secretKey": "host", "envVar": "KFP_HOST"}]}]
    # the preset's optional teacher key for the agent trajectories
    assert ex["agent_trajectories_executor"]["secretAsEnv"][0]["optional"] is True
    assert ex["agent_trajectories_executor"]["secretAsEnv"][0]["keyToEnv"] == [
        {"secretKey": "api-key", "envVar": "OPENAI_API_KEY"}]


def test_multi_node_phase_steps_carry_their_tfjob_context(tmp_path):
    from google.protobuf import json_format

    from components.common.tfjob import CONTEXT_ENV as ENV_VAR

    cfg = load_config("cluster", ["pretrain.trainer.workers=4"])
    spec, _ = kf.load_pipeline_spec(kf.compile_pipeline(cfg, tmp_path / "p.yaml"))
    ex = json_format.MessageToDict(spec.deployment_spec)["executors"]
    [env] = [e for e in ex["pretrain_executor"]["container"]["env"] if e["name"] == ENV_VAR]
    ctx = json.loads(env["value"])
    assert ctx["image"] == cfg.resources.for_component("pretrain").image and ctx["resources"]["gpu"] == 8
    assert not any(e["name"] == ENV_VAR for e in ex["sft_executor"]["container"].get("env", []))


def test_gpu_components_on_a_cpu_only_image_are_flagged_before_submission():
    assert kf.gpu_image_warnings(load_config("cluster")) == []     # the preset's GPU pods run the CUDA build
    [w] = kf.gpu_image_warnings(load_config("cluster", ["resources.components.sft.image=registry.x/seekline:1"]))
    assert w.startswith("sft asks for 8 GPU(s) but runs registry.x/seekline:1") and "CUDA" in w
    assert w in kf.portability_warnings(load_config("cluster", ["resources.components.sft.image=registry.x/seekline:1"]))
    # a switched-off phase is not flagged; no GPUs, no warning
    assert kf.gpu_image_warnings(load_config("cluster", ["sft.enabled=false",
                                                         "resources.components.sft.image=registry.x/seekline:1"])) == []
    assert kf.gpu_image_warnings(load_config("tiny")) == []


@pytest.mark.parametrize("setting,message", [
    ("resources.default.pvc_mounts=[{claim: Bad_Name, mount_path: /d}]", "not a Kubernetes object name"),
    ("resources.default.pvc_mounts=[{claim: ok, mount_path: data}]", "must be an absolute path"),
    ("resources.default.secret_env=[{secret: s, key: k, env: 1BAD}]", "not an environment variable name"),
    ("resources.default.shm_size=lots", "not a memory quantity"),
])
def test_bad_profile_settings_are_config_errors(setting, message):
    from common.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        load_config("cluster", [setting])


def test_no_platform_document_without_selectors(tmp_path):
    path = kf.compile_pipeline(load_config("tiny"), tmp_path / "p.yaml")
    docs = list(yaml.safe_load_all(path.read_text()))
    assert len(docs) == 1


# ---------------------------------------------------------------------------------------
# REST calls


@pytest.fixture
def fake():
    f = FakeKFP()
    f.host = f.start()
    yield f
    f.stop()


@pytest.fixture
def package(tmp_path):
    p = tmp_path / "pipeline.yaml"
    p.write_text("pipelineInfo: {name: seekline-tiny}\nroot: {dag: {tasks: {}}}\nschemaVersion: 2.0.0\n")
    return p


def test_deploy_uploads_and_starts_a_run(fake, package):
    cfg = load_config("tiny")
    d = kf.deploy(cfg, package, fake.host, token="s3cret", run_name="nightly")
    uploads = [r for r in fake.requests if r.path == "/apis/v2beta1/pipelines/upload"]
    assert len(uploads) == 1 and uploads[0].query["name"] == ["seekline-tiny"]
    assert package.read_bytes() in uploads[0].body  # the compiled YAML is what was uploaded
    run = next(r for r in fake.requests if r.path == "/apis/v2beta1/runs").json()
    assert run["display_name"] == "nightly"
    assert run["experiment_id"] == d.experiment_id
    assert run["pipeline_version_reference"] == {"pipeline_id": d.pipeline_id, "pipeline_version_id": d.version_id}
    assert run["runtime_config"]["pipeline_root"] == cfg.kubeflow.pipeline_root
    exp = next(r for r in fake.requests if r.method == "POST" and r.path == "/apis/v2beta1/experiments").json()
    assert exp["display_name"] == cfg.kubeflow.experiment
    api_calls = [r for r in fake.requests if r.path != "/apis/v2beta1/healthz"]
    assert all(r.headers.get("authorization") == "Bearer s3cret" for r in api_calls)
    assert d.run_id and d.run_url().endswith(d.run_id)


def test_second_deploy_adds_a_version_to_the_same_pipeline(fake, package):
    cfg = load_config("tiny")
    first = kf.deploy(cfg, package, fake.host, start_run=False)
    second = kf.deploy(cfg, package, fake.host, start_run=False)
    assert first.pipeline_id == second.pipeline_id and first.version_id != second.version_id
    assert ("POST", "/apis/v2beta1/pipelines/upload_version") in fake.calls()
    assert ("POST", "/apis/v2beta1/runs") not in fake.calls()
    assert len(fake.experiments) == 1


def test_schedule_creates_a_recurring_run_with_six_field_cron(fake, package):
    cfg = load_config("tiny", ["kubeflow.max_concurrency=2"])
    d = kf.schedule(cfg, package, fake.host, cron="0 30 2 * * 1", name="weekly-retrain")
    body = next(r for r in fake.requests if r.method == "POST" and r.path == "/apis/v2beta1/recurringruns").json()
    assert body["trigger"] == {"cron_schedule": {"cron": "0 30 2 * * 1"}}
    assert body["display_name"] == "weekly-retrain"
    assert body["max_concurrency"] in (2, "2")
    assert body["mode"] == "ENABLE" and body["no_catchup"] is True
    assert body["pipeline_version_reference"]["pipeline_version_id"] == d.version_id
    assert d.recurring_run_id


def test_five_field_cron_is_refused_before_any_call(fake, package):
    with pytest.raises(DeployError, match="6, seconds first"):
        kf.schedule(load_config("tiny"), package, fake.host, cron="0 3 * * *")
    assert fake.requests == []


def test_server_refusal_is_a_clear_error(fake, package):
    fake.fail_runs_with = 429
    with pytest.raises(DeployError, match=r"refused to start a run: 429 .*run quota exceeded"):
        kf.deploy(load_config("tiny"), package, fake.host)


def test_unset_host():
    with pytest.raises(DeployError, match="KFP_HOST is not set"):
        kf.check_reachable(None)


def test_unreachable_host():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DeployError, match=f"cannot reach Kubeflow Pipelines at http://127.0.0.1:{port}"):
        kf.check_reachable(f"http://127.0.0.1:{port}", timeout_s=2)


def test_summary_is_json():
    d = kf.Deployment("http://h", "p", "v", "e", run_id="r")
    assert json.loads(kf.summary(d))["run_id"] == "r"


def test_portability_warning_for_paths_the_container_cannot_write():
    # tiny's Kubeflow pipeline root is minio://, which tf.io.gfile cannot write from a pod
    w, e = kf.portability_warnings(load_config("tiny"))
    assert "validate.frozen_dir" in w and "minio://mlpipeline/seekline-tiny/frozen" in w
    assert "export.push_dir" in e and "minio://mlpipeline/serving/seekline-tiny" in e
    assert kf.portability_warnings(load_config("cluster")) == []
    assert kf.portability_warnings(load_config("tiny", ["validate.frozen_dir=gs://b/f", "export.push_dir=gs://b/s"])) == []
    assert kf.portability_warnings(load_config("tiny", ["validate.frozen_dir=/mnt/shared/frozen",
                                                        "export.push_dir=/mnt/shared/serving"])) == []


def test_rescheduling_replaces_the_recurring_run_of_the_same_name(fake, package):
    cfg = load_config("tiny")
    other = kf.schedule(cfg, package, fake.host, cron="0 0 1 * * *", name="nightly-eval")
    first = kf.schedule(cfg, package, fake.host, cron="0 0 3 * * *")
    second = kf.schedule(cfg, package, fake.host, cron="0 0 4 * * *")  # e.g. a helm upgrade
    assert set(fake.recurring_runs) == {other.recurring_run_id, second.recurring_run_id}
    assert ("DELETE", f"/apis/v2beta1/recurringruns/{first.recurring_run_id}") in fake.calls()
