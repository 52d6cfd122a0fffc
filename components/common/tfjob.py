"""Multi-node training through a Kubeflow TFJob (no TFX here: components call it, tests drive it).

When a phase's `trainer.workers` > 1 its pipeline step does not train in its own pod: it writes
the phase config to shared storage, creates a kubeflow.org/v1 TFJob (1 Chief + workers-1 Worker
pods, each with the component's image and resources) running `seekline train PHASE`, streams the
chief's log and waits. The Training Operator injects TF_CONFIG into every replica, which
training/strategy.py turns into MultiWorkerMirroredStrategy; we never set it ourselves. Re-running
the step re-creates the job with the same name (or re-attaches to it while it still exists) and
`seekline train` resumes from the newest checkpoint in the output folder.
"""
from __future__ import annotations

import hashlib
import json
import os
import shlex
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from common.errors import ConfigError, UserError
from configs.schema import ResourceSpec

GROUP, VERSION, PLURAL = "kubeflow.org", "v1", "tfjobs"
CONTAINER = "tensorflow"   # the Training Operator finds the TF container (and its port) by this name
CONFIG_MOUNT = "/etc/seekline"
SCHEMA_FILE = Path(__file__).with_name("tfjob_crd_schema.json")
LABEL_JOB, LABEL_TYPE, LABEL_INDEX = ("training.kubeflow.org/job-name", "training.kubeflow.org/replica-type",
                                      "training.kubeflow.org/replica-index")
# The environment variable the compiled pipeline sets on a training step's container: JSON of
# TFJobContext (the image and resources of that component, from the same config).
CONTEXT_ENV = "SEEKLINE_TFJOB"
_SA_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


class TFJobContext(BaseModel):
    """What a training step needs to launch its TFJob besides the phase section."""

    image: str
    resources: ResourceSpec = ResourceSpec()
    namespace: str | None = None       # None: the namespace of the pod the step runs in
    timeout_s: float = 7 * 24 * 3600    # the whole job, then it is deleted
    start_timeout_s: float = 1800       # all replicas Running (scheduling + image pull)
    backoff_limit: int = 3              # restarts of failed replicas before the job fails


def context_env(image: str, resources: ResourceSpec, **kw: Any) -> dict[str, str]:
    """The {name, value} env entry for a training step's container (PipelineSpec executor env)."""
    return {"name": CONTEXT_ENV, "value": TFJobContext(image=image, resources=resources, **kw).model_dump_json()}


# The training components (pipeline component id → the config section they train; agent_distill
# runs the Distill component on agent.distill, launched as `seekline train distill`).
TRAINING_SECTIONS = {"pretrain": ("pretrain",), "context_extension": ("context_extension",), "sft": ("sft",),
                     "grpo": ("grpo",), "distill": ("distill",), "agent_distill": ("agent", "distill")}


def launch_envs(config) -> dict[str, dict[str, str]]:
    """{component id: env entry} for the training steps of `config` (a SeeklineConfig) whose
    trainer.workers > 1: what the pipeline compiler adds to those executors' container env."""
    out = {}
    for cid, path in TRAINING_SECTIONS.items():
        section = config
        for key in path:
            section = getattr(section, key)
        if section.trainer.workers > 1:
            res = config.resources.for_component(cid)
            out[cid] = context_env(res.image or config.kubeflow.default_image, res)
    return out


def job_name(phase: str, output: str) -> str:
    """DNS-1123 name, stable for one output folder (a retried step finds its own job); short enough
    for the operator's pod names (NAME-worker-12) to stay under 63 characters."""
    digest = hashlib.sha256(output.rstrip("/").encode()).hexdigest()[:10]
    return f"seekline-{phase.replace('_', '-')}-{digest}"


def _is_local(path: str) -> bool:
    return "://" not in path


def _train_command(phase: str, config_path: str, output: str, data: str | None, tokenizer: str | None,
                   init: str | None) -> list[str]:
    cmd = ["seekline", "train", phase, "--config", config_path, "--output", output, "--no-progress"]
    for flag, value in (("--data", data), ("--tokenizer", tokenizer), ("--init", init)):
        if value:
            cmd += [flag, value]
    return cmd


def _pod_template(phase: str, res: ResourceSpec, image: str, command: list[str], config_uri: str) -> dict:
    container: dict[str, Any] = {"name": CONTAINER, "image": image, "command": command,
                                 "ports": [{"name": "tfjob-port", "containerPort": 2222}]}
    requests: dict[str, Any] = {k: v for k, v in (("cpu", res.cpu), ("memory", res.memory)) if v}
    limits = dict(requests)
    if res.gpu:
        limits[res.gpu_type] = str(res.gpu)   # extended resources: limits only (requests default to them)
    if requests or limits:
        container["resources"] = {"requests": requests, "limits": limits} if requests else {"limits": limits}
    env = [{"name": e.env, "valueFrom": {"secretKeyRef": {"name": e.secret, "key": e.key, "optional": e.optional}}}
           for e in res.secret_env]
    if env:
        container["env"] = env
    volumes, mounts = [], []
    if res.shm_size:
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": res.shm_size}})
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    for i, p in enumerate(res.pvc_mounts):
        volumes.append({"name": f"pvc-{i}", "persistentVolumeClaim": {"claimName": p.claim}})
        mounts.append({"name": f"pvc-{i}", "mountPath": p.mount_path})
    spec: dict[str, Any] = {"containers": [container]}
    if not _is_local(config_uri):
        # `seekline train --config` reads a local file: an init container (same image, so the same
        # gcs/s3 filesystems) copies the config from the object store into a shared emptyDir.
        volumes.append({"name": "seekline-config", "emptyDir": {}})
        mounts.append({"name": "seekline-config", "mountPath": CONFIG_MOUNT})
        spec["initContainers"] = [{
            "name": "fetch-config", "image": image,
            "command": ["python", "-c", "import sys, tensorflow as tf; tf.io.gfile.copy(sys.argv[1], sys.argv[2], "
                        "overwrite=True)", config_uri, f"{CONFIG_MOUNT}/config.yaml"],
            "volumeMounts": [{"name": "seekline-config", "mountPath": CONFIG_MOUNT}]}]
    if mounts:
        container["volumeMounts"] = mounts
        spec["volumes"] = volumes
    if res.node_selector:
        spec["nodeSelector"] = dict(res.node_selector)
    if res.tolerations:
        spec["tolerations"] = [t.model_dump(exclude_none=True) for t in res.tolerations]
    return {"metadata": {"labels": {"app.kubernetes.io/name": "seekline", "seekline.dev/phase": phase}},
            "spec": spec}


def tfjob_manifest(phase: str, section: BaseModel, resources: ResourceSpec, *, image: str, config_uri: str,
                   output: str, data: str | None = None, tokenizer: str | None = None, init: str | None = None,
                   namespace: str = "default", backoff_limit: int = 3,
                   active_deadline_s: int | None = None) -> dict:
    """The kubeflow.org/v1 TFJob running `seekline train PHASE` on section.trainer.workers pods:
    one Chief (writes checkpoints, reports, final/) and workers-1 Workers, all with `resources`.

    `output` and the data paths must be on storage every pod sees (gs://, s3:// or a PVC mount):
    each replica reads the same rows and the chief writes the artifact the pipeline step returns."""
    workers = section.trainer.workers
    if workers < 2:
        raise ConfigError(f"{phase}.trainer.workers is {workers}: a TFJob is only for workers > 1")
    shared = [m.mount_path.rstrip("/") + "/" for m in resources.pvc_mounts]
    for what, path in (("output", output), ("data", data), ("tokenizer", tokenizer), ("init", init),
                       ("config", config_uri)):
        if path and _is_local(path) and not any(path.startswith(s) for s in shared):
            raise ConfigError(f"{phase}.trainer.workers > 1: the TFJob's {what} {path} is neither an object-store URI (gs://, s3://) "
                              f"nor under a PVC mount of resources.components.{phase}.pvc_mounts: the worker pods "
                              "cannot see it (set kubeflow.pipeline_root to shared storage)")
    config_path = config_uri if _is_local(config_uri) else f"{CONFIG_MOUNT}/config.yaml"
    command = _train_command(phase, config_path, output, data, tokenizer, init)
    template = _pod_template(phase, resources, image, command, config_uri)
    replica = {"restartPolicy": "OnFailure", "template": template}
    specs: dict[str, Any] = {"Chief": {"replicas": 1, **replica}}
    specs["Worker"] = {"replicas": workers - 1, **json.loads(json.dumps(replica))}
    run_policy: dict[str, Any] = {"cleanPodPolicy": "Running", "backoffLimit": backoff_limit}
    if active_deadline_s:
        run_policy["activeDeadlineSeconds"] = int(active_deadline_s)
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "TFJob",
            "metadata": {"name": job_name(phase, output), "namespace": namespace,
                         "labels": {"app.kubernetes.io/name": "seekline", "seekline.dev/phase": phase}},
            "spec": {"runPolicy": run_policy, "tfReplicaSpecs": specs}}


def validate_manifest(manifest: dict, kubernetes_version: str = "1.30") -> None:
    """The TFJob against the CRD subset (SCHEMA_FILE), each replica's template as a core/v1 Pod.
    Raises jsonschema / kubernetes_validate errors (a test-time check: both are dev dependencies)."""
    import jsonschema
    import kubernetes_validate

    jsonschema.validate(manifest, json.loads(SCHEMA_FILE.read_text(encoding="utf-8")))
    for rtype, spec in manifest["spec"]["tfReplicaSpecs"].items():
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": f"{manifest['metadata']['name']}-{rtype.lower()}-0",
                            **spec["template"].get("metadata", {})},
               "spec": spec["template"]["spec"]}
        kubernetes_validate.validate(pod, kubernetes_version, strict=True)


# ---------------------------------------------------------------------------------------
# Running a job


@dataclass
class KubeApi:
    custom: Any      # kubernetes.client.CustomObjectsApi
    core: Any        # kubernetes.client.CoreV1Api


def kube_api(host: str | None = None) -> KubeApi:
    """Clients from the pod's in-cluster config (its ServiceAccount), or for `host` (tests)."""
    from kubernetes import client, config

    if host is None:
        try:
            config.load_incluster_config()
        except config.ConfigException as e:
            raise UserError(f"multi-node training (trainer.workers > 1) needs to run inside the cluster: "
                            f"no in-cluster Kubernetes config ({e})") from None
        api_client = client.ApiClient()
    else:
        cfg = client.Configuration()
        cfg.host = host
        api_client = client.ApiClient(cfg)
    return KubeApi(client.CustomObjectsApi(api_client), client.CoreV1Api(api_client))


def _api_error(e: Exception) -> str:
    body = getattr(e, "body", None)
    try:
        msg = json.loads(body).get("message") if body else None
    except (ValueError, AttributeError):
        msg = None
    return f"HTTP {getattr(e, 'status', '?')} {getattr(e, 'reason', '')}".strip() + (f": {msg}" if msg else "")


def _condition(job: dict) -> tuple[str | None, str, str]:
    """(type, reason, message) of the job's newest true condition (the operator appends them)."""
    conds = [c for c in (job.get("status") or {}).get("conditions") or [] if c.get("status") == "True"]
    if not conds:
        return None, "", ""
    c = conds[-1]
    return c.get("type"), c.get("reason") or "", c.get("message") or ""


def _pending_reason(core, namespace: str, name: str) -> str:
    """Why the job's pods are not running: the scheduler's message (e.g. `0/3 nodes are available:
    3 Insufficient nvidia.com/gpu`) or a container's waiting reason (ImagePullBackOff)."""
    try:
        pods = core.list_namespaced_pod(namespace, label_selector=f"{LABEL_JOB}={name}").items
    except Exception as e:  # noqa: BLE001 - the reason is best effort; the timeout error stands
        return f"could not list its pods ({_api_error(e)})"
    if not pods:
        return "no pods were created (is the Training Operator running? kubectl get pods -n kubeflow)"
    for pod in pods:
        st = pod.status
        for c in (st.conditions or []) if st else []:
            if c.type == "PodScheduled" and c.status == "False":
                return f"pod {pod.metadata.name} Pending: {c.message or c.reason}"
        for cs in (st.container_statuses or []) + (st.init_container_statuses or []) if st else []:
            w = cs.state.waiting if cs.state else None
            if w and w.reason not in (None, "ContainerCreating", "PodInitializing"):
                return f"pod {pod.metadata.name}: {w.reason}" + (f": {w.message}" if w.message else "")
    phases = sorted({p.status.phase for p in pods if p.status})
    return f"pods are {', '.join(phases)}"


class _LogFollower:
    """Streams the chief container's log lines to the sink from a thread (one stream per container
    start: a restarted container gets a new stream)."""

    def __init__(self, core, namespace: str, sink: Callable[[str], None]):
        self.core, self.namespace, self.sink = core, namespace, sink
        self.seen: set[tuple[str, int]] = set()
        self.threads: list[threading.Thread] = []

    def poll(self, name: str) -> None:
        sel = f"{LABEL_JOB}={name},{LABEL_TYPE}=chief,{LABEL_INDEX}=0"
        try:
            pods = self.core.list_namespaced_pod(self.namespace, label_selector=sel).items
        except Exception:  # noqa: BLE001 - logs are best effort; the job status decides
            return
        for pod in pods:
            st = pod.status
            if not st or st.phase not in ("Running", "Succeeded", "Failed"):
                continue
            restarts = max([cs.restart_count or 0 for cs in st.container_statuses or []] or [0])
            key = (pod.metadata.name, restarts)
            if key in self.seen:
                continue
            self.seen.add(key)
            t = threading.Thread(target=self._follow, args=(pod.metadata.name,), daemon=True)
            t.start()
            self.threads.append(t)

    def _follow(self, pod: str) -> None:
        try:
            resp = self.core.read_namespaced_pod_log(pod, self.namespace, container=CONTAINER, follow=True,
                                                     _preload_content=False)
            buf = b""
            for chunk in resp.stream(4096):
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    self.sink(f"[{pod}] {line.decode('utf-8', 'replace')}")
            if buf:
                self.sink(f"[{pod}] {buf.decode('utf-8', 'replace')}")
        except Exception as e:  # noqa: BLE001
            self.sink(f"[{pod}] (log stream ended: {e})")

    def join(self, timeout_s: float) -> None:
        for t in self.threads:
            t.join(timeout_s)


def _delete(api: KubeApi, namespace: str, name: str) -> str:
    try:
        api.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name,
                                                   body={"propagationPolicy": "Foreground"})
        return "deleted"
    except Exception as e:  # noqa: BLE001
        return f"delete failed: {_api_error(e)}"


def run_tfjob(manifest: dict, api: KubeApi, timeout_s: float, start_timeout_s: float,
              log_sink: Callable[[str], None] = print, poll_s: float = 5.0) -> dict:
    """Create the TFJob (or attach to the one of that name left by an earlier try), stream the
    chief's log and wait: returns the final job object on Succeeded; raises UserError naming the
    job on Failed, when not every replica is Running within start_timeout_s (the pods' scheduling
    reason; the job is deleted) and after timeout_s (the job is deleted)."""
    from kubernetes.client.exceptions import ApiException

    name, ns = manifest["metadata"]["name"], manifest["metadata"].get("namespace", "default")
    try:
        api.custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, manifest)
        log_sink(f"TFJob {ns}/{name} created")
    except ApiException as e:
        if e.status != 409:
            raise UserError(f"TFJob {name} failed at creation in namespace {ns}: {_api_error(e)}") from None
        log_sink(f"TFJob {ns}/{name} exists (an earlier try): waiting for it")
    follower = _LogFollower(api.core, ns, log_sink)
    t0 = time.monotonic()
    started, last = False, None
    while True:
        try:
            job = api.custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
        except ApiException as e:
            if e.status == 404:
                raise UserError(f"TFJob {name} was deleted while the step waited for it") from None
            raise UserError(f"TFJob {name}: reading its status failed: {_api_error(e)}") from None
        ctype, reason, message = _condition(job)
        if ctype != last:
            log_sink(f"TFJob {name}: {ctype or 'no condition yet'}" + (f" ({reason})" if reason else ""))
            last = ctype
        started = started or ctype in ("Running", "Restarting", "Succeeded", "Failed")
        if started:
            follower.poll(name)
        if ctype == "Succeeded":
            follower.join(30.0)
            return job
        if ctype == "Failed":
            follower.join(5.0)
            raise UserError(f"TFJob {name} failed: {reason or 'Failed'}: {message or 'no message'}")
        elapsed = time.monotonic() - t0
        if not started and elapsed > start_timeout_s:
            why = _pending_reason(api.core, ns, name)
            gone = _delete(api, ns, name)
            raise UserError(f"TFJob {name} did not start within {start_timeout_s:g}s: {why} (job {gone})")
        if elapsed > timeout_s:
            gone = _delete(api, ns, name)
            raise UserError(f"TFJob {name} timed out after {timeout_s:g}s (last condition: {ctype}; job {gone})")
        time.sleep(poll_s)


# ---------------------------------------------------------------------------------------
# The training components' launch branch


def load_context(env: dict[str, str] | None = None) -> TFJobContext:
    raw = (os.environ if env is None else env).get(CONTEXT_ENV)
    if not raw:
        raise UserError(f"trainer.workers > 1 needs a Kubeflow pipeline compiled with the TFJob launch context "
                        f"(${CONTEXT_ENV} is not set in this step); the local runner trains in one process: "
                        "set trainer.workers=1, or run `seekline train` in each worker yourself")
    ctx = TFJobContext.model_validate_json(raw)
    if ctx.namespace is None and os.path.exists(_SA_NAMESPACE):
        ctx = ctx.model_copy(update={"namespace": Path(_SA_NAMESPACE).read_text(encoding="utf-8").strip()})
    return ctx


def write_phase_config(phase: str, section: BaseModel, output: str) -> str:
    """OUTPUT-tfjob-config.yaml next to the output (shared storage): a config whose only
    non-default section is this phase's, which is the one `seekline train PHASE` reads."""
    import tensorflow as tf
    import yaml

    config_uri = output.rstrip("/") + "-tfjob-config.yaml"
    tf.io.gfile.makedirs(os.path.dirname(config_uri))   # a PVC path's parent may not exist yet
    with tf.io.gfile.GFile(config_uri, "w") as f:
        f.write(yaml.safe_dump({phase: section.model_dump(mode="json")}, sort_keys=False))
    return config_uri


def launch_phase(phase: str, section: BaseModel, output: str, *, data: str | None = None,
                 tokenizer: str | None = None, init: str | None = None, api: KubeApi | None = None,
                 context: TFJobContext | None = None, log_sink: Callable[[str], None] = print,
                 poll_s: float = 5.0) -> dict:
    """What a training component runs when section.trainer.workers > 1: the phase config to shared
    storage next to the output, the TFJob, its report. Returns OUTPUT/report.json (what the
    single-pod path's run_* returns), which the chief wrote."""
    import tensorflow as tf

    ctx = context or load_context()
    config_uri = write_phase_config(phase, section, output)
    manifest = tfjob_manifest(phase, section, ctx.resources, image=ctx.image, config_uri=config_uri,
                              output=output, data=data, tokenizer=tokenizer, init=init,
                              namespace=ctx.namespace or "default", backoff_limit=ctx.backoff_limit,
                              active_deadline_s=int(ctx.timeout_s))
    run_tfjob(manifest, api or kube_api(), ctx.timeout_s, ctx.start_timeout_s, log_sink, poll_s)
    report = os.path.join(output, "report.json")
    if not tf.io.gfile.exists(report):
        raise UserError(f"TFJob {manifest['metadata']['name']} succeeded but its chief failed to write {report}")
    with tf.io.gfile.GFile(report) as f:
        return json.loads(f.read())


def shell_command(manifest: dict) -> str:
    """The chief's command line (for logs and docs)."""
    return shlex.join(manifest["spec"]["tfReplicaSpecs"]["Chief"]["template"]["spec"]["containers"][0]["command"])
