"""The TFJob launcher (components/common/tfjob.py) against a loopback Kubernetes API double that
records every request and plays scripted TFJob status sequences, and its manifest against the
TFJob CRD subset + the core/v1 Pod schema."""
from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import jsonschema
import pytest
import yaml

from common.errors import ConfigError, UserError
from components.common import tfjob
from configs.schema import ResourceSpec, load_config
from pipelines.diagnose import match_line

NS = "kubeflow-user"
CATCH_ALL = "any other `seekline: error: …` line"   # tests/test_diagnose.py
JOB_PATH = re.compile(r"^/apis/kubeflow\.org/v1/namespaces/([^/]+)/tfjobs(?:/([^/]+))?$")
PODS_PATH = re.compile(r"^/api/v1/namespaces/([^/]+)/pods$")
LOG_PATH = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)/log$")


def cond(ctype: str, reason: str = "", message: str = "") -> dict:
    return {"type": ctype, "status": "True", "reason": reason, "message": message}


def pod(name: str, phase: str, replica_type: str = "chief", scheduled_msg: str | None = None) -> dict:
    status: dict = {"phase": phase}
    if scheduled_msg:
        status["conditions"] = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                 "message": scheduled_msg}]
    if phase == "Running":
        status["containerStatuses"] = [{"name": "tensorflow", "ready": True, "restartCount": 0, "image": "x",
                                        "imageID": "", "state": {"running": {}}}]
    return {"metadata": {"name": name, "labels": {tfjob.LABEL_TYPE: replica_type}}, "status": status}


@dataclass
class FakeKube:
    """Serves TFJob create/get/delete, pod list and pod logs. `statuses`: the condition lists the
    job shows on successive GETs (the last one repeats); `pods`: the pod list per GET index."""

    statuses: list[list[dict]]
    pods: list[dict] = field(default_factory=list)
    log: str = ""
    requests: list[tuple[str, str, dict, bytes]] = field(default_factory=list)
    jobs: dict[str, dict] = field(default_factory=dict)
    gets: int = 0

    def start(self) -> str:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _handle(self):
                n = int(self.headers.get("Content-Length") or 0)
                u = urlparse(self.path)
                body = self.rfile.read(n)
                fake.requests.append((self.command, u.path, parse_qs(u.query), body))
                try:
                    status, out, ctype = fake.route(self.command, u.path, parse_qs(u.query), body)
                except Exception as e:  # a bug in the double shows as a 500, not a hang
                    status, out, ctype = 500, json.dumps({"message": repr(e)}).encode(), "application/json"
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            do_GET = do_POST = do_DELETE = _handle  # noqa: N815

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()

    def route(self, method, path, query, body):
        js = "application/json"
        if m := JOB_PATH.match(path):
            name = m.group(2)
            if method == "POST":
                job = json.loads(body)
                if job["metadata"]["name"] in self.jobs:
                    return 409, json.dumps({"message": "already exists"}).encode(), js
                self.jobs[job["metadata"]["name"]] = job
                return 201, body, js
            if name not in self.jobs:
                return 404, json.dumps({"message": f"tfjobs {name} not found"}).encode(), js
            if method == "DELETE":
                del self.jobs[name]
                return 200, json.dumps({"status": "Success"}).encode(), js
            conds = self.statuses[min(self.gets, len(self.statuses) - 1)]
            self.gets += 1
            return 200, json.dumps({**self.jobs[name], "status": {"conditions": conds}}).encode(), js
        if m := PODS_PATH.match(path):
            sel = dict(kv.split("=") for kv in query.get("labelSelector", [""])[0].split(","))
            items = [p for p in self.pods if sel.get(tfjob.LABEL_TYPE, p["metadata"]["labels"][tfjob.LABEL_TYPE])
                     == p["metadata"]["labels"][tfjob.LABEL_TYPE]]
            return 200, json.dumps({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items}).encode(), js
        if LOG_PATH.match(path):
            return 200, self.log.encode(), "text/plain"
        return 404, json.dumps({"message": f"no route {method} {path}"}).encode(), js


@pytest.fixture
def cluster_cfg():
    return load_config("cluster", ["pretrain.trainer.workers=4"])


def manifest_for(cfg, namespace=NS, **kw):
    res = cfg.resources.for_component("pretrain")
    return tfjob.tfjob_manifest("pretrain", cfg.pretrain, res, image="ghcr.io/seekline/seekline:cuda",
                                config_uri="gs://b/root/pretrain/model/7-tfjob-config.yaml",
                                output="gs://b/root/pretrain/model/7", data="gs://b/root/pack/packed/5",
                                tokenizer="gs://b/root/tokenizer/tokenizer/3", namespace=namespace, **kw)


def run(fake: FakeKube, manifest: dict, timeout_s=5.0, start_timeout_s=5.0):
    lines: list[str] = []
    host = fake.start()
    try:
        job = tfjob.run_tfjob(manifest, tfjob.kube_api(host), timeout_s, start_timeout_s, lines.append, poll_s=0.01)
    finally:
        fake.stop()
    return job, lines


# ---------------------------------------------------------------------------------------
# The manifest


def test_workers_field_is_validated():
    assert load_config("tiny").pretrain.trainer.workers == 1
    with pytest.raises(ConfigError, match="workers"):
        load_config("tiny", ["pretrain.trainer.workers=0"])


def test_cluster_preset_manifest_validates_against_crd_and_pod_schemas(cluster_cfg):
    m = manifest_for(cluster_cfg, active_deadline_s=86400)
    tfjob.validate_manifest(m)
    specs = m["spec"]["tfReplicaSpecs"]
    assert specs["Chief"]["replicas"] == 1 and specs["Worker"]["replicas"] == 3   # 4 pods in all
    assert {s["restartPolicy"] for s in specs.values()} == {"OnFailure"}
    assert m["spec"]["runPolicy"] == {"cleanPodPolicy": "Running", "backoffLimit": 3, "activeDeadlineSeconds": 86400}
    pod_spec = specs["Worker"]["template"]["spec"]
    c = pod_spec["containers"][0]
    # cluster preset, pretrain: cpu 16, memory 128Gi, 8 GPUs, the GPU pool, 32Gi /dev/shm
    assert c["resources"] == {"requests": {"cpu": "16", "memory": "128Gi"},
                              "limits": {"cpu": "16", "memory": "128Gi", "nvidia.com/gpu": "8"}}
    assert pod_spec["nodeSelector"] == {"seekline.dev/pool": "gpu"}
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "32Gi"}} in pod_spec["volumes"]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]
    assert c["command"] == ["seekline", "train", "pretrain", "--config", "/etc/seekline/config.yaml",
                            "--output", "gs://b/root/pretrain/model/7", "--no-progress",
                            "--data", "gs://b/root/pack/packed/5", "--tokenizer", "gs://b/root/tokenizer/tokenizer/3"]
    # the config comes from the object store through an init container into the shared emptyDir
    init = pod_spec["initContainers"][0]
    assert init["command"][-2:] == ["gs://b/root/pretrain/model/7-tfjob-config.yaml", "/etc/seekline/config.yaml"]
    # the Training Operator injects TF_CONFIG; a value of ours would override its cluster layout
    assert "TF_CONFIG" not in json.dumps(m)


def test_secret_env_tolerations_and_pvc_reach_the_pods(cluster_cfg):
    res = ResourceSpec(gpu=2, tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                       pvc_mounts=[{"claim": "seekline-data", "mount_path": "/data"}],
                       secret_env=[{"secret": "seekline-teacher", "key": "api-key", "env": "OPENAI_API_KEY",
                                    "optional": True}])
    m = tfjob.tfjob_manifest("sft", load_config("tiny", ["sft.trainer.workers=2"]).sft, res, image="img:1",
                             config_uri="/data/root/sft-tfjob-config.yaml", output="/data/root/sft/model/3",
                             data="/data/root/ingest/examples/1", init="/data/root/ce/model/2/final")
    tfjob.validate_manifest(m)
    spec = m["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]
    c = spec["containers"][0]
    assert m["spec"]["tfReplicaSpecs"]["Worker"]["replicas"] == 1
    assert c["resources"] == {"limits": {"nvidia.com/gpu": "2"}}
    assert c["env"] == [{"name": "OPENAI_API_KEY", "valueFrom": {"secretKeyRef": {
        "name": "seekline-teacher", "key": "api-key", "optional": True}}}]
    assert spec["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert {"name": "pvc-0", "persistentVolumeClaim": {"claimName": "seekline-data"}} in spec["volumes"]
    assert "initContainers" not in spec   # the config is on the PVC: read in place
    assert c["command"][3:5] == ["--config", "/data/root/sft-tfjob-config.yaml"]


def test_schema_rejects_what_the_operator_would(cluster_cfg):
    m = manifest_for(cluster_cfg)
    bad = json.loads(json.dumps(m))
    bad["spec"]["tfReplicaSpecs"]["Worker"]["restartPolicy"] = "Sometimes"
    with pytest.raises(jsonschema.ValidationError, match="Sometimes"):
        tfjob.validate_manifest(bad)
    bad = json.loads(json.dumps(m))
    bad["spec"]["tfReplicaSpecs"]["Launcher"] = bad["spec"]["tfReplicaSpecs"].pop("Worker")
    with pytest.raises(jsonschema.ValidationError):
        tfjob.validate_manifest(bad)
    bad = json.loads(json.dumps(m))
    bad["spec"]["tfReplicaSpecs"]["Chief"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = []
    with pytest.raises(Exception, match="cpu|resources"):   # the Pod schema (kubernetes_validate)
        tfjob.validate_manifest(bad)


def test_local_paths_and_one_worker_are_refused(cluster_cfg):
    res = cluster_cfg.resources.for_component("pretrain")
    with pytest.raises(ConfigError, match="output outputs/x .*cannot see it"):
        tfjob.tfjob_manifest("pretrain", cluster_cfg.pretrain, res, image="i", config_uri="gs://b/c.yaml",
                             output="outputs/x")
    with pytest.raises(ConfigError, match="workers is 1"):
        tfjob.tfjob_manifest("pretrain", load_config("tiny").pretrain, res, image="i", config_uri="gs://b/c.yaml",
                             output="gs://b/o")


# ---------------------------------------------------------------------------------------
# Running it against the loopback API


def test_success_streams_chief_log_and_records_requests(cluster_cfg):
    m = manifest_for(cluster_cfg)
    name = m["metadata"]["name"]
    fake = FakeKube(statuses=[[], [cond("Created")], [cond("Created"), cond("Running")],
                              [cond("Created"), cond("Running")],
                              [cond("Created"), cond("Running"), cond("Succeeded", "TFJobSucceeded", "done")]],
                    pods=[pod(f"{name}-chief-0", "Running"), pod(f"{name}-worker-0", "Running", "worker")],
                    log="step 1 loss 10.2\nstep 2 loss 9.8\n")
    job, lines = run(fake, m)
    assert job["metadata"]["name"] == name
    assert f"[{name}-chief-0] step 2 loss 9.8" in lines
    assert not any("worker-0]" in ln for ln in lines)   # only the chief's log is streamed
    methods = [(r[0], r[1]) for r in fake.requests]
    assert methods[0] == ("POST", f"/apis/kubeflow.org/v1/namespaces/{NS}/tfjobs")
    assert json.loads(fake.requests[0][3]) == m   # the manifest is sent unchanged
    sel = [r[2]["labelSelector"][0] for r in fake.requests if r[1].endswith("/pods")]
    assert sel and all(s == f"training.kubeflow.org/job-name={name},training.kubeflow.org/replica-type=chief,"
                       "training.kubeflow.org/replica-index=0" for s in sel)
    logs = [r for r in fake.requests if r[1].endswith("/log")]
    assert len(logs) == 1 and logs[0][2]["container"] == ["tensorflow"] and logs[0][2]["follow"][0].lower() == "true"
    assert not any(r[0] == "DELETE" for r in fake.requests)   # cleanPodPolicy cleans up, not us


def test_failed_job_raises_with_its_reason(cluster_cfg):
    m = manifest_for(cluster_cfg)
    fake = FakeKube(statuses=[[cond("Created")], [cond("Created"), cond("Running")],
                              [cond("Created"), cond("Running"),
                               cond("Failed", "TFJobFailed", "TFJob kubeflow-user/x has failed because 1 Worker "
                                    "replica(s) failed.")]],
                    pods=[pod(f"{m['metadata']['name']}-chief-0", "Running")], log="Traceback ...\n")
    with pytest.raises(UserError) as e:
        run(fake, m)
    msg = str(e.value)
    assert msg.startswith(f"TFJob {m['metadata']['name']} failed: TFJobFailed: ") and "1 Worker replica(s)" in msg
    assert match_line("seekline: error: " + msg).symptom.startswith("`seekline: error: TFJob")


def test_pending_on_gpus_is_a_start_timeout_with_the_scheduler_message(cluster_cfg):
    m = manifest_for(cluster_cfg)
    name = m["metadata"]["name"]
    msg = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu. preemption: 0/3 nodes are available"
    fake = FakeKube(statuses=[[cond("Created")]], pods=[pod(f"{name}-chief-0", "Pending", scheduled_msg=msg)])
    with pytest.raises(UserError) as e:
        run(fake, m, timeout_s=10.0, start_timeout_s=0.2)
    text = str(e.value)
    assert text.startswith(f"TFJob {name} did not start within 0.2s: pod {name}-chief-0 Pending: {msg}")
    assert text.endswith("(job deleted)")
    assert ("DELETE", f"/apis/kubeflow.org/v1/namespaces/{NS}/tfjobs/{name}") in [(r[0], r[1]) for r in fake.requests]
    assert name not in fake.jobs
    assert match_line("seekline: error: " + text) is not None


def test_overall_timeout_deletes_the_job(cluster_cfg):
    m = manifest_for(cluster_cfg)
    name = m["metadata"]["name"]
    fake = FakeKube(statuses=[[cond("Created"), cond("Running")]], pods=[pod(f"{name}-chief-0", "Running")],
                    log="step 1\n")
    with pytest.raises(UserError, match=rf"TFJob {name} timed out after 0.3s \(last condition: Running; "
                       r"job deleted\)"):
        run(fake, m, timeout_s=0.3, start_timeout_s=5.0)
    deletes = [r for r in fake.requests if r[0] == "DELETE"]
    assert len(deletes) == 1 and json.loads(deletes[0][3])["propagationPolicy"] == "Foreground"
    assert name not in fake.jobs


def test_existing_job_is_attached_to_not_recreated(cluster_cfg):
    """A retried pipeline step finds the job of its output folder and waits for it."""
    m = manifest_for(cluster_cfg)
    fake = FakeKube(statuses=[[cond("Created"), cond("Running"), cond("Succeeded")]])
    fake.jobs[m["metadata"]["name"]] = m
    _, lines = run(fake, m)
    assert any("exists (an earlier try)" in ln for ln in lines)


def test_api_refusal_is_one_line(cluster_cfg):
    m = manifest_for(cluster_cfg, namespace="nope")
    fake = FakeKube(statuses=[[]])
    fake.route = lambda *a: (403, json.dumps({"message": "tfjobs.kubeflow.org is forbidden: User "
                                                         "\"system:serviceaccount:x:pipeline-runner\" cannot create "
                                                         "resource"}).encode(), "application/json")
    with pytest.raises(UserError, match=r"failed at creation in namespace nope: HTTP 403 .*cannot create resource"):
        run(fake, m)


def test_launch_phase_writes_config_and_returns_chief_report(tmp_path):
    """The components' launch branch: config on shared storage (a PVC path here), the job, the
    report the chief wrote; the written config loads as the phase section that was passed."""
    cfg = load_config("tiny", ["pretrain.trainer.workers=2", "pretrain.trainer.lr=0.002"])
    shared = tmp_path / "pvc"
    out = shared / "pretrain" / "model" / "9"
    out.mkdir(parents=True)
    (out / "report.json").write_text(json.dumps({"steps": 5, "eval_loss": 1.5}))   # what the chief writes
    ctx = tfjob.TFJobContext(image="img:1", namespace=NS,
                             resources=ResourceSpec(pvc_mounts=[{"claim": "shared", "mount_path": str(shared)}]))
    fake = FakeKube(statuses=[[cond("Created"), cond("Running"), cond("Succeeded")]])
    host = fake.start()
    try:
        report = tfjob.launch_phase("pretrain", cfg.pretrain, str(out), data=str(shared / "packed"),
                                    tokenizer=str(shared / "tok"), api=tfjob.kube_api(host), context=ctx,
                                    log_sink=lambda s: None, poll_s=0.01)
    finally:
        fake.stop()
    assert report == {"steps": 5, "eval_loss": 1.5}
    config_file = f"{out}-tfjob-config.yaml"
    assert load_config(config_file).pretrain == cfg.pretrain
    sent = json.loads(fake.requests[0][3])
    assert sent["spec"]["tfReplicaSpecs"]["Chief"]["template"]["spec"]["containers"][0]["command"][3:5] == \
        ["--config", config_file]


def test_missing_context_is_a_clear_error():
    with pytest.raises(UserError, match=r"SEEKLINE_TFJOB is not set"):
        tfjob.load_context({})
    ctx = tfjob.load_context(dict([tuple(tfjob.context_env("img:2", ResourceSpec(gpu=8)).values())]))
    assert ctx.image == "img:2" and ctx.resources.gpu == 8


def test_launch_env_carries_the_components_image_and_resources(cluster_cfg):
    """What the compiled pipeline puts in a multi-node step's env: that component's resources from
    the same config (and only for phases with workers > 1)."""
    cfg = load_config("cluster", ["pretrain.trainer.workers=4", "agent.distill.trainer.workers=2",
                                  "resources.components.pretrain.image=r.example/seekline:cuda"])
    envs = tfjob.launch_envs(cfg)
    assert sorted(envs) == ["agent_distill", "pretrain"]
    ctx = tfjob.load_context({envs["pretrain"]["name"]: envs["pretrain"]["value"]})
    assert ctx.image == "r.example/seekline:cuda"
    assert ctx.resources == cfg.resources.for_component("pretrain") and ctx.resources.gpu == 8
    assert tfjob.load_context({tfjob.CONTEXT_ENV: envs["agent_distill"]["value"]}).image == \
        cfg.resources.for_component("agent_distill").image                  # the preset's GPU image
    assert tfjob.launch_envs(load_config("cluster")) == {}   # the default: every phase in one pod


def test_every_launcher_message_has_a_troubleshooting_row():
    for msg in ["TFJob X failed at creation in namespace X: X", "TFJob X: reading its status failed: X",
                "TFJob X was deleted while the step waited for it", "TFJob X succeeded but its chief failed to write X",
                "X.trainer.workers > 1: the TFJob's X X is neither an object-store URI",
                "trainer.workers > 1 needs a Kubeflow pipeline compiled with the TFJob launch context",
                "multi-node training (trainer.workers > 1) needs to run inside the cluster: no in-cluster"]:
        p = match_line("seekline: error: " + msg)
        assert p is not None and p.symptom != CATCH_ALL, msg


def test_rbac_grants_only_what_the_launcher_uses():
    """The chart's trainer Role: the launcher's calls (create / get / delete tfjobs, list pods,
    get pods/log; watch and pods get for `kubectl`-style waits) and nothing more. Read from the
    template itself (its control lines dropped, values as x): tests/test_helm_chart.py renders
    and validates the whole chart."""
    text = (Path(__file__).resolve().parents[1] / "infra/helm/seekline/templates/rbac.yaml").read_text()
    lines = [re.sub(r"\{\{.*?\}\}", "x", ln) for ln in text.splitlines()
             if not re.fullmatch(r"\s*\{\{.*\}\}\s*", ln)]
    [role] = [d for d in yaml.safe_load_all("\n".join(lines)) if d and d["kind"] == "Role"]
    rules = {(g, r): set(rule["verbs"]) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]}
    assert rules == {("kubeflow.org", "tfjobs"): {"create", "get", "watch", "delete"},
                     ("", "pods"): {"get", "list"}, ("", "pods/log"): {"get"}}


COMPONENTS = {   # phase: (component module, class, input artifacts, expected --data / --tokenizer / --init)
    "pretrain": ("components.pretrain.component", "Pretrain", ["examples", "tokenizer"],
                 ("examples", "tokenizer", None)),
    "context_extension": ("components.context_extension.component", "ExtendContext",
                          ["pretrained", "examples", "tokenizer"], ("examples", "tokenizer", "pretrained/final")),
    "sft": ("components.sft.component", "SupervisedFineTune", ["base_model", "examples", "tokenizer"],
            ("examples", "tokenizer", "base_model/final")),
    "grpo": ("components.grpo.component", "GroupRelativePolicyOptimization", ["sft_model"],
             (None, None, "sft_model/final")),
    "distill": ("components.distill.component", "Distill", ["teacher", "sft_model"],
                ("sft_model/data", "teacher/final", "teacher/final")),
}


@pytest.mark.parametrize("phase", list(COMPONENTS))
def test_training_component_launches_a_tfjob_when_workers_gt_1(phase, tmp_path, monkeypatch):
    """The components' launch branch (the decorated function itself, its TFX artifacts on a
    shared PVC path): the TFJob's command carries the step's input artifacts, and the Model
    artifact gets the properties of the report the chief wrote."""
    import importlib

    from tfx.types import standard_artifacts

    module, cls, inputs, (want_data, want_tok, want_init) = COMPONENTS[phase]
    fn = getattr(importlib.import_module(module), cls).EXECUTOR_SPEC.executor_class._FUNCTION
    shared = tmp_path / "pvc"
    arts = {}
    for name in inputs:
        a = standard_artifacts.Model() if name != "examples" else standard_artifacts.Examples()
        a.uri = str(shared / name)
        arts[name] = a
    model = standard_artifacts.Model()
    model.uri = str(shared / phase / "model")
    (shared / phase / "model").mkdir(parents=True)
    (shared / phase / "model" / "report.json").write_text(json.dumps(
        {"steps": 7, "student_parameters": 1, "lora": False, "extended_context": 256}))
    section = getattr(load_config("tiny", [f"{phase}.trainer.workers=3"]), phase)
    ctx = tfjob.context_env("img:gpu", ResourceSpec(gpu=4, pvc_mounts=[{"claim": "shared", "mount_path": str(shared)}]),
                            namespace=NS)
    monkeypatch.setenv(ctx["name"], ctx["value"])
    fake = FakeKube(statuses=[[cond("Created"), cond("Running"), cond("Succeeded")]])
    host = fake.start()
    real = tfjob.kube_api
    monkeypatch.setattr(tfjob, "kube_api", lambda host_=None: real(host))
    try:
        fn(model=model, config_json=section.model_dump_json(), **arts)
    finally:
        fake.stop()
    assert model.get_int_custom_property("steps") == 7
    sent = json.loads(fake.requests[0][3])
    assert sent["spec"]["tfReplicaSpecs"]["Worker"]["replicas"] == 2
    c = sent["spec"]["tfReplicaSpecs"]["Chief"]["template"]["spec"]["containers"][0]
    assert c["image"] == "img:gpu" and c["resources"]["limits"]["nvidia.com/gpu"] == "4"
    cmd = c["command"]
    assert cmd[:3] == ["seekline", "train", phase] and cmd[cmd.index("--output") + 1] == model.uri
    for flag, want in (("--data", want_data), ("--tokenizer", want_tok), ("--init", want_init)):
        got = cmd[cmd.index(flag) + 1] if flag in cmd else None
        assert got == (str(shared / want) if want else None), (flag, cmd)
    assert load_config(cmd[cmd.index("--config") + 1]).model_dump()[phase] == section.model_dump()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_the_manifests_commands_train_as_chief_and_worker(tmp_path):
    """The Chief and Worker commands of a 2-worker manifest, run as two local processes with the
    TF_CONFIG the Training Operator would inject (chief + worker, task type/index per replica):
    MultiWorkerMirroredStrategy trains and the chief writes the report and final/ the step reads."""
    import os
    import subprocess
    import sys

    from training.testdata import write_packed

    shared = tmp_path / "pvc"
    data = write_packed(str(shared / "packed"), 32, 256, train_rows=32, eval_rows=8)
    tok = shared / "tok"
    tok.mkdir()
    (tok / "tokenizer_meta.json").write_text(json.dumps({"vocab_size": 256, "bos_id": 1, "eos_id": 2, "pad_id": 0}))
    cfg = load_config("tiny", ["pretrain.trainer.workers=2", "pretrain.trainer.steps=4",
                               "pretrain.trainer.warmup_steps=1", "pretrain.trainer.micro_batch_size=2",
                               "pretrain.trainer.eval_batches=1", "pretrain.trainer.checkpoint_every=2",
                               "pretrain.model_overrides={rope_scaling: null, num_hidden_layers: 1}"])
    out = str(shared / "pretrain" / "model" / "1")
    res = ResourceSpec(pvc_mounts=[{"claim": "shared", "mount_path": str(shared)}])
    m = tfjob.tfjob_manifest("pretrain", cfg.pretrain, res, image="img", output=out, data=data, tokenizer=str(tok),
                             config_uri=tfjob.write_phase_config("pretrain", cfg.pretrain, out))
    tfjob.validate_manifest(m)
    hosts = {"chief": [f"localhost:{_free_port()}"], "worker": [f"localhost:{_free_port()}"]}
    procs = []
    for rtype in ("Chief", "Worker"):
        cmd = m["spec"]["tfReplicaSpecs"][rtype]["template"]["spec"]["containers"][0]["command"]
        assert cmd[0] == "seekline"
        tf_config = {"cluster": hosts, "task": {"type": rtype.lower(), "index": 0}, "environment": "cloud"}
        env = {**os.environ, "TF_CONFIG": json.dumps(tf_config), "TF_CPP_MIN_LOG_LEVEL": "3",
               "CUDA_VISIBLE_DEVICES": ""}
        procs.append(subprocess.Popen([sys.executable, "-m", "pipelines.cli", *cmd[1:]], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    report = json.loads((Path(out) / "report.json").read_text())
    assert report["steps"] == 4
    assert (Path(out) / "final" / "model.safetensors").exists()
