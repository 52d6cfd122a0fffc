"""Packed-row input pipelines with a resumable, deterministic order.

The train stream is a pure function of (files, seed, step): epoch e is the rows in file order
shuffled with seed (seed, e); the stream is epoch 0, 1, 2, … back to back, and step s consumes
rows [s·R, (s+1)·R) of it (R = rows per optimizer step, all replicas and micro-steps). Resuming
at step s therefore rebuilds the exact same batches without storing any iterator state: the data
position is the step counter in the checkpoint.

Every worker reads the same global stream and keeps its replicas' slice of each global batch,
so a run on 2 workers sees exactly the rows a 1-worker run with the same global batch sees (the
multi-worker equivalence test relies on it). Parsing is cheap next to a train step; a cluster
run with very large batches could shard files per worker instead.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import tensorflow as tf

from common.errors import InputDataError
from training.agent_losses import FEATURE_FILL

ROW_FEATURES = ("input_ids", "segment_ids", "positions")
# Optional per-token loss weights (0/1): rows without it train on every token. SFT rows (assistant
# tokens only) and synthetic task rows (answer only) carry it.
LOSS_MASK = "loss_mask"
# Optional offline-teacher features (training/teacher_logits.py): per token the teacher's top-k
# ids and their log-probs, stored flat (T·K) and parsed to (T, K). A folder carries them when its
# config.json declares "teacher_topk": k.
TEACHER_IDS = "teacher_topk_ids"
TEACHER_LOGPROBS = "teacher_topk_logprobs"
# Optional extra per-token int64 features (agent rows: span and process-supervision masks,
# training/agent_losses.py). A folder carries them when its config.json lists them under
# "features"; rows missing one get its FEATURE_FILL value (0 for names it does not know).
BASE_FEATURES = (*ROW_FEATURES, LOSS_MASK)


@dataclass(frozen=True)
class PackedData:
    """A packed `Examples` artifact: Split-train / Split-eval folders of gzipped TFRecords."""

    root: str
    seq_len: int
    train_files: tuple[str, ...]
    eval_files: tuple[str, ...]
    teacher_topk: int = 0          # k of the teacher_topk_* features the rows carry; 0 = none
    extra_features: tuple[str, ...] = ()   # extra (T,) int64 features the rows carry (config "features")

    def num_rows(self, split: str = "train") -> int:
        files = self.train_files if split == "train" else self.eval_files
        return int(sum(1 for _ in tf.data.TFRecordDataset(list(files), compression_type="GZIP")))


def _split_files(root: str, split: str) -> tuple[str, ...]:
    d = os.path.join(root, f"Split-{split}")
    if not tf.io.gfile.isdir(d):
        raise InputDataError(f"{root}: not a packed data artifact (no Split-{split}/ folder)")
    files = tuple(sorted(os.path.join(d, f) for f in tf.io.gfile.listdir(d) if not f.startswith(".")))
    if not files:
        raise InputDataError(f"{d}: no TFRecord shards")
    return files


def open_packed(root: str) -> PackedData:
    """Open a pack artifact; its seq_len comes from the config.json the pack phase wrote."""
    if not tf.io.gfile.isdir(root):
        raise InputDataError(f"{root}: data directory not found")
    cfg_path = os.path.join(root, "config.json")
    seq_len = None
    if tf.io.gfile.exists(cfg_path):
        try:
            seq_len = int(json.loads(tf.io.gfile.GFile(cfg_path).read())["seq_len"])
        except (ValueError, KeyError, TypeError) as e:
            raise InputDataError(f"{cfg_path}: unreadable pack config ({e})") from None
    train, ev = _split_files(root, "train"), _split_files(root, "eval")
    if seq_len is None:
        seq_len = _peek_seq_len(train[0])
    return PackedData(root, seq_len, train, ev, declared_teacher_topk(root), declared_features(root))


def _read_config(cfg_path: str) -> dict:
    try:
        cfg = json.loads(tf.io.gfile.GFile(cfg_path).read())
    except ValueError as e:
        raise InputDataError(f"{cfg_path}: unreadable pack config ({e})") from None
    if not isinstance(cfg, dict):
        raise InputDataError(f"{cfg_path}: unreadable pack config (not a JSON object)")
    return cfg


def declared_features(root: str) -> tuple[str, ...]:
    """The extra int64 features (beyond input_ids, segment_ids, positions, loss_mask) a packed
    folder's config.json lists under "features", in listed order; () when it lists none."""
    cfg_path = os.path.join(root, "config.json")
    if not tf.io.gfile.exists(cfg_path):
        return ()
    feats = _read_config(cfg_path).get("features", [])
    if not isinstance(feats, list) or not all(isinstance(f, str) and f for f in feats):
        raise InputDataError(f"{cfg_path}: features must be a list of feature names, got {feats!r}")
    reserved = {TEACHER_IDS, TEACHER_LOGPROBS} & set(feats)
    if reserved:
        raise InputDataError(f"{cfg_path}: features lists {sorted(reserved)}; teacher features are "
                             "declared with teacher_topk, not features")
    return tuple(dict.fromkeys(f for f in feats if f not in BASE_FEATURES))


def declared_teacher_topk(root: str) -> int:
    """The k of the teacher top-k features a packed folder's config.json declares; 0 when the
    folder has no config or the config declares none."""
    cfg_path = os.path.join(root, "config.json")
    if not tf.io.gfile.exists(cfg_path):
        return 0
    try:
        k = json.loads(tf.io.gfile.GFile(cfg_path).read()).get("teacher_topk", 0)
    except (ValueError, AttributeError) as e:
        raise InputDataError(f"{cfg_path}: unreadable pack config ({e})") from None
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise InputDataError(f"{cfg_path}: teacher_topk must be a non-negative integer, got {k!r}")
    return k


def _files_features(files, extra_features) -> tuple[str, ...]:
    """extra_features as given, or (None) as the shards' folder's config.json lists them."""
    if extra_features is not None:
        return tuple(extra_features)
    return declared_features(os.path.dirname(os.path.dirname(files[0])))


def _files_topk(files, teacher_topk: int | None) -> int:
    """teacher_topk as given, or (None) as the config.json of the folder holding the shards
    (root/Split-x/shard) declares: the engine passes only the shard list."""
    if teacher_topk is not None:
        return teacher_topk
    return declared_teacher_topk(os.path.dirname(os.path.dirname(files[0])))


def _peek_seq_len(path: str) -> int:
    for raw in tf.data.TFRecordDataset([path], compression_type="GZIP").take(1):
        ex = tf.train.Example.FromString(raw.numpy())
        return len(ex.features.feature["input_ids"].int64_list.value)
    raise InputDataError(f"{path}: empty shard")


def check_rows(data: PackedData, seq_len: int, vocab_size: int, max_rows: int = 64) -> None:
    """Fail before any compute when the rows do not fit the model: wrong length or token ids
    outside the vocabulary (a data artifact from another tokenizer)."""
    ds = tf.data.TFRecordDataset(list(data.train_files[:1]), compression_type="GZIP").take(max_rows)
    for i, raw in enumerate(ds):
        ex = tf.train.Example.FromString(raw.numpy())
        feats = ex.features.feature
        for name in ROW_FEATURES:
            if name not in feats:
                raise InputDataError(f"{data.train_files[0]}: record {i} has no feature {name!r}")
        ids = feats["input_ids"].int64_list.value
        if len(ids) != seq_len:
            raise InputDataError(f"{data.train_files[0]}: rows have {len(ids)} tokens but the run "
                                 f"expects seq_len {seq_len} (data from another pack config?)")
        # Name the offending id itself: for a negative id the row's max is a valid one.
        bad = next((t for t in ids if t < 0 or t >= vocab_size), None)
        if bad is not None:
            raise InputDataError(f"{data.train_files[0]}: record {i} has token id {bad} outside the "
                                 f"model's vocab_size {vocab_size} (data from another tokenizer?)")


def _parse(seq_len: int, topk: int = 0, extra: tuple[str, ...] = ()):
    spec = {k: tf.io.FixedLenFeature([seq_len], tf.int64) for k in ROW_FEATURES}
    spec[LOSS_MASK] = tf.io.FixedLenFeature([seq_len], tf.int64, default_value=[1] * seq_len)
    for k in extra:
        spec[k] = tf.io.FixedLenFeature([seq_len], tf.int64, default_value=[FEATURE_FILL.get(k, 0)] * seq_len)
    if topk:
        spec[TEACHER_IDS] = tf.io.FixedLenFeature([seq_len * topk], tf.int64)
        spec[TEACHER_LOGPROBS] = tf.io.FixedLenFeature([seq_len * topk], tf.float32)

    def parse(serialized):                                                  # (N,) strings
        ex = tf.io.parse_example(serialized, spec)
        out = {}
        for k, v in ex.items():
            if k in (TEACHER_IDS, TEACHER_LOGPROBS):
                v = tf.reshape(v, [-1, seq_len, topk])                      # (N, T, K)
            out[k] = v if v.dtype == tf.float32 else tf.cast(v, tf.int32)   # (N, T) / (N, T, K)
        return out
    return parse


def _options() -> tf.data.Options:
    opts = tf.data.Options()
    opts.deterministic = True
    opts.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return opts


def train_stream(files, seq_len: int, *, micro_batch: int, accum: int, num_replicas: int,
                 seed: int, shuffle_buffer: int, num_rows: int, start_step: int = 0,
                 replica_range: tuple[int, int] | None = None,
                 teacher_topk: int | None = None,
                 extra_features: tuple[str, ...] | None = None) -> tf.data.Dataset:
    """Elements {feature: (accum, micro_batch, T)} — one optimizer step of one replica.

    Global step batch: accum × (micro_batch · num_replicas) rows. `replica_range` (first, end)
    keeps those replicas' slices, emitted one element per replica in order (what
    distribute_datasets_from_function hands to the local replicas round-robin); None = all
    replicas (num_replicas must then be 1).
    Offline-teacher rows add teacher_topk_ids (int32) / teacher_topk_logprobs (float32) as
    (accum, micro_batch, T, K); teacher_topk None = as the folder's config.json declares.
    Extra int64 features (agent masks) come as (accum, micro_batch, T) int32; extra_features
    None = the ones the folder's config.json lists under "features".
    """
    topk = _files_topk(files, teacher_topk)
    extra = _files_features(files, extra_features)
    rows_per_step = accum * micro_batch * num_replicas
    if num_rows < 1:
        raise InputDataError(f"{files[0]}: the train split has no rows")
    consumed = start_step * rows_per_step
    first_epoch, offset = divmod(consumed, num_rows)
    files = list(files)

    window = max(1, min(shuffle_buffer, num_rows))
    files_t = tf.constant(files)

    def epoch(e):
        # Stateless ops keyed by (seed, epoch): any process rebuilds epoch e's exact order.
        key = tf.stack([tf.cast(seed, tf.int64), e])
        order = tf.random.experimental.stateless_shuffle(files_t, seed=key)
        ds = tf.data.TFRecordDataset(order, compression_type="GZIP")

        def shuffle_window(i, recs):                                        # recs (W,) strings
            u = tf.random.stateless_uniform(tf.shape(recs), seed=key + i * 7919)
            return tf.gather(recs, tf.argsort(u))
        return ds.batch(window).enumerate().map(shuffle_window).unbatch()

    ds = tf.data.Dataset.range(first_epoch, 1 << 62).flat_map(epoch).skip(offset)
    ds = ds.batch(rows_per_step, drop_remainder=True).map(_parse(seq_len, topk, extra))
    first, end = replica_range if replica_range is not None else (0, num_replicas)

    def local(batch):
        out = {}
        for k, v in batch.items():                                          # (R_step, T[, K])
            rest = v.shape[1:]                                              # (T,) or (T, K)
            v = tf.reshape(v, [accum, num_replicas, micro_batch, *rest])[:, first:end]
            perm = [1, 0, 2, *range(3, 3 + len(rest))]
            out[k] = tf.transpose(v, perm)                                  # (R_local, accum, M, T[, K])
        return out
    ds = ds.map(local).unbatch()
    return ds.with_options(_options()).prefetch(2)


def eval_stream(files, seq_len: int, batch_size: int, max_batches: int,
                teacher_topk: int | None = None,
                extra_features: tuple[str, ...] | None = None) -> tf.data.Dataset:
    """Held-out rows in file order: {feature: (B, T)} (teacher features (B, T, K), extra
    features as train_stream), at most max_batches batches."""
    topk = _files_topk(files, teacher_topk)
    extra = _files_features(files, extra_features)
    ds = tf.data.TFRecordDataset(list(files), compression_type="GZIP")
    ds = ds.batch(batch_size).map(_parse(seq_len, topk, extra)).take(max_batches)
    return ds.with_options(_options()).prefetch(2)
