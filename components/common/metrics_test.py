"""Beam counters round trip, and user errors raised in workers come back as user errors."""

import pickle

import apache_beam as beam
import pytest

from components.common.errors import InputDataError
from components.common.metrics import Counters, read_counters, run_pipeline


def _count(x, count):
    count("seen")
    count("total", x)
    return x


def _fail(x):
    raise InputDataError(f"bad.jsonl:{x}: malformed JSON")


def test_counters_are_picklable_and_read_back():
    c = Counters("t")
    assert pickle.loads(pickle.dumps(c)).namespace == "t"
    p = beam.Pipeline()
    _ = p | beam.Create([1, 2, 3]) | beam.Map(_count, c)
    assert read_counters(run_pipeline(p), "t") == {"seen": 3, "total": 6}


def test_worker_user_error_is_reraised_as_one():
    p = beam.Pipeline()
    _ = p | beam.Create([7]) | beam.Map(_fail)
    with pytest.raises(InputDataError, match="bad.jsonl:7: malformed JSON"):
        run_pipeline(p)


def test_user_error_is_recovered_from_a_remote_workers_text():
    from components.common.metrics import user_error_from_text

    text = (
        "Traceback (most recent call last):\n  File ...\n"
        "components.common.errors.InputDataError: /c/x.jsonl:3: malformed JSON (ingest.strict) "
        "[while running 'Read']\n"
    )
    err = user_error_from_text(text)
    assert isinstance(err, InputDataError) and str(err) == "/c/x.jsonl:3: malformed JSON (ingest.strict)"
    assert user_error_from_text("RuntimeError: something else") is None
