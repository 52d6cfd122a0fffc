"""Pack: text examples → token ids → packed fixed-length rows, sharded TFRecords (Beam).

  Split-*/ text examples ─ parse ─ batches ─ tokenizers.encode_batch (trained tokenizer)
        ─ key by shard (doc_id hash) ─ group ─ sort by doc_id ─ pack (packing.py) ─ write

A shard's documents are packed in doc_id order, so the rows (and the shard's bytes) do not
depend on worker count; one partially filled row per shard is the only padding. Pick
``pack.num_shards`` so a shard's tokens fit one worker's memory (a shard is packed whole).
Writes ``Split-{train,eval}/data_tfrecord-*.gz`` and ``data_report.{json,png}`` (ingest report
+ pack counts), published only when the whole pipeline succeeded.
"""

from __future__ import annotations

import logging
import os

import apache_beam as beam
import numpy as np

from components.common import shards as sh
from components.common.errors import InputDataError
from components.common.fileio import atomic_write_json
from components.common.metrics import (
    Counters,
    MergeNestedCounts,
    local_pipeline,
    log2_bin,
    read_json,
    run_and_collect,
    write_json,
)
from components.ingest.document import parse_example
from components.pack import packing
from components.pack.report import write_data_png
from configs.schema import PackConfig

NAMESPACE = "seekline.pack"
SPLITS = ("train", "eval")
REPORT_FILE = "data_report.json"
REPORT_PNG = "data_report.png"
INGEST_REPORT = "ingest_report.json"
_STATS_FILE = "stats.json"
log = logging.getLogger(__name__)


def _parse(record: bytes) -> tuple[str, str, str]:
    d = parse_example(record)
    return d.doc_id, d.text, d.source


class EncodeFn(beam.DoFn):
    """(doc_id, text, source) batches → (shard, (doc_id, ids int32, source))."""

    def __init__(self, tokenizer_uri: str, num_shards: int, count):
        self.tokenizer_uri, self.num_shards, self.count = tokenizer_uri, num_shards, count

    def setup(self):
        from components.tokenizer.tokenizer import load

        self.tok = load(self.tokenizer_uri)

    def process(self, batch):
        encs = self.tok.encode_batch_fast([t for _, t, _ in batch], add_special_tokens=False)
        for (doc_id, _text, source), enc in zip(batch, encs, strict=True):
            ids = np.asarray(enc.ids, np.int32)
            self.count("documents")
            self.count("document_tokens", int(ids.size))
            yield sh.shard_of(doc_id, self.num_shards), (doc_id, ids, source)


class PackWriteFn(beam.DoFn):
    """One shard's documents → sorted → packed rows → shard file; yields report stats."""

    def __init__(self, staging: str, split: str, cfg: PackConfig, ids: dict, count):
        self.staging, self.split, self.cfg, self.ids, self.count = staging, split, cfg, ids, count

    def process(self, kv):
        shard, docs = kv
        docs = sorted(docs, key=lambda d: d[0])
        rows = packing.pack(
            [(ids, src) for _, ids, src in docs],
            self.cfg.seq_len,
            pad_id=self.ids["pad_id"],
            eos_id=self.ids["eos_id"],
            bos_id=self.ids["bos_id"] if self.cfg.add_bos else None,
        )
        stats = {"rows": {}, "tokens": {}, "pad_tokens": {}, "documents": {}, "doc_tokens_log2": {}, "source_tokens": {}}
        s = self.split
        stats["documents"][s] = len(docs)
        for _, ids, src in docs:
            n = int(ids.size) + 1 + int(self.cfg.add_bos)
            b = stats["doc_tokens_log2"].setdefault(s, {})
            b[log2_bin(n)] = b.get(log2_bin(n), 0) + 1
            stats["source_tokens"].setdefault(src, {}).setdefault(s, 0)
            stats["source_tokens"][src][s] += n
        written = {"rows": 0, "tokens": 0}

        def serialized():
            for row in rows:
                written["rows"] += 1
                written["tokens"] += row.num_tokens
                yield packing.to_example(row)

        path = os.path.join(self.staging, f"Split-{s}", sh.shard_name(shard, self.cfg.num_shards))
        sh.write_shard(path, serialized())
        stats["rows"][s] = written["rows"]
        stats["tokens"][s] = written["tokens"]
        stats["pad_tokens"][s] = written["rows"] * self.cfg.seq_len - written["tokens"]
        self.count(f"rows_{s}", written["rows"])
        self.count(f"tokens_{s}", written["tokens"])
        yield stats


def build_pack(p: beam.Pipeline, examples_uri: str, tokenizer_uri: str, ids: dict, cfg: PackConfig, staging: str) -> None:
    count = Counters(NAMESPACE)
    stats = []
    for s in SPLITS:
        stats.append(
            p
            | f"Read-{s}" >> beam.io.ReadFromTFRecord(os.path.join(examples_uri, f"Split-{s}", "*.gz"))
            | f"Parse-{s}" >> beam.Map(_parse)
            | f"Batch-{s}" >> beam.BatchElements(min_batch_size=cfg.batch_size, max_batch_size=cfg.batch_size)
            | f"Encode-{s}" >> beam.ParDo(EncodeFn(tokenizer_uri, cfg.num_shards, count))
            | f"GroupByShard-{s}" >> beam.GroupByKey()
            | f"PackWrite-{s}" >> beam.ParDo(PackWriteFn(staging, s, cfg, ids, count))
        )
    _ = (
        stats
        | "AllStats" >> beam.Flatten()
        | "SumStats" >> beam.CombineGlobally(MergeNestedCounts())
        | "WriteStats" >> beam.Map(write_json, os.path.join(staging, _STATS_FILE))
    )


def make_report(ingest_report: dict, stats: dict, cfg: PackConfig, counters: dict) -> dict:
    rows = {s: stats.get("rows", {}).get(s, 0) for s in SPLITS}
    tokens = {s: stats.get("tokens", {}).get(s, 0) for s in SPLITS}
    return {
        "ingest": ingest_report,
        "seq_len": cfg.seq_len,
        "documents_packed": {s: stats.get("documents", {}).get(s, 0) for s in SPLITS},
        "rows": rows,
        "tokens_written": tokens,
        "pad_tokens": {s: stats.get("pad_tokens", {}).get(s, 0) for s in SPLITS},
        "fill": {s: round(tokens[s] / (rows[s] * cfg.seq_len), 4) if rows[s] else 0.0 for s in SPLITS},
        "document_tokens_histogram_log2": stats.get("doc_tokens_log2", {}),
        "source_tokens": stats.get("source_tokens", {}),
        "counters": dict(sorted(counters.items())),
    }


def run_pack(
    examples_uri: str,
    tokenizer_uri: str,
    output_uri: str,
    cfg: PackConfig,
    pipeline: beam.Pipeline | None = None,
) -> dict:
    """Tokenize + pack both splits of ``examples_uri`` into ``output_uri``; returns the report."""
    import tensorflow as tf

    from components.tokenizer.tokenizer import load_meta

    meta = load_meta(tokenizer_uri)
    ids = {k: meta[k] for k in ("pad_id", "bos_id", "eos_id")}
    with sh.staged(output_uri) as staging:
        p = pipeline if pipeline is not None else local_pipeline()
        build_pack(p, examples_uri, tokenizer_uri, ids, cfg, staging)
        counters, stats = run_and_collect(p, NAMESPACE, os.path.join(staging, _STATS_FILE))
        ingest_path = os.path.join(examples_uri, INGEST_REPORT)
        ingest_report = read_json(ingest_path) if tf.io.gfile.exists(ingest_path) else {}
        report = make_report(ingest_report, stats, cfg, counters)
        log.info("pack: rows %s tokens %s", report["rows"], report["tokens_written"])
        for s in SPLITS:
            if report["rows"][s] == 0:
                raise InputDataError(f"pack produced no rows for the {s!r} split of {examples_uri}")
        report["shards"] = sh.publish_splits(staging, output_uri, SPLITS, cfg.num_shards)
    atomic_write_json(os.path.join(output_uri, REPORT_FILE), report)
    write_data_png(report, os.path.join(output_uri, REPORT_PNG))
    return report
