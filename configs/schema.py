"""The typed run configuration: one read-only tree per run.

Parse order (as tensorflow/models official/ does): field defaults → YAML preset (configs/*.yaml
or a path) → ``--set key.path=value`` overrides → validate → freeze. The resolved tree is saved
next to every run's outputs (``save_config``) so any artifact can be traced to what made it.

Errors name the key and where its value came from (the YAML file or the ``--set`` override).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from common.errors import ConfigError
from common.fileio import atomic_write_text
from configs.overrides import (
    annotation_at,
    booleans_for_numbers,
    describe_yaml_error,
    typed_override,
    yaml_load,
)

# Training sections live in their own module; re-exported here with the rest of the tree.
from configs.training import (  # noqa: F401
    AgentConfig,
    BlessingConfig,
    ContextExtensionConfig,
    DistillConfig,
    EvaluateConfig,
    ExportConfig,
    GRPOConfig,
    PretrainConfig,
    RewardConfig,
    SFTConfig,
    TrainerConfig,
)

DEFAULT_PRESET = "tiny"

# Component ids in the DAG; resources, node selectors and tolerations are keyed by these.
COMPONENT_IDS = ("ingest", "tokenizer", "pack", "statistics", "schema", "validate", "pretrain",
                 "context_extension", "sft", "grpo", "distill", "agent_trajectories", "agent_distill",
                 "evaluate", "export")

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
    """Apache Beam options for the Beam-based components (ingest, pack, TFDV statistics).

    ``pipeline_args()`` is the run's beam_pipeline_args: TFX builds each Beam component's
    pipeline from it, locally and in the compiled Kubeflow spec alike (docs/data.md).
    """

    # DirectRunner runs Beam inside the component's own process/pod; the others hand the
    # work to a Dataflow job, a Flink or Spark cluster, or any Beam job service (Portable).
    runner: Literal["DirectRunner", "DataflowRunner", "FlinkRunner", "SparkRunner", "PortableRunner"] = (
        "DirectRunner"
    )
    # 0 = one worker per CPU core (Beam's own default for the DirectRunner).
    direct_num_workers: int = Field(0, ge=0)
    direct_running_mode: Literal["in_memory", "multi_threading", "multi_processing"] = (
        "multi_processing"
    )
    # Passed through verbatim, e.g. ["--project=x", "--region=y"] for Dataflow.
    extra_args: list[str] = []

    @field_validator("extra_args")
    @classmethod
    def _flags_only(cls, v: list[str]) -> list[str]:
        for a in v:
            if not a.startswith("--"):
                raise ValueError(f"{a!r} is not a Beam flag; write each as '--name=value'")
            if a.split("=", 1)[0] == "--runner":
                raise ValueError("set the runner with pipeline.beam.runner, not --runner in extra_args")
        return v

    @model_validator(mode="after")
    def _runner_needs(self) -> BeamConfig:
        # Dataflow refuses a job without these; catching it here fails before submission
        # instead of minutes into the ingest step.
        if self.runner == "DataflowRunner":
            given = {a.split("=", 1)[0] for a in self.extra_args}
            missing = [f for f in ("--project", "--region") if f not in given]
            if not given & {"--temp_location", "--gcp_temp_location"}:
                missing.append("--temp_location")
            if missing:
                raise ValueError(
                    "runner DataflowRunner needs " + ", ".join(f"{m}=..." for m in missing)
                    + " in pipeline.beam.extra_args"
                )
        return self

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


class QualityFilters(_Strict):
    """Document-level quality filters; each rejected document is counted under its filter."""

    # Length bounds in characters of the normalised text.
    min_chars: int = Field(32, ge=0)
    max_chars: int = Field(1_000_000, ge=1)
    # Any longer line: a data blob, a minified bundle, an embedded base64 string.
    max_line_length: int = Field(1000, ge=1)
    # Share of letters/digits among non-whitespace characters; low = symbol soup / binary-ish.
    min_alnum_fraction: float = Field(0.25, ge=0.0, le=1.0)
    # Mean line length above this = minified / machine-written.
    max_mean_line_length: float = Field(120.0, gt=0)

    @model_validator(mode="after")
    def _bounds(self) -> QualityFilters:
        if self.min_chars > self.max_chars:
            raise ValueError(f"min_chars ({self.min_chars}) > max_chars ({self.max_chars}) would reject every document")
        return self
    # Case-insensitive markers of generated files, searched in the first `generated_scan_lines`.
    generated_markers: list[str] = [
        "auto-generated", "autogenerated", "do not edit", "generated by", "@generated"
    ]
    generated_scan_lines: int = Field(5, ge=0)


class DedupConfig(_Strict):
    """Exact (content hash) and near-duplicate (MinHash + LSH) removal; docs/data.md explains
    how bands/rows set the candidate S-curve, roughly (1/bands)^(1/rows)."""

    exact: bool = True
    near: bool = True
    # Estimated Jaccard similarity of word shingles at/above which two documents are near dups.
    threshold: float = Field(0.8, gt=0.0, le=1.0)
    num_perm: int = Field(128, ge=8, le=1024)
    bands: int = Field(16, ge=1)
    shingle_words: int = Field(5, ge=1, le=32)
    seed: int = 0
    # Buckets larger than this compare each member with the first `max_bucket` only (a guard
    # against one template matched by thousands of files turning into a quadratic blow-up).
    max_bucket: int = Field(200, ge=2)

    @model_validator(mode="after")
    def _bands_divide(self) -> DedupConfig:
        if self.num_perm % self.bands:
            raise ValueError(f"dedup.num_perm ({self.num_perm}) must be a multiple of dedup.bands ({self.bands})")
        return self


class IngestConfig(_Strict):
    """Where the raw corpus comes from, how it is cleaned, deduplicated and split train/eval."""

    # Directories, globs or files (any URI tf.io.gfile reads); "python-stdlib" means the running
    # interpreter's standard library sources, resolved where the component runs (so the same
    # config works in a container).
    corpus: list[str] = ["python-stdlib"]
    # Name patterns applied to files found by walking a directory (globs select by themselves).
    include: list[str] = ["*.py"]
    exclude: list[str] = ["site-packages/*", "*/site-packages/*"]
    # auto: by extension (.jsonl/.jsonl.gz/.ndjson → jsonl, .parquet → parquet, else one
    # document per text file).
    format: Literal["auto", "text", "jsonl", "parquet"] = "auto"
    # JSONL key / Parquet column holding the document text.
    text_field: str = "text"
    # Malformed JSONL lines and records without a string text field: skip and count (false) or
    # fail the run naming file:line (true).
    strict: bool = False
    # Take at most this many files (a deterministic, hash-ordered sample); None = all.
    max_files: int | None = Field(None, ge=1)
    # Larger text files are skipped unread and counted (data dumps, not documents); JSONL and
    # Parquet files are containers and are not bounded by it.
    max_file_bytes: int = Field(1_000_000, ge=1)
    # Share of documents routed to the eval split, by a hash of their content.
    eval_percent: int = Field(5, ge=1, le=50)
    num_shards: int = Field(1, ge=1, le=4096)
    # Text that is not valid UTF-8: skip the document (counted), replace bad bytes with U+FFFD
    # (counted) or fail the run.
    on_invalid_utf8: Literal["skip", "replace", "fail"] = "skip"
    filters: QualityFilters = QualityFilters()
    dedup: DedupConfig = DedupConfig()

    @field_validator("corpus")
    @classmethod
    def _nonempty(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("needs at least one directory, glob or 'python-stdlib'")
        return v


# Special tokens the later phases rely on (chat SFT, tool use, reasoning); ids follow this order
# after pad/bos/eos, so they are stable across retrainings of the same config.
DEFAULT_SPECIAL_TOKENS = [
    "<|system|>", "<|user|>", "<|assistant|>", "<|tool|>", "<|end_of_turn|>",
    "<|tool_call|>", "<|/tool_call|>", "<|tool_result|>", "<|/tool_result|>",
    "<think>", "</think>",
]


class TokenizerConfig(_Strict):
    """Byte-level BPE trained with HF `tokenizers` on the deduplicated train split."""

    vocab_size: int = Field(32000, ge=300, le=1_000_000)
    min_frequency: int = Field(2, ge=1)
    # Ids 0, 1, 2 in this order.
    pad_token: str = "<|pad|>"
    bos_token: str = "<|bos|>"
    eos_token: str = "<|eos|>"
    special_tokens: list[str] = list(DEFAULT_SPECIAL_TOKENS)
    # Train on at most this many bytes of the train split (a deterministic doc-hash sample);
    # None = all of it.
    max_training_bytes: int | None = Field(512_000_000, ge=1)
    # Documents checked for a lossless encode → decode round trip after training (0 = none).
    roundtrip_check_docs: int = Field(1000, ge=0)

    @model_validator(mode="after")
    def _distinct(self) -> TokenizerConfig:
        toks = [self.pad_token, self.bos_token, self.eos_token, *self.special_tokens]
        dup = sorted({t for t in toks if toks.count(t) > 1})
        if dup:
            raise ValueError(f"special tokens must be distinct; repeated: {dup}")
        if len(toks) >= self.vocab_size - 256:
            raise ValueError("vocab_size leaves no room for the 256 byte tokens and merges")
        return self


class PackConfig(_Strict):
    """Tokenize and pack documents into fixed-length rows (docs/data.md: the row format)."""

    seq_len: int = Field(2048, ge=8, le=1_048_576)
    # Each document is [BOS] tokens EOS; the EOS is always there (it is the separator).
    add_bos: bool = True
    num_shards: int = Field(1, ge=1, le=4096)
    # Documents per tokenizers.encode_batch call.
    batch_size: int = Field(256, ge=1)


class ValidateConfig(_Strict):
    # Anomalies against the schema (and drift/skew beyond the thresholds) fail the run.
    fail_on_anomalies: bool = True
    # A committed schema (schema.pbtxt) to validate against; None = infer on the first run and
    # freeze it under `frozen_dir`.
    schema_path: str | None = None
    # Where the frozen schema and the last validated span's statistics (the drift baseline)
    # live; None = <pipeline root>/frozen. Delete it to re-infer.
    frozen_dir: str | None = None
    # Drift (this span's train vs the previous validated span's) and skew (eval vs train)
    # thresholds per feature: Jensen-Shannon divergence for numeric features, L-infinity
    # distance for categorical (string) ones.
    drift: dict[str, float] = {"num_tokens": 0.5, "segment_lengths": 0.5, "sources": 0.5}
    skew: dict[str, float] = {"sources": 0.5}

    def resolved_frozen_dir(self, pipeline_root: str) -> str:
        return self.frozen_dir or f"{pipeline_root.rstrip('/')}/frozen"

    @field_validator("drift", "skew")
    @classmethod
    def _thresholds(cls, v: dict[str, float]) -> dict[str, float]:
        for k, t in v.items():
            if not 0.0 < t <= 1.0:
                raise ValueError(f"threshold for {k!r} must be in (0, 1], got {t}")
        return v


class Toleration(_Strict):
    key: str
    operator: Literal["Equal", "Exists"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None

    @model_validator(mode="after")
    def _exists_has_no_value(self) -> Toleration:
        if self.operator == "Exists" and self.value is not None:
            raise ValueError("a toleration with operator Exists must not have a value (Kubernetes rejects it)")
        return self


class PvcMount(_Strict):
    """An existing PersistentVolumeClaim mounted into the pod (datasets, a shared pipeline root)."""

    claim: str
    mount_path: str

    @field_validator("claim")
    @classmethod
    def _claim(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError(f"{v!r} is not a Kubernetes object name (lowercase letters, digits, '-')")
        return v

    @field_validator("mount_path")
    @classmethod
    def _abs(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError(f"mount_path {v!r} must be an absolute path")
        return v


class SecretEnv(_Strict):
    """One key of a Kubernetes Secret as an environment variable (teacher API keys, KFP_TOKEN)."""

    secret: str
    key: str
    env: str
    # true: the pod starts without it (the variable is then unset) instead of failing to start
    optional: bool = False

    @field_validator("secret")
    @classmethod
    def _secret(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError(f"{v!r} is not a Kubernetes object name (lowercase letters, digits, '-')")
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: str) -> str:
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", v):
            raise ValueError(f"{v!r} is not an environment variable name")
        return v


class ResourceSpec(_Strict):
    """Kubernetes resources of one component's pod (ignored by the local runner)."""

    cpu: str | None = None  # Kubernetes quantity: "4", "500m"
    memory: str | None = None  # Kubernetes quantity: "16Gi"
    gpu: int = Field(0, ge=0)
    gpu_type: str = "nvidia.com/gpu"  # the Kubernetes extended-resource name on OSS KFP
    node_selector: dict[str, str] = {}
    tolerations: list[Toleration] = []
    # The container image of this component's pod (None = kubeflow.default_image): e.g. a CUDA
    # image for the GPU phases and a slim one for data.
    image: str | None = None
    # /dev/shm as an in-memory emptyDir of this size (data-loader / NCCL shared memory; a pod's
    # default /dev/shm is 64 MiB).
    shm_size: str | None = None
    pvc_mounts: list[PvcMount] = []
    secret_env: list[SecretEnv] = []

    @field_validator("shm_size")
    @classmethod
    def _shm(cls, v: str | None) -> str | None:
        if v is not None and not _MEM_RE.match(v):
            raise ValueError(f"{v!r} is not a memory quantity like '16Gi' or '512Mi'")
        return v

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
    tokenizer: TokenizerConfig = TokenizerConfig()
    pack: PackConfig = PackConfig()
    validate_: ValidateConfig = Field(ValidateConfig(), alias="validate")
    pretrain: PretrainConfig = PretrainConfig()
    context_extension: ContextExtensionConfig = ContextExtensionConfig()
    sft: SFTConfig = SFTConfig()
    grpo: GRPOConfig = GRPOConfig()
    distill: DistillConfig = DistillConfig()
    agent: AgentConfig = AgentConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    export: ExportConfig = ExportConfig()
    resources: ResourcesConfig = ResourcesConfig()
    kubeflow: KubeflowConfig = KubeflowConfig()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)

    def enabled_components(self) -> tuple[str, ...]:
        """The DAG's component ids under this config (optional phases switched off are left out;
        GRPO starts from the SFT model and distill's teacher is the GRPO (else the SFT) model, so
        both go when SFT does; the agent phases continue the distilled student, so they go with
        distill; evaluate scores the newest model — the agent student, else the student, else the
        GRPO or SFT model, else the base model)."""
        skip = set()
        if not self.context_extension.enabled:
            skip.add("context_extension")
        agent = {"agent_trajectories", "agent_distill"}
        if not self.sft.enabled:
            skip |= {"sft", "grpo", "distill"} | agent
        if not self.grpo.enabled:
            skip.add("grpo")
        if not self.distill.enabled:
            skip |= {"distill"} | agent
        if not self.agent.enabled:
            skip |= agent
        if not self.evaluate.enabled:
            skip |= {"evaluate", "export"}      # the export is gated on evaluate's blessing
        if not self.export.enabled:
            skip.add("export")
        return tuple(c for c in COMPONENT_IDS if c not in skip)


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
        try:
            return str(path), path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            line = e.object[: e.start].count(b"\n") + 1
            raise ConfigError(
                f"{path}:{line}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); "
                "save the config as UTF-8"
            ) from None
        except OSError as e:
            raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
    res = resources.files("configs").joinpath(f"{preset}.yaml")
    if not res.is_file():
        raise ConfigError(
            f"unknown preset {preset!r}; available: {', '.join(preset_names())} "
            "(or pass a path to a .yaml file)"
        )
    return f"configs/{preset}.yaml", res.read_text(encoding="utf-8")


def parse_override(item: str, model: type[BaseModel] | None = None) -> tuple[list[str], Any]:
    """'a.b.c=value' → (['a','b','c'], YAML-parsed value).

    With ``model`` (the config class) the value is typed by the field it lands in
    (configs/overrides.py): plain text for string fields, a scalar wrapped for list fields.
    """
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.path=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r}: empty key")
    path = key.split(".")
    ann = annotation_at(model, path) if model is not None else None
    try:
        value = typed_override(ann, raw, lambda: yaml_load(raw) if raw.strip() else "")
    except yaml.YAMLError as e:
        raise ConfigError(f"override {item!r}: value is not valid YAML ({describe_yaml_error(e)})") from None
    return path, value


def _set_path(tree: dict[str, Any], path: list[str], value: Any, item: str) -> None:
    node = tree
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {item!r}: {part!r} is not a section")
        node = child
    node[path[-1]] = value


def load_config(
    preset: str = DEFAULT_PRESET,
    overrides: list[str] | tuple[str, ...] = (),
    settings: Sequence[tuple[str, Any, str]] = (),
) -> SeeklineConfig:
    """Resolve a preset name (configs/NAME.yaml) or YAML path plus overrides into a config.

    ``settings``: already-typed values from dedicated CLI options, as (dotted key, value,
    origin shown in errors, e.g. '--corpus'); applied before the ``--set`` overrides.
    """
    source, text = _preset_source(preset)
    try:
        tree = yaml_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {describe_yaml_error(e)}") from None
    if tree is None:
        # An empty file is a mistake (a wrong path, a truncated copy), not "all defaults".
        raise ConfigError(f"{source}: the config file is empty (use a preset, or write the sections to change)")
    if not isinstance(tree, dict):
        raise ConfigError(f"{source}: top level must be a mapping of sections")
    origins: dict[tuple[str, ...], str] = {}
    for key, value, origin in settings:
        _set_path(tree, key.split("."), value, origin)
        origins[tuple(key.split("."))] = origin
    for item in overrides:
        path, value = parse_override(item, SeeklineConfig)
        _set_path(tree, path, value, item)
        origins[tuple(path)] = f"--set {item}"
    bools = booleans_for_numbers(tree, SeeklineConfig)
    if bools:
        raise ConfigError("; ".join(
            f"{_origin_of(p, source, origins)}: {'.'.join(p)}: expected a number, got a boolean" for p in bools
        ))
    try:
        return SeeklineConfig.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e, source, origins)) from None


def _origin_of(loc: tuple[str, ...], source: str, origins: dict[tuple[str, ...], str]) -> str:
    for opath, origin in origins.items():
        if loc[: len(opath)] == opath or opath[: len(loc)] == loc:
            return origin
    return source


def _format_validation_error(
    e: ValidationError, source: str, override_paths: dict[tuple[str, ...], str]
) -> str:
    msgs = []
    for err in e.errors():
        loc = tuple(str(p) for p in err["loc"])
        key = ".".join(loc) or "<root>"
        origin = _origin_of(loc, source, override_paths)
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
