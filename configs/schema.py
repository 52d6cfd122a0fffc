"""The typed run configuration: one read-only tree per run.

Parse order (as tensorflow/models official/ does): field defaults → YAML preset (configs/*.yaml
or a path) → ``--set key.path=value`` overrides → validate → freeze. The resolved tree is saved
next to every run's outputs (``save_config``) so any artifact can be traced to what made it.

Errors name the key and where its value came from (the YAML file or the ``--set`` override).
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from components.common.errors import ConfigError
from components.common.fileio import atomic_write_text

DEFAULT_PRESET = "tiny"

# Component ids in the DAG; resources, node selectors and tolerations are keyed by these.
COMPONENT_IDS = ("ingest", "statistics", "schema", "validate")

_CPU_RE = re.compile(r"^\d+(\.\d+)?m?$")
_MEM_RE = re.compile(r"^\d+(\.\d+)?(Ki|Mi|Gi|Ti|K|M|G|T)?$")
_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def validate_cron(expr: str) -> None:
    """KFP recurring runs take 6-field cron (seconds first); 5-field crontab is a common slip."""
    fields = expr.split()
    if len(fields) != 6:
        raise ValueError(
            f"cron {expr!r} has {len(fields)} fields; KFP needs 6, seconds first "
            "(e.g. '0 0 3 * * *' for 03:00 daily)"
        )
    allowed = re.compile(r"^[0-9A-Za-z*/,\-?LW#]+$")
    for f in fields:
        if not allowed.match(f):
            raise ValueError(f"cron {expr!r}: field {f!r} is not valid cron syntax")


class _Strict(BaseModel):
    # extra='forbid': an unknown key is an error, never silently ignored.
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class BeamConfig(_Strict):
    """Apache Beam options for the Beam-based components (ingest, TFDV statistics)."""

    runner: str = "DirectRunner"
    # 0 = one worker per CPU core (Beam's own default for the DirectRunner).
    direct_num_workers: int = Field(0, ge=0)
    direct_running_mode: Literal["in_memory", "multi_threading", "multi_processing"] = (
        "multi_processing"
    )
    # Passed through verbatim, e.g. ["--project=x", "--region=y"] for Dataflow.
    extra_args: list[str] = []

    def pipeline_args(self) -> list[str]:
        args = [f"--runner={self.runner}"]
        if self.runner == "DirectRunner":
            args += [
                f"--direct_num_workers={self.direct_num_workers}",
                f"--direct_running_mode={self.direct_running_mode}",
            ]
        return args + list(self.extra_args)


class PipelineConfig(_Strict):
    name: str = "seekline"
    # Everything a local run writes lives under this folder (relative paths: to the cwd).
    output_dir: str = "outputs/tiny"
    enable_cache: bool = True
    beam: BeamConfig = BeamConfig()

    @field_validator("name")
    @classmethod
    def _dns_name(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError("must be lowercase letters, digits and '-' (a Kubernetes name)")
        return v


class IngestConfig(_Strict):
    """Where the raw corpus comes from and how it is sliced into train/eval."""

    # Directories or globs; "python-stdlib" means the running interpreter's standard library
    # sources, resolved where the component runs (so the same config works in a container).
    corpus: list[str] = ["python-stdlib"]
    include: list[str] = ["*.py"]
    exclude: list[str] = ["site-packages/*", "*/site-packages/*"]
    # Take at most this many files (a deterministic, hash-ordered sample); None = all.
    max_files: int | None = Field(None, ge=1)
    # Larger files are skipped and counted (generated/minified/data files, not code).
    max_file_bytes: int = Field(1_000_000, ge=1)
    # Share of documents routed to the eval split, by a hash of their content.
    eval_percent: int = Field(5, ge=1, le=50)
    num_shards: int = Field(1, ge=1, le=1024)
    # What to do with a file that is not valid UTF-8: skip it (counted) or fail the run.
    on_invalid_utf8: Literal["skip", "fail"] = "skip"

    @field_validator("corpus")
    @classmethod
    def _nonempty(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("needs at least one directory, glob or 'python-stdlib'")
        return v


class ValidateConfig(_Strict):
    # Anomalies against the schema fail the run (with a readable report) when true.
    fail_on_anomalies: bool = True


class Toleration(_Strict):
    key: str
    operator: Literal["Equal", "Exists"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None


class ResourceSpec(_Strict):
    """Kubernetes resources of one component's pod (ignored by the local runner)."""

    cpu: str | None = None  # Kubernetes quantity: "4", "500m"
    memory: str | None = None  # Kubernetes quantity: "16Gi"
    gpu: int = Field(0, ge=0)
    gpu_type: str = "nvidia.com/gpu"  # the Kubernetes extended-resource name on OSS KFP
    node_selector: dict[str, str] = {}
    tolerations: list[Toleration] = []

    @field_validator("cpu")
    @classmethod
    def _cpu(cls, v: str | None) -> str | None:
        if v is not None and not _CPU_RE.match(v):
            raise ValueError(f"{v!r} is not a CPU quantity like '2' or '500m'")
        return v

    @field_validator("memory")
    @classmethod
    def _mem(cls, v: str | None) -> str | None:
        if v is not None and not _MEM_RE.match(v):
            raise ValueError(f"{v!r} is not a memory quantity like '16Gi' or '512Mi'")
        return v


class ResourcesConfig(_Strict):
    default: ResourceSpec = ResourceSpec()
    # Per component id; fields set here replace the default's.
    components: dict[str, ResourceSpec] = {}

    @field_validator("components")
    @classmethod
    def _known(cls, v: dict[str, ResourceSpec]) -> dict[str, ResourceSpec]:
        for k in v:
            if k not in COMPONENT_IDS:
                raise ValueError(f"unknown component {k!r}; known: {', '.join(COMPONENT_IDS)}")
        return v

    def for_component(self, component_id: str) -> ResourceSpec:
        base = self.default.model_dump()
        if component_id in self.components:
            base.update(self.components[component_id].model_dump(exclude_unset=True))
        return ResourceSpec(**base)


class KubeflowConfig(_Strict):
    # The image the compiled spec runs every component in (infra/docker/Dockerfile).
    default_image: str = "ghcr.io/seekline/seekline:latest"
    # Where artifacts go on the cluster (an object store URI the pods can write).
    pipeline_root: str = "minio://mlpipeline/seekline"
    experiment: str = "seekline"
    output_file: str = "build/pipeline.yaml"
    # Six fields, seconds first (KFP's cron format): 03:00:00 every day.
    cron: str = "0 0 3 * * *"
    max_concurrency: int = Field(1, ge=1)

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str) -> str:
        validate_cron(v)
        return v


class SeeklineConfig(_Strict):
    pipeline: PipelineConfig = PipelineConfig()
    ingest: IngestConfig = IngestConfig()
    validate_: ValidateConfig = Field(ValidateConfig(), alias="validate")
    resources: ResourcesConfig = ResourcesConfig()
    kubeflow: KubeflowConfig = KubeflowConfig()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


# ---------------------------------------------------------------------------------------
# Loading


def preset_names() -> list[str]:
    return sorted(
        p.name[: -len(".yaml")]
        for p in resources.files("configs").iterdir()
        if p.name.endswith(".yaml")
    )


def _preset_source(preset: str) -> tuple[str, str]:
    """(display name, YAML text) of a preset name or a path to a YAML file."""
    if preset.endswith((".yaml", ".yml")) or "/" in preset:
        path = Path(preset)
        if not path.is_file():
            raise ConfigError(f"config file not found: {preset}")
        return str(path), path.read_text(encoding="utf-8")
    res = resources.files("configs").joinpath(f"{preset}.yaml")
    if not res.is_file():
        raise ConfigError(
            f"unknown preset {preset!r}; available: {', '.join(preset_names())} "
            "(or pass a path to a .yaml file)"
        )
    return f"configs/{preset}.yaml", res.read_text(encoding="utf-8")


def parse_override(item: str) -> tuple[list[str], Any]:
    """'a.b.c=value' → (['a','b','c'], YAML-parsed value)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.path=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {item!r}: value is not valid YAML ({e})") from None
    return key.split("."), value


def _set_path(tree: dict[str, Any], path: list[str], value: Any, item: str) -> None:
    node = tree
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {item!r}: {part!r} is not a section")
        node = child
    node[path[-1]] = value


def load_config(preset: str = DEFAULT_PRESET, overrides: list[str] | tuple[str, ...] = ()) -> SeeklineConfig:
    """Resolve a preset name (configs/NAME.yaml) or YAML path plus overrides into a config."""
    source, text = _preset_source(preset)
    try:
        tree = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {e}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{source}: top level must be a mapping of sections")
    override_paths: dict[tuple[str, ...], str] = {}
    for item in overrides:
        path, value = parse_override(item)
        _set_path(tree, path, value, item)
        override_paths[tuple(path)] = item
    try:
        return SeeklineConfig.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e, source, override_paths)) from None


def _format_validation_error(
    e: ValidationError, source: str, override_paths: dict[tuple[str, ...], str]
) -> str:
    msgs = []
    for err in e.errors():
        loc = tuple(str(p) for p in err["loc"])
        key = ".".join(loc) or "<root>"
        origin = source
        for opath, item in override_paths.items():
            if loc[: len(opath)] == opath or opath[: len(loc)] == loc:
                origin = f"--set {item}"
                break
        if err["type"] == "extra_forbidden":
            msg = f"unknown key {key!r}"
        else:
            msg = f"{key}: {err['msg']}"
            if "input" in err and not isinstance(err["input"], dict):
                msg += f" (got {err['input']!r})"
        msgs.append(f"{origin}: {msg}")
    return "; ".join(msgs)


def config_to_yaml(config: SeeklineConfig) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)


def save_config(config: SeeklineConfig, path: str | Path) -> None:
    atomic_write_text(path, config_to_yaml(config))
