"""``create_pipeline(config)``: the one TFX DAG every runner executes.

The runner is chosen outside (pipelines/local.py, pipelines/kubeflow.py): this module only wires
components by their named outputs and attaches per-component platform resources.
"""

from __future__ import annotations

from tfx import v1 as tfx

from components.agent.component import AgentTrajectories
from components.context_extension.component import ExtendContext
from components.distill.component import Distill
from components.evaluate.component import Evaluate
from components.export.component import Export
from components.grpo.component import GroupRelativePolicyOptimization
from components.ingest.component import Ingest
from components.pack.component import PackSequences
from components.pretrain.component import Pretrain
from components.sft.component import SupervisedFineTune
from components.tokenizer.component import TrainTokenizer
from components.validate.component import InferSchema, ValidateExamples
from components.validate.validate import check_threshold_features
from configs.schema import ResourceSpec, SeeklineConfig
from pipelines.resources import to_resource_spec_proto

BASELINE_RESOLVER_ID = "latest_blessed_model_resolver"


def evaluate_nodes(config: SeeklineConfig, candidate, teacher) -> list:
    """The Evaluate component, preceded by the baseline resolver when the blessing compares with
    the latest blessed model (TFX's LatestBlessedModelStrategy over every Model / ModelBlessing in
    this pipeline's metadata; empty on the first run, which then has no baseline)."""
    nodes = []
    inputs = {"candidate": candidate.outputs["model"]}
    if teacher is not None:
        inputs["teacher"] = teacher.outputs["model"]
    if config.evaluate.blessing.require_no_worse_than_baseline:
        resolver = tfx.dsl.Resolver(
            strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
            model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
            model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
        ).with_id(BASELINE_RESOLVER_ID)
        nodes.append(resolver)
        inputs["baseline_model"] = resolver.outputs["model"]
        inputs["baseline_blessing"] = resolver.outputs["model_blessing"]
    nodes.append(Evaluate(config_json=config.evaluate.model_dump_json(), **inputs).with_id("evaluate"))
    return nodes


def export_push_dir(config: SeeklineConfig, pipeline_root: str) -> str:
    """Where exports are published for TF Serving: export.push_dir, else a `serving/<pipeline
    name>` folder beside the pipeline root."""
    if config.export.push_dir:
        return config.export.push_dir
    parent = pipeline_root.rstrip("/").rsplit("/", 1)[0] if "/" in pipeline_root.rstrip("/") else "."
    return f"{parent}/serving/{config.pipeline.name}"


def export_node(config: SeeklineConfig, candidate, evaluate, pipeline_root: str):
    """The export of the evaluated model, run only when evaluate blessed it (tfx.dsl.Cond on the
    blessing's `blessed` property, as TFX's Pusher is gated on its Evaluator)."""
    blessing = evaluate.outputs["blessing"]
    with tfx.dsl.Cond(blessing.future()[0].custom_property("blessed") == 1):
        node = Export(
            model=candidate.outputs["model"],
            blessing=blessing,
            evaluation=evaluate.outputs["evaluation"],
            config_json=config.export.model_dump_json(),
            push_dir=export_push_dir(config, pipeline_root),
            pipeline_name=config.pipeline.name,
        ).with_id("export")
    return node


def create_pipeline(
    config: SeeklineConfig,
    *,
    pipeline_root: str,
    metadata_connection_config=None,
    corpus_fingerprint: str = "",
    schema_fingerprint: str = "",
    with_platform_resources: bool = False,
) -> tfx.dsl.Pipeline:
    """Build the seekline DAG.

    Args:
      config: the resolved run config.
      pipeline_root: where artifacts are written (local folder or object-store URI).
      metadata_connection_config: MLMD connection (local runs); None on Kubeflow.
      corpus_fingerprint: changes when the corpus changes, so ingest re-runs only then.
      schema_fingerprint: changes when a committed schema (validate.schema_path) is edited.
      with_platform_resources: attach CPU/memory/GPU requests (Kubeflow); the local runner
        ignores them, so they are left off there.
    """
    check_threshold_features(config.validate_.drift, config.validate_.skew)
    # ingest (Beam) → text examples; tokenizer trains on their train split; pack (Beam)
    # tokenizes + packs both splits; TFDV statistics/schema/validation run on the packed rows.
    ingest = Ingest(
        config_json=config.ingest.model_dump_json(),
        corpus_fingerprint=corpus_fingerprint,
    ).with_id("ingest")
    tokenizer = TrainTokenizer(
        examples=ingest.outputs["examples"],
        config_json=config.tokenizer.model_dump_json(),
    ).with_id("tokenizer")
    pack = PackSequences(
        examples=ingest.outputs["examples"],
        tokenizer=tokenizer.outputs["tokenizer"],
        config_json=config.pack.model_dump_json(),
    ).with_id("pack")
    statistics = tfx.components.StatisticsGen(examples=pack.outputs["packed"]).with_id("statistics")
    # The frozen schema + drift baseline live outside any one execution's artifacts, at a
    # fixed place every later run (span) of this pipeline finds.
    frozen_dir = config.validate_.resolved_frozen_dir(pipeline_root)
    schema = InferSchema(
        statistics=statistics.outputs["statistics"],
        frozen_dir=frozen_dir,
        schema_path=config.validate_.schema_path or "",
        schema_fingerprint=schema_fingerprint,
    ).with_id("schema")
    validate = ValidateExamples(
        statistics=statistics.outputs["statistics"],
        schema=schema.outputs["schema"],
        frozen_dir=frozen_dir,
        config_json=config.validate_.model_dump_json(),
    ).with_id("validate")
    # Training starts only on validated rows: pretrain waits for validate (a task dependency;
    # it reads the packed rows themselves from pack).
    pretrain = Pretrain(
        examples=pack.outputs["packed"],
        tokenizer=tokenizer.outputs["tokenizer"],
        config_json=config.pretrain.model_dump_json(),
    ).with_id("pretrain")
    pretrain.add_upstream_node(validate)
    components = [ingest, tokenizer, pack, statistics, schema, validate, pretrain]
    base = pretrain
    if config.context_extension.enabled:
        base = ExtendContext(
            pretrained=pretrain.outputs["model"],
            examples=ingest.outputs["examples"],
            tokenizer=tokenizer.outputs["tokenizer"],
            config_json=config.context_extension.model_dump_json(),
        ).with_id("context_extension")
        components.append(base)
    # Post-training: SFT on the newest base model (context-extended when enabled), GRPO on the
    # SFT model, then the newest of the two as the teacher of a smaller student trained on the
    # SFT rows, which then learns to act as a tool-using agent from the teacher's trajectories.
    candidate, teacher = base, None
    if config.sft.enabled:
        sft = SupervisedFineTune(
            base_model=base.outputs["model"],
            examples=ingest.outputs["examples"],
            tokenizer=tokenizer.outputs["tokenizer"],
            config_json=config.sft.model_dump_json(),
        ).with_id("sft")
        components.append(sft)
        candidate = sft
        if config.grpo.enabled:
            candidate = GroupRelativePolicyOptimization(
                sft_model=sft.outputs["model"],
                config_json=config.grpo.model_dump_json(),
            ).with_id("grpo")
            components.append(candidate)
        if config.distill.enabled:
            teacher = candidate
            candidate = Distill(
                teacher=teacher.outputs["model"],
                sft_model=sft.outputs["model"],
                config_json=config.distill.model_dump_json(),
            ).with_id("distill")
            components.append(candidate)
            if config.agent.enabled:
                # Agent distillation: the teacher (or agent.teacher's endpoint) writes tool-using
                # trajectories (retrieval over the ingested corpus); the distilled student
                # continues on them with SAD + process-step supervision, KL to the same teacher.
                trajectories = AgentTrajectories(
                    teacher=teacher.outputs["model"],
                    corpus=ingest.outputs["examples"] if config.agent.retrieval else None,
                    config_json=config.agent.model_dump_json(),
                ).with_id("agent_trajectories")
                candidate = Distill(
                    teacher=teacher.outputs["model"],
                    sft_model=sft.outputs["model"],
                    student=candidate.outputs["model"],
                    agent_data=trajectories.outputs["trajectories"],
                    config_json=config.agent.distill.model_dump_json(),
                ).with_id("agent_distill")
                components += [trajectories, candidate]
    # Evaluation of the newest model (the student, compared with its teacher); its blessing is
    # what a serving export is gated on (tfx.dsl.Cond, docs/evaluation.md).
    if config.evaluate.enabled:
        nodes = evaluate_nodes(config, candidate, teacher)
        components.extend(nodes)
        if config.export.enabled:
            components.append(export_node(config, candidate, nodes[-1], pipeline_root))

    if with_platform_resources:
        for c in components:
            if c.id == BASELINE_RESOLVER_ID:  # a resolver runs in the orchestrator, not in a pod
                continue
            spec: ResourceSpec = config.resources.for_component(c.id)
            c.with_platform_config(to_resource_spec_proto(spec))

    return tfx.dsl.Pipeline(
        pipeline_name=config.pipeline.name,
        pipeline_root=pipeline_root,
        components=components,
        enable_cache=config.pipeline.enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=config.pipeline.beam.pipeline_args(),
    )
