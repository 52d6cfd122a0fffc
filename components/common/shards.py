"""Deterministic sharded TFRecord output with all-or-nothing publication.

Beam pipelines here write every split into ``<output>/.staging-<id>/Split-<name>/`` with
``write_shard`` (one call per shard, records sorted by a key, so the bytes of a shard do not
depend on worker count or bundle order), and the driver calls ``publish`` only after the
pipeline succeeded: each staged split is renamed to ``<output>/Split-<name>``. A crash or a
failed run leaves at most a hidden staging folder, never a half-written published split;
``discard`` removes it.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterable

import tensorflow as tf

SHARD_PREFIX = "data_tfrecord"
STAGING_PREFIX = ".staging-"


def is_staging(name: str) -> bool:
    """A staging folder's name (a run killed mid-write leaves one; the next local run removes
    it once it can prove its execution is over: pipelines/local.py)."""
    return name.startswith(STAGING_PREFIX)


def shard_name(index: int, num_shards: int) -> str:
    # The ExampleGen naming; the .gz suffix tells Beam/TFDV readers the shards are GZIP.
    return f"{SHARD_PREFIX}-{index:05d}-of-{num_shards:05d}.gz"


def shard_of(doc_id: str, num_shards: int) -> int:
    """Shard of a document by its hex content hash (hex digits 8..16: independent of the
    split, which uses digits 0..8)."""
    return int(doc_id[8:16], 16) % num_shards


@contextlib.contextmanager
def staged(output_uri: str):
    """A hidden staging folder under ``output_uri`` that is always removed on exit; what the
    block publishes (``publish_splits``) is renamed out of it first."""
    tf.io.gfile.makedirs(output_uri)
    staging = new_staging(output_uri)
    try:
        yield staging
    finally:
        discard(staging)


def publish_splits(staging: str, output_uri: str, splits: Iterable[str], num_shards: int) -> dict[str, list[str]]:
    """Give every split all ``num_shards`` files, then rename the splits into place."""
    for s in splits:
        fill_empty_shards(os.path.join(staging, f"Split-{s}"), num_shards)
    return publish(staging, output_uri, splits)


def new_staging(output_uri: str) -> str:
    path = os.path.join(output_uri, f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}")
    tf.io.gfile.makedirs(path)
    return path


def write_shard(path: str, records: Iterable[bytes]) -> int:
    """Write GZIP TFRecords to ``path`` via a temp name + rename (a retried bundle overwrites
    cleanly); returns the record count."""
    tf.io.gfile.makedirs(os.path.dirname(path))
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    n = 0
    with tf.io.TFRecordWriter(tmp, "GZIP") as w:
        for r in records:
            w.write(r)
            n += 1
    tf.io.gfile.rename(tmp, path, overwrite=True)
    return n


def fill_empty_shards(split_dir: str, num_shards: int) -> None:
    """Shards no record went to still exist (empty), so a split always has num_shards files."""
    tf.io.gfile.makedirs(split_dir)
    for i in range(num_shards):
        p = os.path.join(split_dir, shard_name(i, num_shards))
        if not tf.io.gfile.exists(p):
            write_shard(p, [])


def publish(staging: str, output_uri: str, splits: Iterable[str]) -> dict[str, list[str]]:
    """Rename each staged split into place; returns the shard names per split."""
    shards = {}
    for s in splits:
        final = os.path.join(output_uri, f"Split-{s}")
        if tf.io.gfile.exists(final):
            tf.io.gfile.rmtree(final)
        tf.io.gfile.rename(os.path.join(staging, f"Split-{s}"), final)
        shards[s] = sorted(tf.io.gfile.listdir(final))
    discard(staging)
    return shards


def discard(staging: str) -> None:
    if tf.io.gfile.exists(staging):
        tf.io.gfile.rmtree(staging)


def read_records(pattern: str) -> list[bytes]:
    """Every record of the GZIP TFRecord files matching ``pattern``, in file order (tests,
    small reports)."""
    out = []
    for path in sorted(tf.io.gfile.glob(pattern)):
        out.extend(r.numpy() for r in tf.data.TFRecordDataset(path, compression_type="GZIP"))
    return out


def write_split_folder(output_dir: str, splits: Iterable[str], write, report: dict, config: dict) -> None:
    """Write a rows folder (Split-*/ shards + report.json + config.json) so a reader never sees a
    half-written one: write(staging) fills Split-<split>/ under a staging folder; then, locally,
    the staged folder is swapped into place whole (the previous output goes only once the new one
    is there); on an object store the splits are renamed into place and config.json, which marks
    the folder complete, is written last."""
    import shutil

    from common.fileio import atomic_write_json, make_temp_dir

    remote = "://" in output_dir
    if remote:
        staging = new_staging(output_dir)
    else:
        output_dir = os.path.abspath(output_dir)
        os.makedirs(os.path.dirname(output_dir), exist_ok=True)
        staging = make_temp_dir(os.path.dirname(output_dir), f".{os.path.basename(output_dir)}.staging-")
    try:
        write(staging)
        if remote:
            publish(staging, output_dir, list(splits))
            atomic_write_json(os.path.join(output_dir, "report.json"), report)
            atomic_write_json(os.path.join(output_dir, "config.json"), config)   # last: marks it complete
        else:
            atomic_write_json(os.path.join(staging, "report.json"), report)
            atomic_write_json(os.path.join(staging, "config.json"), config)
            old = None
            if os.path.exists(output_dir):
                old = make_temp_dir(os.path.dirname(output_dir), f".{os.path.basename(output_dir)}.old-")
                os.rename(output_dir, os.path.join(old, "out"))
            os.rename(staging, output_dir)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
    finally:
        if remote:
            discard(staging)
        elif os.path.exists(staging):
            shutil.rmtree(staging, ignore_errors=True)
