"""Conversations → the SFT data artifact training/data.py reads (open_packed / train_stream).

Layout of ``output_dir`` (the pack phase's, plus a loss mask)::

  Split-train/data_tfrecord-00000-of-0000N.gz   gzipped TFRecords of tf.train.Example rows with
  Split-eval/…                                  int64 input_ids, segment_ids, positions, loss_mask
                                                (seq_len each; see sft_packing.py)
  config.json   {"seq_len", "template", "packing", "truncate", "seed", "pad_id", "stop_ids"}
  report.json   per split: conversations, encode errors, examples packed / truncated / dropped,
                tokens, assistant (target) tokens, rows, packing efficiency; malformed input lines

A local ``output_dir`` is written all at once: everything is staged in a hidden sibling folder
that is renamed into place, so a failed build leaves the previous output (or none). On object
stores (no folder rename) the splits are staged inside the output and renamed split by split
(components/common/shards.py), and config.json is written last.

Examples are shuffled with ``seed`` before packing (the order BFD breaks length ties in) and the
train rows after it: BFD emits rows longest-example-first, which a small shuffle buffer would
otherwise feed to training in that order.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence

import numpy as np

from common.errors import ConfigError, InputDataError
from components.sft.chat_template import ChatTemplate, EncodedExample, get_template
from components.sft.formats import Conversation, to_record
from components.sft.sft_packing import PackedRows, pack_examples

ROW_FEATURES = ("input_ids", "segment_ids", "positions", "loss_mask")
MAX_REASONS = 50  # malformed / unencodable reasons kept in report.json
_ENCODE_CHUNK = 512


def conversation_key(conv: Conversation) -> str:
    """Content hash of the messages (not the source: the same conversation from two files is one)."""
    blob = json.dumps(to_record(conv), ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def split_conversations(convs: Sequence[Conversation], eval_fraction: float,
                        seed: int = 0) -> tuple[list[Conversation], list[Conversation]]:
    """(train, eval) by a hash of (seed, content): a conversation's split never changes when others
    are added, and exact duplicates land together. With eval_fraction > 0 and at least two
    conversations, each split gets at least one (the one hashing furthest in its direction)."""
    if not 0.0 <= eval_fraction < 1.0:
        raise ConfigError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    u = np.array([int(hashlib.sha256(f"{seed}:{conversation_key(c)}".encode()).hexdigest()[:15], 16) / 16**15
                  for c in convs])  # (N,) uniform in [0, 1)
    is_eval = u < eval_fraction
    if eval_fraction > 0 and len(convs) >= 2:
        if not is_eval.any():
            is_eval[int(np.argmin(u))] = True
        if is_eval.all():
            is_eval[int(np.argmax(u))] = False
    return ([c for c, e in zip(convs, is_eval, strict=True) if not e],
            [c for c, e in zip(convs, is_eval, strict=True) if e])


def _encode_all(tpl: ChatTemplate, convs: Sequence[Conversation]) -> tuple[list[EncodedExample], list[str]]:
    """Encoded examples and "source: reason" for each conversation the template refused."""
    out: list[EncodedExample] = []
    errors: list[str] = []
    for i in range(0, len(convs), _ENCODE_CHUNK):
        chunk = convs[i:i + _ENCODE_CHUNK]
        try:
            out.extend(tpl.encode_batch(chunk))
        except InputDataError:  # find the culprits one by one; keep the rest
            for c in chunk:
                try:
                    out.append(tpl.encode(c))
                except InputDataError as e:
                    errors.append(str(e))
    return out, errors


def _example_bytes(row) -> bytes:
    from tensorflow.core.example import example_pb2, feature_pb2

    feats = {k: feature_pb2.Feature(int64_list=feature_pb2.Int64List(value=np.asarray(v, np.int64).tolist()))
             for k, v in zip(ROW_FEATURES, row, strict=True)}
    return example_pb2.Example(features=feature_pb2.Features(feature=feats)).SerializeToString(deterministic=True)


def _write_split(split_dir: str, packed: PackedRows, order: np.ndarray, rows_per_shard: int) -> list[str]:
    from components.common import shards as sh

    rows = list(packed.rows())
    n_shards = max(1, -(-len(rows) // rows_per_shard))
    names = []
    for s in range(n_shards):
        name = sh.shard_name(s, n_shards)
        part = order[s * rows_per_shard:(s + 1) * rows_per_shard]
        sh.write_shard(os.path.join(split_dir, name), (_example_bytes(rows[i]) for i in part))
        names.append(name)
    return names


def _pad_id(tpl: ChatTemplate, meta: dict | None) -> int:
    # Padding is masked by segment_ids == 0; it only has to be a valid id.
    if meta is not None:
        return int(meta["pad_id"])
    for t in ("<|endoftext|>", "<|pad|>"):
        if tpl.tokenizer.token_to_id(t) is not None:
            return int(tpl.tokenizer.token_to_id(t))
    return 0


def build_sft_dataset(conversations_train: Sequence[Conversation], conversations_eval: Sequence[Conversation],
                      tokenizer_dir: str, output_dir: str, *, template: str = "auto", seq_len: int,
                      packing: bool = True, truncate: bool = True, seed: int = 0,
                      malformed: Sequence[str] = (), rows_per_shard: int = 20_000) -> dict:
    """Render, encode, pack and write both splits (see the module docstring); returns the report.

    ``malformed`` are the reader's "FILE:LINE: reason" strings, recorded in the report. A split
    that ends with no rows (no conversations, or all refused / dropped) is an InputDataError."""
    if seq_len < 2:
        raise ConfigError(f"seq_len must be at least 2, got {seq_len}")
    import tensorflow as tf

    from components.tokenizer.tokenizer import META_FILE, load_meta

    tpl = get_template(template, tokenizer_dir)
    meta = load_meta(tokenizer_dir) if tf.io.gfile.exists(os.path.join(tokenizer_dir, META_FILE)) else None
    pad_id = _pad_id(tpl, meta)
    rng = np.random.default_rng(seed)
    report: dict = {"template": tpl.name, "seq_len": seq_len, "packing": packing, "truncate": truncate,
                    "malformed": {"count": len(malformed), "first": list(malformed[:MAX_REASONS])}}
    packed_splits: dict[str, tuple[PackedRows, np.ndarray]] = {}
    for split, convs in (("train", conversations_train), ("eval", conversations_eval)):
        encoded, errors = _encode_all(tpl, list(convs))
        order = rng.permutation(len(encoded))
        packed = pack_examples([(encoded[i].ids, encoded[i].loss_mask) for i in order], seq_len,
                               pad_id=pad_id, packing=packing, truncate=truncate)
        st = packed.stats
        stats = st.to_dict()
        stats["assistant_tokens"] = stats.pop("target_tokens")
        report[split] = {"conversations": len(convs), "encode_errors": len(errors),
                         "encode_error_reasons": errors[:MAX_REASONS], **stats}
        if st.rows == 0:
            why = (f"; first refusal: {errors[0]}" if errors else
                   f"; {st.dropped_too_long} longer than seq_len {seq_len}, {st.dropped_no_target} without targets")
            raise InputDataError(f"SFT {split} split has no rows: {len(convs)} conversations, none usable{why}")
        row_order = rng.permutation(st.rows) if split == "train" else np.arange(st.rows)
        packed_splits[split] = (packed, row_order)
    config = {"seq_len": seq_len, "template": tpl.name, "packing": packing, "truncate": truncate, "seed": seed,
              "pad_id": pad_id, "stop_ids": tpl.stop_ids}

    from components.common.shards import write_split_folder

    def write(staging):
        for split, (packed, row_order) in packed_splits.items():
            report[split]["shards"] = _write_split(os.path.join(staging, f"Split-{split}"), packed, row_order,
                                                   rows_per_shard)
    write_split_folder(output_dir, packed_splits, write, report, config)
    return report
