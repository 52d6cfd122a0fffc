"""TFX wrapper of the ingest phase (the only module here that imports TFX)."""

import apache_beam as beam
from tfx.dsl.component.experimental.annotations import BeamComponentParameter, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import artifact_utils
from tfx.types.standard_artifacts import Examples

from components.common.fileio import atomic_write_text
from components.ingest.ingest import SPLITS, run_ingest
from configs.schema import IngestConfig


@component(use_beam=True)
def Ingest(  # noqa: N802 (TFX component factories are classes by convention)
    examples: OutputArtifact[Examples],
    config_json: Parameter[str],
    corpus_fingerprint: Parameter[str] = "",
    beam_pipeline: BeamComponentParameter[beam.Pipeline] = None,
) -> None:
    """Reads, cleans and deduplicates the corpus into ``Examples`` (Split-train / Split-eval).

    ``corpus_fingerprint`` is not read here: it is part of the cache key, so a changed corpus
    re-runs the component while an unchanged one is served from the cache. ``beam_pipeline``
    is built by TFX from the pipeline's beam_pipeline_args (DirectRunner workers, Dataflow…).
    """
    cfg = IngestConfig.model_validate_json(config_json)
    report = run_ingest(cfg, examples.uri, pipeline=beam_pipeline)
    examples.split_names = artifact_utils.encode_split_names(list(SPLITS))
    for split in SPLITS:
        examples.set_int_custom_property(f"{split}_documents", report["documents"][split])
    examples.set_int_custom_property("exact_duplicates", report["exact_duplicates"])
    examples.set_int_custom_property("near_duplicates", report["near_duplicates"])
    # The artifact carries the config section that produced it.
    atomic_write_text(f"{examples.uri}/config.json", config_json)
