"""Beam counters by name, and reading them back after a run."""

from __future__ import annotations

import json
import math
import re

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter


class Counters:
    """``count(name, n=1)`` increments the Beam counter ``namespace:name`` (created lazily;
    picklable, so DoFns can carry it to workers)."""

    def __init__(self, namespace: str):
        self.namespace = namespace
        self._c: dict = {}

    def __getstate__(self):
        return {"namespace": self.namespace}

    def __setstate__(self, state):
        self.namespace = state["namespace"]
        self._c = {}

    def __call__(self, name: str, n: int = 1) -> None:
        c = self._c.get(name)
        if c is None:
            c = self._c[name] = Metrics.counter(self.namespace, name)
        c.inc(n)


def read_counters(result, namespace: str) -> dict[str, int]:
    """Counter values of a finished pipeline (committed where the runner reports them)."""
    out: dict[str, int] = {}
    for m in result.metrics().query(MetricsFilter().with_namespace(namespace))["counters"]:
        v = m.committed if m.committed is not None else m.attempted
        out[m.key.metric.name] = out.get(m.key.metric.name, 0) + int(v or 0)
    return out


_REMOTE_USER_ERROR = re.compile(r"\b(InputDataError|ConfigError|UserError): (.+)")


def run_pipeline(p):
    """Run a Beam pipeline to completion; a UserError raised in a worker comes back as one.

    Remote workers (multi-processing DirectRunner, Dataflow) return failures as text, so the
    exception type is lost; the CLI needs it to print a one-line error instead of a traceback.
    """
    from components.common import errors

    try:
        result = p.run()
        result.wait_until_finish()
        return result
    except Exception as e:
        local = errors.find_user_error(e)
        # In-process runners re-raise the error itself, with the failing step appended.
        found = type(local)(_strip_step(str(local))) if local is not None else user_error_from_text(str(e))
        if found is not None:
            raise found from e
        raise


def _strip_step(message: str) -> str:
    """Beam appends the failing step to a message: "... [while running 'Read']"."""
    return re.sub(r"\s*\[while running '[^']*'\]\s*$", "", message).strip()


def user_error_from_text(text: str):
    """The UserError a remote worker's failure text names, or None."""
    from components.common import errors

    m = _REMOTE_USER_ERROR.search(text)
    if not m:
        return None
    return getattr(errors, m.group(1))(_strip_step(m.group(2)))


def merge_nested_counts(out: dict, a: dict) -> None:
    """Add the numbers of nested dict ``a`` into ``out`` in place ({k: n | {k: ...}})."""
    for k, v in a.items():
        if isinstance(v, dict):
            merge_nested_counts(out.setdefault(k, {}), v)
        else:
            out[k] = out.get(k, 0) + v


class MergeNestedCounts(beam.CombineFn):
    """Beam combiner summing per-document stats dicts into one report dict."""

    def create_accumulator(self):
        return {}

    def add_input(self, acc, x):
        merge_nested_counts(acc, x)
        return acc

    def merge_accumulators(self, accs):
        out: dict = {}
        for a in accs:
            merge_nested_counts(out, a)
        return out

    def extract_output(self, acc):
        return acc


def write_json(obj, path: str) -> None:
    """Beam-Map-friendly (obj first) atomic JSON write."""
    from components.common.fileio import atomic_write_json

    atomic_write_json(path, obj)


def read_json(path: str) -> dict:
    import tensorflow as tf

    with tf.io.gfile.GFile(path, "r") as f:
        return json.load(f)


def run_and_collect(p, namespace: str, stats_path: str) -> tuple[dict[str, int], dict]:
    """Run ``p``; return its counters in ``namespace`` and the stats JSON it wrote (or {})."""
    import tensorflow as tf

    counters = read_counters(run_pipeline(p), namespace)
    stats = read_json(stats_path) if tf.io.gfile.exists(stats_path) else {}
    return counters, stats


def log2_bin(n: int) -> str:
    """Histogram bin of a length: floor(log2 n) as a string key ("0" for n <= 0)."""
    return str(int(math.log2(n))) if n > 0 else "0"


def local_pipeline(num_workers: int = 1, mode: str = "in_memory") -> beam.Pipeline:
    """A DirectRunner pipeline (tests, benchmarks); the TFX components get theirs from the run's
    beam_pipeline_args instead."""
    from apache_beam.options.pipeline_options import PipelineOptions

    return beam.Pipeline(
        options=PipelineOptions(
            ["--runner=DirectRunner", f"--direct_num_workers={num_workers}", f"--direct_running_mode={mode}"]
        )
    )
