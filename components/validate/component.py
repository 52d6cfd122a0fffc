"""TFX wrappers: schema inference and validation over StatisticsGen's output."""

import os

import tensorflow_data_validation as tfdv
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import artifact_utils
from tfx.types.standard_artifacts import ExampleAnomalies, ExampleStatistics
from tfx.types.standard_artifacts import Schema as SchemaArtifact

from components.common.fileio import atomic_write_bytes, atomic_write_text
from components.validate import validate as v


@component
def InferSchema(  # noqa: N802
    statistics: InputArtifact[ExampleStatistics],
    schema: OutputArtifact[SchemaArtifact],
    split: Parameter[str] = "train",
) -> None:
    """Infers the schema from one split's statistics (free-text features get no domain)."""
    inferred = v.infer_schema(v.load_split_stats(statistics.uri, split))
    tfdv.write_schema_text(inferred, os.path.join(schema.uri, v.SCHEMA_FILE))


@component
def ValidateExamples(  # noqa: N802
    statistics: InputArtifact[ExampleStatistics],
    schema: InputArtifact[SchemaArtifact],
    anomalies: OutputArtifact[ExampleAnomalies],
    fail_on_anomalies: Parameter[bool] = True,
) -> None:
    """Validates every split against the schema; anomalies fail the run with a report."""
    splits = artifact_utils.decode_split_names(statistics.split_names)
    loaded = tfdv.load_schema_text(os.path.join(schema.uri, v.SCHEMA_FILE))
    found = v.validate_splits({s: v.load_split_stats(statistics.uri, s) for s in splits}, loaded)
    anomalies.split_names = artifact_utils.encode_split_names(splits)
    for split, a in found.items():
        atomic_write_bytes(
            os.path.join(anomalies.uri, f"Split-{split}", v.ANOMALIES_FILE), a.SerializeToString()
        )
    report = v.format_report(found)
    atomic_write_text(os.path.join(anomalies.uri, v.REPORT_FILE), (report or "no anomalies") + "\n")
    anomalies.set_int_custom_property("num_anomalies", len(report.splitlines()) if report else 0)
    v.check_anomalies(found, fail_on_anomalies)
