"""Ingest: corpus → clean, deduplicated text examples split train/eval (one Beam pipeline).

Plain functions and Beam transforms, no TFX: ``component.py`` is a thin wrapper over
``run_ingest``. The same code runs on the DirectRunner (multi-processing, N local workers) and
on a distributed runner via the pipeline options.

  files ─ read (sources.py) ─ decode (UTF-8 policy) ─ normalise ─ quality filters (clean.py)
        ─ exact dedup (content hash) ─ near dedup (MinHash + LSH, minhash.py)
        ─ split by content hash ─ sorted GZIP TFRecord shards per split ─ publish

Every example has features:
  text (bytes, normalised UTF-8), path (bytes, relative to its corpus root; 'file.jsonl:17' for
  a JSONL line), source (bytes, the corpus entry), doc_id (bytes, sha256 hex of text),
  num_bytes (int64), num_lines (int64).
The split and the shard are pure functions of doc_id, and each shard is sorted by doc_id, so
the output does not depend on file order, worker count or which other files exist.
Counts of every stage and every skip/filter reason go to ``ingest_report.json`` (+ PNG).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator

import apache_beam as beam

from components.common import shards as sh
from components.common.errors import InputDataError
from components.common.fileio import atomic_write_json
from components.common.metrics import (
    Counters,
    MergeNestedCounts,
    local_pipeline,
    log2_bin,
    run_and_collect,
    write_json,
)
from components.ingest import minhash
from components.ingest.clean import normalise, reject_reason
from components.ingest.document import Document, to_example
from components.ingest.report import write_ingest_png
from components.ingest.sources import (  # noqa: F401 (re-exported: pipelines/local.py uses them)
    STDLIB,
    RawRecord,
    SourceFile,
    corpus_fingerprint,
    decode_utf8,
    list_corpus_files,
    read_file,
    resolve_root,
)
from configs.schema import DedupConfig, IngestConfig

NAMESPACE = "seekline.ingest"
SPLITS = ("train", "eval")
REPORT_FILE = "ingest_report.json"
REPORT_PNG = "ingest_report.png"
_STATS_FILE = "stats.json"
log = logging.getLogger(__name__)


def split_for(doc_id: str, eval_percent: int) -> str:
    return "eval" if int(doc_id[:8], 16) % 100 < eval_percent else "train"


def clean(rec: RawRecord, cfg: IngestConfig, count) -> Iterator[Document]:
    """Decode → normalise → filter one record (each drop counted by reason)."""
    count("stage_records")
    text = rec.data
    if isinstance(text, bytes):
        text = decode_utf8(text, cfg.on_invalid_utf8, rec.uri, count)
        if text is None:
            return
    text = normalise(text)
    count("stage_decoded")
    reason = reject_reason(text, cfg.filters)
    if reason:
        count(f"filter_{reason}")
        return
    count("stage_filtered")
    doc_id = hashlib.sha256(text.encode("utf-8")).hexdigest()
    yield Document(text=text, relpath=rec.relpath, source=rec.source, doc_id=doc_id)


def _keep_first_of_group(kv, count) -> Iterator[Document]:
    _doc_id, group = kv
    group = list(group)
    if len(group) > 1:
        count("exact_duplicates", len(group) - 1)
    count("stage_exact_dedup")
    # Deterministic choice among byte-identical texts: the first by (source, path).
    yield min(group, key=lambda d: (d.source, d.relpath))


class ExactDedup(beam.PTransform):
    def __init__(self, count):
        super().__init__()
        self.count = count

    def expand(self, docs):
        return (
            docs
            | "KeyByHash" >> beam.Map(lambda d: (d.doc_id, d))
            | "GroupByHash" >> beam.GroupByKey()
            | "KeepOne" >> beam.FlatMap(_keep_first_of_group, self.count)
        )


def _signature(d: Document, p: DedupConfig):
    sig = minhash.signature(d.text, p.num_perm, p.shingle_words, p.seed)
    if sig is not None:
        yield d.doc_id, sig


def _bands(kv, bands: int):
    doc_id, sig = kv
    for key in minhash.band_keys(sig, bands):
        yield key, (doc_id, sig)


def _verify(kv, p: DedupConfig):
    _key, members = kv
    yield from minhash.verify_bucket(members, p.threshold, p.max_bucket)


def _drop_filter(kv, count):
    _doc_id, grouped = kv
    docs, drops = list(grouped["docs"]), list(grouped["drop"])
    if drops:
        count("near_duplicates", len(docs))
        return
    for d in docs:
        count("stage_near_dedup")
        yield d


class NearDedup(beam.PTransform):
    """MinHash signatures → LSH buckets → verified pairs → connected groups (one worker:
    edges are few) → drop all but the smallest doc_id of each group."""

    def __init__(self, p: DedupConfig, count):
        super().__init__()
        self.p, self.count = p, count

    def expand(self, docs):
        p = self.p
        drops = (
            docs
            | "Signature" >> beam.FlatMap(_signature, p)
            | "Bands" >> beam.FlatMap(_bands, p.bands)
            | "GroupByBand" >> beam.GroupByKey()
            | "Verify" >> beam.FlatMap(_verify, p)
            | "DistinctPairs" >> beam.Distinct()
            | "AllPairs" >> beam.combiners.ToList()
            | "Groups" >> beam.FlatMap(minhash.duplicates_to_drop)
            | "KeyDrop" >> beam.Map(lambda i: (i, True))
        )
        keyed = docs | "KeyDocs" >> beam.Map(lambda d: (d.doc_id, d))
        return (
            {"docs": keyed, "drop": drops}
            | "Join" >> beam.CoGroupByKey()
            | "DropNearDups" >> beam.FlatMap(_drop_filter, self.count)
        )


def _keyed_record(d: Document, cfg: IngestConfig):
    return (split_for(d.doc_id, cfg.eval_percent), sh.shard_of(d.doc_id, cfg.num_shards)), (d.doc_id, d)


def _write_shard(kv, staging: str, num_shards: int, count) -> None:
    (split, shard), items = kv
    items = sorted(items, key=lambda x: x[0])
    path = os.path.join(staging, f"Split-{split}", sh.shard_name(shard, num_shards))
    sh.write_shard(path, (to_example(d) for _, d in items))
    count(f"documents_{split}", len(items))


def _doc_stats(d: Document, eval_percent: int) -> dict:
    split = split_for(d.doc_id, eval_percent)
    n = len(d.text.encode("utf-8"))
    return {
        "documents": {split: 1},
        "bytes": {split: n},
        "chars": {split: len(d.text)},
        "sources": {d.source: {split: 1}},
        "length_histogram": {split: {log2_bin(n): 1}},
    }


def build_ingest(p: beam.Pipeline, files: list[SourceFile], cfg: IngestConfig, staging: str) -> None:
    """Add the ingest transforms to ``p``; outputs land in ``staging``."""
    count = Counters(NAMESPACE)
    docs = (
        p
        | "Files" >> beam.Create(files)
        | "Distribute" >> beam.Reshuffle()
        | "Read" >> beam.FlatMap(read_file, cfg, count)
        | "Clean" >> beam.FlatMap(clean, cfg, count)
    )
    if cfg.dedup.exact:
        docs = docs | "ExactDedup" >> ExactDedup(count)
    if cfg.dedup.near:
        docs = docs | "NearDedup" >> NearDedup(cfg.dedup, count)
    _ = (
        docs
        | "KeyBySplitShard" >> beam.Map(_keyed_record, cfg)
        | "GroupByShard" >> beam.GroupByKey()
        | "WriteShards" >> beam.Map(_write_shard, staging, cfg.num_shards, count)
    )
    _ = (
        docs
        | "DocStats" >> beam.Map(_doc_stats, cfg.eval_percent)
        | "SumStats" >> beam.CombineGlobally(MergeNestedCounts())
        | "WriteStats" >> beam.Map(write_json, os.path.join(staging, _STATS_FILE))
    )


# Report: stage → counter (documents left after the stage).
_STAGES = (
    ("records read", "stage_records"),
    ("decoded", "stage_decoded"),
    ("passed filters", "stage_filtered"),
    ("after exact dedup", "stage_exact_dedup"),
    ("after near dedup", "stage_near_dedup"),
)
_SKIPS = (
    "skipped_too_large", "skipped_empty", "skipped_binary", "invalid_utf8_skipped",
    "invalid_utf8_replaced", "jsonl_malformed", "missing_text_field",
)


def make_report(counters: dict[str, int], stats: dict, files_listed: int, cfg: IngestConfig) -> dict:
    stages = [["files listed", files_listed], ["files read", counters.get("files_read", 0)]]
    for name, key in _STAGES:
        if key == "stage_exact_dedup" and not cfg.dedup.exact or key == "stage_near_dedup" and not cfg.dedup.near:
            continue
        stages.append([name, counters.get(key, 0)])
    documents = {s: stats.get("documents", {}).get(s, 0) for s in SPLITS}
    stages += [[f"written {s}", documents[s]] for s in SPLITS]
    return {
        "files_listed": files_listed,
        "stages": stages,
        "skipped": {k: counters.get(k, 0) for k in _SKIPS},
        "filtered": {k[len("filter_"):]: v for k, v in sorted(counters.items()) if k.startswith("filter_")},
        "exact_duplicates": counters.get("exact_duplicates", 0),
        "near_duplicates": counters.get("near_duplicates", 0),
        "documents": documents,
        "bytes": {s: stats.get("bytes", {}).get(s, 0) for s in SPLITS},
        "chars": {s: stats.get("chars", {}).get(s, 0) for s in SPLITS},
        "sources": stats.get("sources", {}),
        "length_histogram_log2_bytes": stats.get("length_histogram", {}),
        "counters": dict(sorted(counters.items())),
    }


def run_ingest(
    cfg: IngestConfig,
    output_uri: str,
    files: list[SourceFile] | None = None,
    pipeline: beam.Pipeline | None = None,
) -> dict:
    """Write ``output_uri/Split-{train,eval}/data_tfrecord-*.gz`` + ``ingest_report.{json,png}``.

    ``pipeline``: an unused Beam pipeline to run on (the component passes the one built from
    the run's beam_pipeline_args); default: DirectRunner, one in-process worker. Nothing is
    published unless the whole pipeline succeeded (see common/shards.py).
    """
    if files is None:
        files = list_corpus_files(cfg)
    with sh.staged(output_uri) as staging:
        p = pipeline if pipeline is not None else local_pipeline()
        build_ingest(p, files, cfg, staging)
        counters, stats = run_and_collect(p, NAMESPACE, os.path.join(staging, _STATS_FILE))
        report = make_report(counters, stats, len(files), cfg)
        log.info("ingest: %s", json.dumps(report["stages"]))
        for s in SPLITS:
            if report["documents"][s] == 0:
                total = sum(report["documents"].values())
                raise InputDataError(
                    f"ingest produced an empty {s!r} split ({total} documents kept of "
                    f"{counters.get('stage_records', 0)} read, eval_percent={cfg.eval_percent}); "
                    "add files or change ingest.eval_percent / ingest.filters"
                )
        report["shards"] = sh.publish_splits(staging, output_uri, SPLITS, cfg.num_shards)
    atomic_write_json(os.path.join(output_uri, REPORT_FILE), report)
    write_ingest_png(report, os.path.join(output_uri, REPORT_PNG))
    return report
