"""Schema inference and validation on statistics TFDV computes from small dataframes."""

import pandas as pd
import pytest
import tensorflow_data_validation as tfdv

from components.common.errors import InputDataError
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
