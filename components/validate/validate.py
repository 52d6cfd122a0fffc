"""Schema inference, freezing and validation with TFDV (plain functions; no TFX).

StatisticsGen (stock TFX, Beam) computes per-split statistics. ``resolve_schema`` returns the
schema every run validates against: a committed one (``validate.schema_path``), else the one
frozen by an earlier run under ``frozen_dir``, else one inferred now from the train split and
frozen there. ``validate_splits`` checks every split against it, plus
  drift: this span's train statistics vs the last validated span's (the baseline kept in
         ``frozen_dir``) — Jensen-Shannon divergence (numeric) / L-infinity (categorical);
  skew:  eval vs train statistics of this span, same metrics;
with per-feature thresholds from the config. A run with anomalies fails with
``format_report``'s readable summary; a clean run becomes the next drift baseline.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Mapping

import tensorflow_data_validation as tfdv
from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2, statistics_pb2

from components.common.errors import ConfigError, InputDataError
from components.common.fileio import atomic_write_bytes, atomic_write_text

STATS_FILE = "FeatureStats.pb"  # what StatisticsGen writes per split
SCHEMA_FILE = "schema.pbtxt"  # what SchemaGen writes (and SchemaGen consumers read)
ANOMALIES_FILE = "SchemaDiff.pb"  # what ExampleValidator writes per split
REPORT_FILE = "anomalies.txt"
STATS_HTML = "statistics.html"  # train vs eval of this span (Facets)
DRIFT_HTML = "drift.html"  # this span's train vs the baseline span's train
BASELINE_STATS = "baseline/FeatureStats.pb"  # under frozen_dir

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
        # Counts and token ids are unbounded numbers: a 0/1-valued first span would otherwise
        # get a bool domain and fail every later span with a 2 in it.
        if feature.type == schema_pb2.INT:
            feature.ClearField("bool_domain")
            feature.ClearField("int_domain")
    return schema


def _exists(path: str) -> bool:
    import tensorflow as tf

    return tf.io.gfile.exists(path)


def load_schema(path: str) -> schema_pb2.Schema:
    """A schema.pbtxt; a malformed one is a one-line error naming the file and line:column."""
    from google.protobuf import text_format

    try:
        return tfdv.load_schema_text(path)
    except text_format.ParseError as e:
        raise InputDataError(f"{path}: not a valid TFDV schema: {e}") from None


def schema_fingerprint(schema_path: str | None) -> str:
    """Changes when a committed schema file is edited, so the schema step re-runs (TFX caches
    on parameters, not on the files they name)."""
    if not schema_path or not _exists(schema_path):
        return ""
    import hashlib

    import tensorflow as tf

    with tf.io.gfile.GFile(schema_path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def resolve_schema(
    train_stats: statistics_pb2.DatasetFeatureStatisticsList,
    schema_path: str | None,
    frozen_dir: str,
) -> tuple[schema_pb2.Schema, str]:
    """(schema, where it came from) — see the module docstring for the order."""
    if schema_path:
        if not _exists(schema_path):
            raise InputDataError(f"validate.schema_path: schema file not found: {schema_path}")
        return load_schema(schema_path), f"committed schema {schema_path}"
    frozen = os.path.join(frozen_dir, SCHEMA_FILE)
    if _exists(frozen):
        return load_schema(frozen), f"frozen schema {frozen}"
    schema = infer_schema(train_stats)
    atomic_write_text(frozen, str(schema))
    return schema, f"inferred now and frozen at {frozen}"


def check_threshold_features(drift: Mapping[str, float], skew: Mapping[str, float]) -> None:
    """Fail at pipeline build time (not after ingest and pack have run) on a threshold for a
    feature packed rows do not have."""
    from components.pack.packing import PACKED_FEATURES

    for kind, thresholds in (("drift", drift), ("skew", skew)):
        for name in thresholds:
            if name not in PACKED_FEATURES:
                raise ConfigError(
                    f"validate.{kind}: no packed feature {name!r} (features: {', '.join(PACKED_FEATURES)})"
                )


def with_comparators(
    schema: schema_pb2.Schema, drift: Mapping[str, float], skew: Mapping[str, float]
) -> schema_pb2.Schema:
    """A copy of the schema with drift/skew comparators (the frozen file stays as inferred)."""
    out = copy.deepcopy(schema)
    by_name = {f.name: f for f in out.feature}
    for kind, thresholds in (("drift", drift), ("skew", skew)):
        for name, t in thresholds.items():
            if name not in by_name:
                raise ConfigError(
                    f"validate.{kind}: no feature {name!r} in the schema (features: {', '.join(sorted(by_name))})"
                )
            f = by_name[name]
            comp = f.drift_comparator if kind == "drift" else f.skew_comparator
            if f.type == schema_pb2.BYTES:
                comp.infinity_norm.threshold = t
            else:
                comp.jensen_shannon_divergence.threshold = t
    return out


def load_baseline(frozen_dir: str) -> statistics_pb2.DatasetFeatureStatisticsList | None:
    path = os.path.join(frozen_dir, BASELINE_STATS)
    return tfdv.load_stats_binary(path) if _exists(path) else None


def save_baseline(train_stats: statistics_pb2.DatasetFeatureStatisticsList, frozen_dir: str) -> None:
    atomic_write_bytes(os.path.join(frozen_dir, BASELINE_STATS), train_stats.SerializeToString())


def statistics_html(
    lhs: statistics_pb2.DatasetFeatureStatisticsList,
    rhs: statistics_pb2.DatasetFeatureStatisticsList | None,
    lhs_name: str,
    rhs_name: str,
) -> str:
    from tensorflow_data_validation.utils.display_util import get_statistics_html

    body = get_statistics_html(lhs, rhs, lhs_name=lhs_name, rhs_name=rhs_name)
    # TFDV returns a notebook snippet (an iframe + script); make it a page a browser opens.
    title = f"{lhs_name} vs {rhs_name}" if rhs is not None else lhs_name
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>seekline statistics: {title}</title>"
        f"</head><body>\n<h3>seekline statistics: {title}</h3>\n{body}\n</body></html>\n"
    )


def validate_splits(
    stats_by_split: dict[str, statistics_pb2.DatasetFeatureStatisticsList],
    schema: schema_pb2.Schema,
    baseline: statistics_pb2.DatasetFeatureStatisticsList | None = None,
) -> dict[str, anomalies_pb2.Anomalies]:
    """Every split against the schema; the train split also against ``baseline`` (drift, when
    given and the schema has drift comparators) and the eval split (skew)."""
    out = {}
    for s, stats in stats_by_split.items():
        if s == "train":
            out[s] = tfdv.validate_statistics(
                stats, schema, previous_statistics=baseline, serving_statistics=stats_by_split.get("eval")
            )
        else:
            out[s] = tfdv.validate_statistics(stats, schema)
    return out


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


def check_anomalies(anomalies: dict[str, anomalies_pb2.Anomalies], fail: bool, hint: str = "") -> str:
    report = format_report(anomalies)
    if report and fail:
        n = report.count("\n") + 1
        raise InputDataError(
            f"data validation found {n} anomal{'y' if n == 1 else 'ies'} against the schema: "
            + "; ".join(report.splitlines())
            + (f" ({hint})" if hint else "")
        )
    return report
