"""Schema inference and validation with TFDV (plain functions; no TFX).

StatisticsGen (stock TFX, Beam) computes per-split statistics; ``infer_schema`` turns the train
split's statistics into a schema, and ``validate_splits`` checks every split against it. A run
whose data has anomalies fails with ``format_report``'s readable summary.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import tensorflow_data_validation as tfdv
from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2, statistics_pb2

from components.common.errors import InputDataError

STATS_FILE = "FeatureStats.pb"  # what StatisticsGen writes per split
SCHEMA_FILE = "schema.pbtxt"  # what SchemaGen writes (and SchemaGen consumers read)
ANOMALIES_FILE = "SchemaDiff.pb"  # what ExampleValidator writes per split
REPORT_FILE = "anomalies.txt"

# Free-text features: every value is unique by design, so a string domain inferred from one
# split's values would flag every new document as an anomaly.
FREE_TEXT_FEATURES = ("text", "path", "doc_id")


def load_split_stats(stats_uri: str, split: str) -> statistics_pb2.DatasetFeatureStatisticsList:
    path = os.path.join(stats_uri, f"Split-{split}", STATS_FILE)
    return tfdv.load_stats_binary(path)


def infer_schema(
    stats: statistics_pb2.DatasetFeatureStatisticsList,
    free_text_features: Iterable[str] = FREE_TEXT_FEATURES,
) -> schema_pb2.Schema:
    schema = tfdv.infer_schema(stats, infer_feature_shape=True)
    free = set(free_text_features)
    for feature in schema.feature:
        if feature.name in free and feature.HasField("domain"):
            domain = feature.domain
            feature.ClearField("domain")
            kept = [d for d in schema.string_domain if d.name != domain]
            del schema.string_domain[:]
            schema.string_domain.extend(kept)
    return schema


def validate_splits(
    stats_by_split: dict[str, statistics_pb2.DatasetFeatureStatisticsList],
    schema: schema_pb2.Schema,
) -> dict[str, anomalies_pb2.Anomalies]:
    return {s: tfdv.validate_statistics(stats, schema) for s, stats in stats_by_split.items()}


def format_report(anomalies: dict[str, anomalies_pb2.Anomalies]) -> str:
    """'split/feature: short description (long description)' per anomaly; '' when clean."""
    lines = []
    for split, a in sorted(anomalies.items()):
        for feature, info in sorted(a.anomaly_info.items()):
            desc = info.short_description or "anomaly"
            detail = f" ({info.description})" if info.description else ""
            lines.append(f"{split}/{feature}: {desc}{detail}")
        if a.HasField("dataset_anomaly_info"):
            info = a.dataset_anomaly_info
            lines.append(f"{split}/<dataset>: {info.short_description} ({info.description})")
    return "\n".join(lines)


def check_anomalies(anomalies: dict[str, anomalies_pb2.Anomalies], fail: bool) -> str:
    report = format_report(anomalies)
    if report and fail:
        n = report.count("\n") + 1
        raise InputDataError(
            f"data validation found {n} anomal{'y' if n == 1 else 'ies'} against the schema: "
            + "; ".join(report.splitlines())
        )
    return report
