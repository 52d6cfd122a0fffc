"""TFX wrappers: schema (inferred once, then frozen) and validation over StatisticsGen's output."""

import os

import tensorflow_data_validation as tfdv
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import artifact_utils
from tfx.types.standard_artifacts import ExampleAnomalies, ExampleStatistics
from tfx.types.standard_artifacts import Schema as SchemaArtifact

from components.common.fileio import atomic_write_bytes, atomic_write_text
from components.validate import validate as v
from configs.schema import ValidateConfig

ORIGIN_FILE = "schema_origin.txt"


@component
def InferSchema(  # noqa: N802
    statistics: InputArtifact[ExampleStatistics],
    schema: OutputArtifact[SchemaArtifact],
    frozen_dir: Parameter[str],
    split: Parameter[str] = "train",
    schema_path: Parameter[str] = "",
    schema_fingerprint: Parameter[str] = "",
) -> None:
    """The committed schema, else the frozen one, else one inferred from ``split`` and frozen.

    ``schema_fingerprint`` (sha256 of the committed schema file) is only part of the cache key.
    """
    resolved, origin = v.resolve_schema(v.load_split_stats(statistics.uri, split), schema_path or None, frozen_dir)
    tfdv.write_schema_text(resolved, os.path.join(schema.uri, v.SCHEMA_FILE))
    atomic_write_text(os.path.join(schema.uri, ORIGIN_FILE), origin + "\n")
    schema.set_string_custom_property("origin", origin)


@component
def ValidateExamples(  # noqa: N802
    statistics: InputArtifact[ExampleStatistics],
    schema: InputArtifact[SchemaArtifact],
    anomalies: OutputArtifact[ExampleAnomalies],
    frozen_dir: Parameter[str],
    config_json: Parameter[str] = "{}",
) -> None:
    """Every split against the schema, train against the last validated span (drift) and eval
    against train (skew); anomalies fail the run with a report. Writes Facets HTML views."""
    cfg = ValidateConfig.model_validate_json(config_json)
    splits = artifact_utils.decode_split_names(statistics.split_names)
    stats = {s: v.load_split_stats(statistics.uri, s) for s in splits}
    # The frozen folder (or committed schema) is the source of truth, not the schema artifact:
    # after a failure the user may delete the frozen folder to re-infer, and the cached schema
    # step would still hand over the old schema. Normally both are the same schema.
    if "train" in stats:
        loaded, origin = v.resolve_schema(stats["train"], cfg.schema_path, frozen_dir)
    else:
        loaded, origin = v.load_schema(os.path.join(schema.uri, v.SCHEMA_FILE)), "schema artifact"
    tfdv.write_schema_text(loaded, os.path.join(anomalies.uri, v.SCHEMA_FILE))
    anomalies.set_string_custom_property("schema_origin", origin)
    baseline = v.load_baseline(frozen_dir)
    found = v.validate_splits(stats, v.with_comparators(loaded, cfg.drift, cfg.skew), baseline)
    anomalies.split_names = artifact_utils.encode_split_names(splits)
    for split, a in found.items():
        atomic_write_bytes(
            os.path.join(anomalies.uri, f"Split-{split}", v.ANOMALIES_FILE), a.SerializeToString()
        )
    if "train" in stats:
        atomic_write_text(
            os.path.join(anomalies.uri, v.STATS_HTML),
            v.statistics_html(stats["train"], stats.get("eval"), "train", "eval"),
        )
        if baseline is not None:
            atomic_write_text(
                os.path.join(anomalies.uri, v.DRIFT_HTML),
                v.statistics_html(stats["train"], baseline, "this span", "previous span"),
            )
    report = v.format_report(found)
    atomic_write_text(os.path.join(anomalies.uri, v.REPORT_FILE), (report or "no anomalies") + "\n")
    anomalies.set_int_custom_property("num_anomalies", len(report.splitlines()) if report else 0)
    hint = (
        f"schema and drift baseline in {frozen_dir}: fix the data, or delete that folder to "
        "re-infer the schema from this span"
    )
    v.check_anomalies(found, cfg.fail_on_anomalies, hint)
    if "train" in stats and not report:  # only a clean span becomes the next drift baseline
        v.save_baseline(stats["train"], frozen_dir)
