"""Kubeflow Pipelines: compile the DAG to a PipelineSpec YAML, upload it, run it, schedule it.

``compile_pipeline`` uses TFX's KubeflowV2DagRunner (the same ``create_pipeline`` as the
local runner) and writes the bare PipelineSpec that OSS ``kfp.Client`` uploads expect, plus a
second YAML document with the Kubernetes platform spec (node selectors, tolerations) in the
shape kfp-kubernetes emits — TFX itself has no path for those.
"""

from __future__ import annotations

import io
import json
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from components.common.errors import DeployError
from components.common.fileio import atomic_write_text
from configs.schema import COMPONENT_IDS, SeeklineConfig, validate_cron

# What the container runs: TFX's KFP v2 entrypoint, executing one component's executor.
CONTAINER_COMMAND = ["python", "-m", "tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor"]


# Tasks that read from outside the pipeline's artifacts (the corpus), so a cache key made of
# their parameters cannot tell a changed input from an unchanged one.
UNCACHED_ON_KUBEFLOW = ("ingest",)


def executor_label(component_id: str) -> str:
    """The deploymentSpec executor key TFX's compiler gives a component."""
    return f"{component_id}_executor"


def build_pipeline_spec(config: SeeklineConfig) -> dict[str, Any]:
    """The PipelineSpec (as a dict) for ``config``, with per-component resources."""
    from tfx import v1 as tfx

    from pipelines.pipeline import create_pipeline

    pipeline = create_pipeline(
        config,
        pipeline_root=config.kubeflow.pipeline_root,
        with_platform_resources=True,
    )
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(
            default_image=config.kubeflow.default_image,
            default_commands=CONTAINER_COMMAND,
            # Schema 2.1: typed parameters read from ExecutorInput.parameterValues, which is
            # what the KFP 2.x launcher fills (2.0's `parameters` field is KFP 1.x legacy).
            use_pipeline_spec_2_1=True,
        ),
    )
    job = runner.run(pipeline, write_out=False)
    spec = job["pipelineSpec"]
    spec["defaultPipelineRoot"] = config.kubeflow.pipeline_root
    # Locally the corpus fingerprint (a parameter) keys ingest's cache; a compiled spec is reused
    # by every scheduled run, so its fingerprint is fixed and KFP's cache would serve ingest
    # forever, even after the corpus changed. Ingest always runs on the cluster; downstream
    # steps re-run only when its output is new.
    for task_id in UNCACHED_ON_KUBEFLOW:
        spec["root"]["dag"]["tasks"][task_id]["cachingOptions"] = {"enableCache": False}
    # per-component images (resources.components.<id>.image), e.g. CUDA for the GPU phases
    executors = spec["deploymentSpec"]["executors"]
    for cid in COMPONENT_IDS:
        image = config.resources.for_component(cid).image
        if image and executor_label(cid) in executors:
            executors[executor_label(cid)]["container"]["image"] = image
    # multi-node phases (trainer.workers > 1): the step launches a TFJob and needs the image and
    # resources its worker pods get (components/common/tfjob.py)
    from components.common.tfjob import launch_envs

    for cid, env in launch_envs(config).items():
        if executor_label(cid) in executors:
            executors[executor_label(cid)]["container"].setdefault("env", []).append(env)
    return spec


def kubernetes_platform_spec(config: SeeklineConfig, spec: dict[str, Any]) -> dict[str, Any] | None:
    """kfp-kubernetes' platform document per executor: nodeSelector, tolerations, /dev/shm as a
    memory emptyDir, PVC mounts, Secret keys as env (field names of kfp-kubernetes'
    KubernetesExecutorConfig)."""
    executors: dict[str, Any] = {}
    known = set(spec["deploymentSpec"]["executors"])
    for cid in COMPONENT_IDS:
        res = config.resources.for_component(cid)
        label = executor_label(cid)
        if label not in known:
            continue
        entry: dict[str, Any] = {}
        if res.node_selector:
            entry["nodeSelector"] = {"labels": dict(res.node_selector)}
        if res.tolerations:
            entry["tolerations"] = [
                {k: v for k, v in t.model_dump().items() if v is not None} for t in res.tolerations
            ]
        if res.shm_size:
            # a memory-backed emptyDir over /dev/shm (kfp-kubernetes EmptyDirMount)
            entry["emptyDirMounts"] = [{"volumeName": "dshm", "mountPath": "/dev/shm", "medium": "Memory",
                                        "sizeLimit": res.shm_size}]
        if res.pvc_mounts:
            # both spellings: `constant` for KFP backends before 2.4, the parameter form after
            entry["pvcMount"] = [{"constant": m.claim, "pvcNameParameter": {"runtimeValue": {"constant": m.claim}},
                                  "mountPath": m.mount_path} for m in res.pvc_mounts]
        if res.secret_env:
            by_secret: dict[tuple[str, bool], list[dict[str, str]]] = {}
            for e in res.secret_env:
                by_secret.setdefault((e.secret, e.optional), []).append({"secretKey": e.key, "envVar": e.env})
            entry["secretAsEnv"] = [
                {"secretName": name, "secretNameParameter": {"runtimeValue": {"constant": name}}, "keyToEnv": keys,
                 **({"optional": True} if optional else {})} for (name, optional), keys in by_secret.items()]
        if entry:
            executors[label] = entry
    if not executors:
        return None
    return {"platforms": {"kubernetes": {"deploymentSpec": {"executors": executors}}}}


# URI schemes tf.io.gfile reads and writes out of the box in the image (TF 2.16 without
# tensorflow-io): components that write outside KFP-managed artifacts must use one of these.
GFILE_SCHEMES = ("gs://", "hdfs://", "ram://")


# Substrings that mark a CUDA-capable image name (tensorflow/tensorflow:2.16.2-gpu, nvidia/cuda:…,
# a registry's …-cuda12 build). The default image (infra/docker/Dockerfile) is CPU-only.
CUDA_IMAGE_MARKERS = ("gpu", "cuda", "nvidia")


def gpu_image_warnings(config: SeeklineConfig) -> list[str]:
    """Components that ask for GPUs but run an image whose name marks no CUDA build: their pods
    get GPUs TensorFlow cannot see and train on the CPU."""
    out = []
    for cid in config.enabled_components():
        res = config.resources.for_component(cid)
        image = res.image or config.kubeflow.default_image
        if res.gpu > 0 and not any(m in image.lower() for m in CUDA_IMAGE_MARKERS):
            out.append(f"{cid} asks for {res.gpu} GPU(s) but runs {image}, which looks CPU-only "
                       f"(no {'/'.join(CUDA_IMAGE_MARKERS)} in its name); set resources.components.{cid}.image "
                       "to a CUDA build (docs/deploy.md)")
    return out


def portability_warnings(config: SeeklineConfig) -> list[str]:
    """Config choices that compile fine but would fail (or silently run on the CPU) inside the
    cluster's containers."""
    warnings = gpu_image_warnings(config)
    frozen = config.validate_.resolved_frozen_dir(config.kubeflow.pipeline_root)
    if "://" in frozen and not frozen.startswith(GFILE_SCHEMES):
        warnings.append(
            f"validate.frozen_dir resolves to {frozen}, which tf.io.gfile cannot write in the "
            "container; set validate.frozen_dir to a gs:// URI or a path on a mounted volume"
        )
    if config.export.enabled and config.evaluate.enabled:
        from pipelines.pipeline import export_push_dir

        push = export_push_dir(config, config.kubeflow.pipeline_root)
        if "://" in push and not push.startswith(GFILE_SCHEMES):
            warnings.append(
                f"export.push_dir resolves to {push}, which tf.io.gfile cannot write in the container; "
                "set export.push_dir to a gs:// URI or a path on a mounted volume (TF Serving's model base path)"
            )
    return warnings


def compile_pipeline(config: SeeklineConfig, output_file: str | Path | None = None) -> Path:
    """Write the PipelineSpec YAML (+ platform spec document) atomically; return its path."""
    out = Path(output_file or config.kubeflow.output_file)
    spec = build_pipeline_spec(config)
    docs = [spec]
    platform = kubernetes_platform_spec(config, spec)
    if platform:
        docs.append(platform)
    buf = io.StringIO()
    buf.write(f"# seekline pipeline {config.pipeline.name}: compiled by `seekline compile`\n")
    yaml.safe_dump_all(docs, buf, sort_keys=True)
    atomic_write_text(out, buf.getvalue())
    return out


def load_pipeline_spec(path: str | Path):
    """Parse the first document of a compiled YAML into kfp's PipelineSpec proto."""
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    with open(path, encoding="utf-8") as f:
        docs = list(yaml.safe_load_all(f))
    proto = pipeline_spec_pb2.PipelineSpec()
    json_format.ParseDict(docs[0], proto)
    return proto, docs[1:]


# ---------------------------------------------------------------------------------------
# Talking to a KFP API server (v2beta1 REST, through kfp.Client)


@dataclass(frozen=True)
class Deployment:
    host: str
    pipeline_id: str
    version_id: str
    experiment_id: str
    run_id: str | None = None
    recurring_run_id: str | None = None

    def run_url(self) -> str | None:
        return f"{self.host.rstrip('/')}/#/runs/details/{self.run_id}" if self.run_id else None


def check_reachable(host: str | None, token: str | None = None, timeout_s: float = 5.0) -> str:
    """Fail fast and clearly when KFP_HOST is unset or nothing answers there."""
    if not host:
        raise DeployError(
            "KFP_HOST is not set: export KFP_HOST=http://<kfp-api-host>:<port> (or pass --host)"
        )
    if not host.startswith(("http://", "https://")):
        raise DeployError(f"KFP_HOST {host!r} must start with http:// or https://")
    url = host.rstrip("/") + "/apis/v2beta1/healthz"
    try:
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            resp.read()
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):
            return host  # reachable; auth is checked by the real calls with the token
        raise DeployError(f"Kubeflow Pipelines at {host} answered {e.code} on {url}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise DeployError(f"cannot reach Kubeflow Pipelines at {host}: {reason}") from None
    return host


def _client(host: str | None, token: str | None):
    import kfp

    host = check_reachable(host, token)
    return kfp.Client(host=host, existing_token=token or None)


def _api_call(what: str, fn, *args, **kwargs):
    from kfp_server_api.exceptions import ApiException

    try:
        return fn(*args, **kwargs)
    except ApiException as e:
        body = (e.body or "").strip().replace("\n", " ")
        raise DeployError(f"Kubeflow Pipelines refused to {what}: {e.status} {e.reason} {body[:300]}") from None


def upload(client, package: Path, name: str) -> tuple[str, str]:
    """Upload ``package`` as a new version of pipeline ``name`` (created if missing)."""
    version_name = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    pipeline_id = _api_call("look up the pipeline", client.get_pipeline_id, name)
    if pipeline_id is None:
        p = _api_call("upload the pipeline", client.upload_pipeline, str(package), pipeline_name=name)
        pipeline_id = p.pipeline_id
        versions = _api_call(
            "list pipeline versions",
            client.list_pipeline_versions,
            pipeline_id,
            page_size=1,
            sort_by="created_at desc",
        )
        if not versions.pipeline_versions:
            raise DeployError(f"pipeline {name!r} was uploaded but has no version")
        version_id = versions.pipeline_versions[0].pipeline_version_id
    else:
        v = _api_call(
            "upload a pipeline version",
            client.upload_pipeline_version,
            str(package),
            pipeline_version_name=version_name,
            pipeline_id=pipeline_id,
        )
        version_id = v.pipeline_version_id
    return pipeline_id, version_id


def deploy(
    config: SeeklineConfig,
    package: Path,
    host: str | None,
    token: str | None = None,
    run_name: str | None = None,
    start_run: bool = True,
) -> Deployment:
    """Upload the compiled package and (by default) start a run in the config's experiment."""
    client = _client(host, token)
    pipeline_id, version_id = upload(client, package, config.pipeline.name)
    exp = _api_call("create the experiment", client.create_experiment, config.kubeflow.experiment)
    run_id = None
    if start_run:
        run = _api_call(
            "start a run",
            client.run_pipeline,
            experiment_id=exp.experiment_id,
            job_name=run_name or f"{config.pipeline.name}-{time.strftime('%Y%m%d-%H%M%S')}",
            pipeline_id=pipeline_id,
            version_id=version_id,
            pipeline_root=config.kubeflow.pipeline_root,
            enable_caching=config.pipeline.enable_cache,
        )
        run_id = run.run_id
    return Deployment(host or "", pipeline_id, version_id, exp.experiment_id, run_id=run_id)


def schedule(
    config: SeeklineConfig,
    package: Path,
    host: str | None,
    cron: str,
    token: str | None = None,
    name: str | None = None,
) -> Deployment:
    """Create a recurring run (6-field cron, seconds first) of a freshly uploaded version."""
    try:
        validate_cron(cron)
    except ValueError as e:
        raise DeployError(str(e)) from None
    client = _client(host, token)
    pipeline_id, version_id = upload(client, package, config.pipeline.name)
    exp = _api_call("create the experiment", client.create_experiment, config.kubeflow.experiment)
    job_name = name or f"{config.pipeline.name}-scheduled"
    # Re-scheduling (e.g. every `helm upgrade`) replaces the schedule instead of adding another
    # that would keep launching the old pipeline version.
    for old in _recurring_runs_named(client, exp.experiment_id, job_name):
        _api_call("delete the previous recurring run", client.delete_recurring_run, old)
    rr = _api_call(
        "create the recurring run",
        client.create_recurring_run,
        experiment_id=exp.experiment_id,
        job_name=job_name,
        cron_expression=cron,
        max_concurrency=config.kubeflow.max_concurrency,
        pipeline_id=pipeline_id,
        version_id=version_id,
        pipeline_root=config.kubeflow.pipeline_root,
        enable_caching=config.pipeline.enable_cache,
        no_catchup=True,
    )
    return Deployment(
        host or "", pipeline_id, version_id, exp.experiment_id, recurring_run_id=rr.recurring_run_id
    )


def _recurring_runs_named(client, experiment_id: str, name: str) -> list[str]:
    flt = json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": name}]})
    ids, token = [], ""
    while True:
        page = _api_call(
            "list recurring runs",
            client.list_recurring_runs,
            page_token=token,
            page_size=100,
            experiment_id=experiment_id,
            filter=flt,
        )
        # Filter again client-side: a server that ignores the filter must not lose other schedules.
        ids += [r.recurring_run_id for r in (page.recurring_runs or []) if r.display_name == name]
        token = page.next_page_token or ""
        if not token:
            return ids


def summary(d: Deployment) -> str:
    return json.dumps({k: v for k, v in d.__dict__.items() if v is not None}, indent=2)
