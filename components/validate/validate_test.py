"""Schema inference and validation on statistics TFDV computes from small dataframes."""

import numpy as np
import pandas as pd
import pytest
import tensorflow_data_validation as tfdv

from components.common.errors import ConfigError, InputDataError
from components.validate import validate as v


def stats(df):
    return tfdv.generate_statistics_from_dataframe(df)


@pytest.fixture(scope="module")
def train():
    n = 30
    return pd.DataFrame(
        {
            "text": [f"def f{i}(): pass" for i in range(n)],
            "path": [f"m{i}.py" for i in range(n)],
            "doc_id": [f"{i:064x}" for i in range(n)],
            "source": ["python-stdlib"] * n,
            "num_bytes": list(range(100, 100 + n)),
        }
    )


def test_free_text_features_get_no_domain(train):
    schema = v.infer_schema(stats(train))
    by_name = {f.name: f for f in schema.feature}
    for name in ("text", "path", "doc_id"):
        assert not by_name[name].HasField("domain"), name
    # a categorical feature keeps its inferred domain
    assert by_name["source"].domain == "source"
    assert [d.name for d in schema.string_domain] == ["source"]


def test_new_documents_are_not_anomalies(train):
    schema = v.infer_schema(stats(train))
    fresh = train.assign(text=[f"class C{i}: pass" for i in range(len(train))], path="new.py")
    assert v.format_report(v.validate_splits({"eval": stats(fresh)}, schema)) == ""


def test_drifted_split_is_reported_and_fails(train):
    schema = v.infer_schema(stats(train))
    bad = train.drop(columns=["num_bytes"]).assign(source="unknown-source")
    found = v.validate_splits({"train": stats(train), "eval": stats(bad)}, schema)
    report = v.format_report(found)
    assert "eval/num_bytes" in report and "eval/source" in report
    assert "train/" not in report
    with pytest.raises(InputDataError, match=r"data validation found 2 anomalies.*eval/num_bytes"):
        v.check_anomalies(found, fail=True)
    assert v.check_anomalies(found, fail=False) == report


# ---------------------------------------------------------------------------------------
# Frozen schema, drift against the previous span, skew between splits


def span(seed, n=200, tokens_mean=240.0, sources=("python-stdlib",), p=None):
    """Packed-row-like statistics: num_tokens per row and the source of each row."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "num_tokens": np.clip(rng.normal(tokens_mean, 10, n), 1, 256).astype(int),
            "sources": rng.choice(list(sources), n, p=p),
        }
    )


THRESHOLDS = {"num_tokens": 0.3, "sources": 0.3}


def test_schema_is_inferred_once_then_frozen(tmp_path):
    first, origin = v.resolve_schema(stats(span(1)), None, str(tmp_path))
    assert origin.startswith("inferred now and frozen at")
    # a later span with a new source: the frozen schema is returned, not one re-inferred
    later, origin = v.resolve_schema(stats(span(2, sources=("a", "b"))), None, str(tmp_path))
    assert origin == f"frozen schema {tmp_path}/schema.pbtxt"
    assert later == first
    assert list(later.string_domain[0].value) == ["python-stdlib"]


def test_committed_schema_wins_and_a_missing_one_is_named(tmp_path):
    committed = tmp_path / "committed.pbtxt"
    tfdv.write_schema_text(v.infer_schema(stats(span(1, sources=("x",)))), str(committed))
    schema, origin = v.resolve_schema(stats(span(2)), str(committed), str(tmp_path / "frozen"))
    assert origin == f"committed schema {committed}" and list(schema.string_domain[0].value) == ["x"]
    assert not (tmp_path / "frozen").exists()
    with pytest.raises(InputDataError, match="validate.schema_path: schema file not found: /nope.pbtxt"):
        v.resolve_schema(stats(span(2)), "/nope.pbtxt", str(tmp_path))


def test_a_drifted_span_is_caught_and_a_fresh_sample_is_not(tmp_path):
    base = stats(span(1, sources=("a", "b"), p=[0.5, 0.5]))
    schema = v.with_comparators(v.infer_schema(base), THRESHOLDS, {})
    v.save_baseline(base, str(tmp_path))
    baseline = v.load_baseline(str(tmp_path))
    assert baseline == base
    # same distributions, another sample: no anomaly
    same = stats(span(2, sources=("a", "b"), p=[0.5, 0.5]))
    assert v.format_report(v.validate_splits({"train": same}, schema, baseline)) == ""
    # rows half as full and 90% of rows from one source: drift on both features
    drifted = stats(span(3, tokens_mean=120.0, sources=("a", "b"), p=[0.9, 0.1]))
    report = v.format_report(v.validate_splits({"train": drifted}, schema, baseline))
    assert "train/num_tokens" in report and "Jensen-Shannon" in report.replace("jensen_shannon", "Jensen-Shannon")
    assert "train/sources" in report and "L-infinity" in report.replace("Linfty", "L-infinity")
    with pytest.raises(InputDataError, match="delete that folder"):
        v.check_anomalies(v.validate_splits({"train": drifted}, schema, baseline), True, "delete that folder")


def test_eval_skewed_from_train_is_caught():
    train = stats(span(1, sources=("a", "b"), p=[0.5, 0.5]))
    schema = v.with_comparators(v.infer_schema(train), {}, {"sources": 0.3})
    skewed = stats(span(2, sources=("a", "b"), p=[0.95, 0.05]))
    report = v.format_report(v.validate_splits({"train": train, "eval": skewed}, schema))
    assert "train/sources" in report and "eval/" not in report


def test_thresholds_for_unknown_features_are_config_errors():
    schema = v.infer_schema(stats(span(1)))
    with pytest.raises(ConfigError, match="validate.drift: no feature 'nope' in the schema"):
        v.with_comparators(schema, {"nope": 0.1}, {})


def test_statistics_html_is_a_facets_page():
    html = v.statistics_html(stats(span(1)), stats(span(2)), "train", "eval")
    assert html.startswith("<!DOCTYPE html>") and "facets-iframe" in html and "train vs eval" in html


def test_malformed_schema_file_is_named_with_its_line(tmp_path):
    bad = tmp_path / "schema.pbtxt"
    bad.write_text('feature {\n  name: "x"\n  type: NOT_A_TYPE\n}\n')
    with pytest.raises(InputDataError, match=r"schema.pbtxt: not a valid TFDV schema: 3:"):
        v.load_schema(str(bad))


def test_thresholds_for_features_packed_rows_lack_fail_before_any_run():
    from components.common.errors import ConfigError
    from configs.schema import ValidateConfig

    defaults = ValidateConfig()
    v.check_threshold_features(defaults.drift, defaults.skew)  # the shipped defaults are valid
    with pytest.raises(ConfigError, match=r"validate.skew: no packed feature 'nope'"):
        v.check_threshold_features({}, {"nope": 0.5})
