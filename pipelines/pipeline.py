"""``create_pipeline(config)``: the one TFX DAG every runner executes.

The runner is chosen outside (pipelines/local.py, pipelines/kubeflow.py): this module only wires
components by their named outputs and attaches per-component platform resources.
"""

from __future__ import annotations

from tfx import v1 as tfx

from components.ingest.component import Ingest
from components.validate.component import InferSchema, ValidateExamples
from configs.schema import ResourceSpec, SeeklineConfig
from pipelines.resources import to_resource_spec_proto


def create_pipeline(
    config: SeeklineConfig,
    *,
    pipeline_root: str,
    metadata_connection_config=None,
    corpus_fingerprint: str = "",
    with_platform_resources: bool = False,
) -> tfx.dsl.Pipeline:
    """Build the seekline DAG.

    Args:
      config: the resolved run config.
      pipeline_root: where artifacts are written (local folder or object-store URI).
      metadata_connection_config: MLMD connection (local runs); None on Kubeflow.
      corpus_fingerprint: changes when the corpus changes, so ingest re-runs only then.
      with_platform_resources: attach CPU/memory/GPU requests (Kubeflow); the local runner
        ignores them, so they are left off there.
    """
    ingest = Ingest(
        config_json=config.ingest.model_dump_json(),
        corpus_fingerprint=corpus_fingerprint,
    ).with_id("ingest")
    statistics = tfx.components.StatisticsGen(examples=ingest.outputs["examples"]).with_id(
        "statistics"
    )
    schema = InferSchema(statistics=statistics.outputs["statistics"]).with_id("schema")
    validate = ValidateExamples(
        statistics=statistics.outputs["statistics"],
        schema=schema.outputs["schema"],
        fail_on_anomalies=config.validate_.fail_on_anomalies,
    ).with_id("validate")
    components = [ingest, statistics, schema, validate]

    if with_platform_resources:
        for c in components:
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
