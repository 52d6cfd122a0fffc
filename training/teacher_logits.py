"""Offline teacher: run a teacher model once over a packed data artifact and store its top-k
next-token log-probs beside every row, so distillation does not hold the teacher in memory.

Output: a new packed folder with the source's layout (Split-train/, Split-eval/, the same shard
names, the same rows in the same order) whose examples carry every original feature plus
  teacher_topk_ids       T·K int64   the k most likely ids at each position, most likely first
  teacher_topk_logprobs  T·K float   their log-probs at temperature τ: log_softmax(logits / τ)
                                     over the full vocabulary, *then* top-k — so the mass they
                                     leave out is the teacher's true tail at τ
and a config.json = the source's config plus teacher_topk, teacher_temperature,
teacher_vocab_size, source_data, rows (per split) and rows_sha256 (per split: a hash of every
row's input_ids/segment_ids/positions/loss_mask in order, to tie the folder to its source).
training/data.py parses the two features as (T, K) when config.json declares teacher_topk.

Writing: shards are staged in <out_dir>.partial/ (each shard written to a hidden temp name and
renamed when complete), and the folder is renamed to out_dir at the end; a rerun after a crash
keeps the completed shards when the partial folder was made with the same teacher, data and
settings (a fingerprint of the teacher's weights is part of that check).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

from common.errors import ConfigError, InputDataError, UserError
from training.data import LOSS_MASK, ROW_FEATURES, TEACHER_IDS, TEACHER_LOGPROBS, PackedData

CONFIG = "config.json"
_RESUME = "resume.json"
_HASHED = (*ROW_FEATURES, LOSS_MASK)
_TEMP_TOL = 1e-6


@dataclass(frozen=True)
class TeacherTopkReport:
    root: str                                   # the folder written
    k: int
    temperature: float
    vocab_size: int
    rows: dict[str, int]                        # rows per split
    shards_written: int
    shards_resumed: int                         # completed shards kept from an interrupted run
    seconds: float
    already_done: bool = False                  # out_dir existed with the same settings
    splits: tuple[str, ...] = field(default=("train", "eval"))


# ------------------------------------------------------------------ row identity
def _row_key(feats) -> bytes:
    """The bytes a row is identified by: its packed features (teacher features excluded)."""
    parts = []
    for name in _HASHED:
        if name in feats:
            vals = np.asarray(feats[name].int64_list.value, np.int64)
            parts.append(name.encode() + b"=" + vals.tobytes())
        else:
            parts.append(name.encode() + b"-")
    return b"|".join(parts)


def _shards(root: str, split: str) -> list[str]:
    d = os.path.join(root, f"Split-{split}")
    if not tf.io.gfile.isdir(d):
        raise InputDataError(f"{root}: no Split-{split}/ folder")
    names = sorted(f for f in tf.io.gfile.listdir(d) if not f.startswith("."))
    if not names:
        raise InputDataError(f"{d}: no TFRecord shards")
    return names


def _records(path: str):
    for raw in tf.data.TFRecordDataset([path], compression_type="GZIP"):
        yield tf.train.Example.FromString(raw.numpy())


def _rows_digest(root: str, splits) -> tuple[dict[str, str], dict[str, int]]:
    sha, rows = {}, {}
    for split in splits:
        h, n = hashlib.sha256(), 0
        for name in _shards(root, split):
            for ex in _records(os.path.join(root, f"Split-{split}", name)):
                h.update(hashlib.sha256(_row_key(ex.features.feature)).digest())
                n += 1
        sha[split], rows[split] = h.hexdigest(), n
    return sha, rows


def _read_json(path: str) -> dict:
    try:
        obj = json.loads(tf.io.gfile.GFile(path).read())
    except (ValueError, tf.errors.NotFoundError) as e:
        raise InputDataError(f"{path}: unreadable config ({e})") from None
    if not isinstance(obj, dict):
        raise InputDataError(f"{path}: expected a JSON object")
    return obj


def _write_json(path: str, obj: dict) -> None:
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp")
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    tf.io.gfile.rename(tmp, path, overwrite=True)


def _fingerprint(model) -> str:
    """sha256 of the teacher's config and every weight: ties a partial folder to one teacher."""
    h = hashlib.sha256(json.dumps(model.cfg.to_hf_dict(), sort_keys=True, default=str).encode())
    for v in model.weights:
        h.update(v.path.encode())
        h.update(np.ascontiguousarray(v.numpy()).tobytes())
    return h.hexdigest()


# ------------------------------------------------------------------ precompute
def _topk_fn(teacher, seq_len: int, k: int, temperature: float):
    spec = tf.TensorSpec([None, seq_len], tf.int32)

    @tf.function(input_signature=[spec, spec, spec], autograph=False)
    def run(ids, pos, seg):                                                 # (B, T) each
        logits = teacher.forward(ids, position_ids=pos, segment_ids=seg, training=False)["logits"]
        lp = tf.nn.log_softmax(tf.cast(logits, tf.float32) / temperature, axis=-1)   # (B, T, V)
        vals, idx = tf.math.top_k(lp, k=k, sorted=True)                     # (B, T, K) each
        return idx, vals
    return run


def _write_shard(src: str, dst: str, run, batch_size: int, seq_len: int) -> int:
    """Teacher top-k for every row of src, written to dst (a temp name, renamed when complete)."""
    tmp = os.path.join(os.path.dirname(dst), f".{os.path.basename(dst)}.tmp")
    n = 0
    with tf.io.TFRecordWriter(tmp, options="GZIP") as w:
        batch: list = []

        def flush():
            feats = [ex.features.feature for ex in batch]
            cols = {}
            for name in ("input_ids", "positions", "segment_ids"):
                cols[name] = np.array([f[name].int64_list.value for f in feats], np.int32)   # (B, T)
            ids, lps = run(cols["input_ids"], cols["positions"], cols["segment_ids"])
            ids, lps = ids.numpy().astype(np.int64), lps.numpy()                           # (B, T, K)
            for ex, i_row, l_row in zip(batch, ids, lps, strict=True):
                f_ids, f_lps = ex.features.feature[TEACHER_IDS], ex.features.feature[TEACHER_LOGPROBS]
                f_ids.Clear()                       # a source that already had them: replace
                f_lps.Clear()
                f_ids.int64_list.value.extend(i_row.reshape(-1).tolist())
                f_lps.float_list.value.extend(l_row.reshape(-1).tolist())
                w.write(ex.SerializeToString())
            batch.clear()

        for i, ex in enumerate(_records(src)):
            got = len(ex.features.feature["input_ids"].int64_list.value)
            if got != seq_len:
                raise InputDataError(f"{src}: record {i} has {got} tokens, the data's seq_len is {seq_len}")
            for name in ROW_FEATURES:
                if name not in ex.features.feature:
                    raise InputDataError(f"{src}: record {i} has no feature {name!r}")
            batch.append(ex)
            n += 1
            if len(batch) == batch_size:
                flush()
        if batch:
            flush()
    tf.io.gfile.rename(tmp, dst, overwrite=True)
    return n


def precompute_teacher_topk(teacher_model, data: PackedData, out_dir: str, *, k: int, temperature: float,
                            batch_size: int, splits=("train", "eval")) -> TeacherTopkReport:
    """Run `teacher_model` (a DecoderLM) over every row of `data` once and write the offline
    teacher folder described in the module docstring to out_dir. Returns a report; a rerun
    with out_dir already written with the same settings does nothing."""
    t0 = time.perf_counter()
    vocab = int(teacher_model.cfg.vocab_size)
    if not 1 <= k <= vocab:
        raise ConfigError(f"teacher top-k: k must be in 1..vocab_size ({vocab}), got {k}")
    if not temperature > 0:
        raise ConfigError(f"teacher top-k: temperature must be > 0, got {temperature}")
    if batch_size < 1:
        raise ConfigError(f"teacher top-k: batch_size must be >= 1, got {batch_size}")
    splits = tuple(splits)
    src_cfg_path = os.path.join(data.root, CONFIG)
    src_cfg = _read_json(src_cfg_path) if tf.io.gfile.exists(src_cfg_path) else {}
    sha, rows = _rows_digest(data.root, splits)
    settings = {"teacher_topk": k, "teacher_temperature": float(temperature), "teacher_vocab_size": vocab,
                "source_data": data.root, "rows_sha256": sha, "rows": rows}
    out_cfg = {**src_cfg, "seq_len": data.seq_len, **settings}
    report = dict(root=out_dir, k=k, temperature=float(temperature), vocab_size=vocab, rows=rows,
                  splits=splits)

    if tf.io.gfile.exists(out_dir):
        have = _read_json(os.path.join(out_dir, CONFIG)) if tf.io.gfile.exists(
            os.path.join(out_dir, CONFIG)) else {}
        if all(have.get(key) == val for key, val in settings.items()):
            return TeacherTopkReport(**report, shards_written=0, shards_resumed=0,
                                     seconds=time.perf_counter() - t0, already_done=True)
        raise UserError(f"{out_dir}: already exists and was not written from {data.root} with "
                        f"k={k}, temperature={temperature}; remove it or choose another output")

    partial = out_dir.rstrip("/") + ".partial"
    marker = {**settings, "teacher": _fingerprint(teacher_model)}
    if tf.io.gfile.exists(partial):
        old = os.path.join(partial, _RESUME)
        if not (tf.io.gfile.exists(old) and _read_json(old) == marker):
            tf.io.gfile.rmtree(partial)               # another teacher or settings: start over
    tf.io.gfile.makedirs(partial)
    _write_json(os.path.join(partial, _RESUME), marker)

    run = _topk_fn(teacher_model, data.seq_len, k, float(temperature))
    written = resumed = 0
    for split in splits:
        tf.io.gfile.makedirs(os.path.join(partial, f"Split-{split}"))
        for name in _shards(data.root, split):
            src = os.path.join(data.root, f"Split-{split}", name)
            dst = os.path.join(partial, f"Split-{split}", name)
            if tf.io.gfile.exists(dst):               # renamed into place only when complete
                resumed += 1
                continue
            _write_shard(src, dst, run, batch_size, data.seq_len)
            written += 1
    _write_json(os.path.join(partial, CONFIG), out_cfg)
    tf.io.gfile.remove(os.path.join(partial, _RESUME))
    tf.io.gfile.rename(partial, out_dir)
    return TeacherTopkReport(**report, shards_written=written, shards_resumed=resumed,
                             seconds=time.perf_counter() - t0)


# ------------------------------------------------------------------ checks
def check_teacher_data(root: str, data_root: str | None = None, *, vocab_size: int, k: int,
                       temperature: float) -> dict:
    """Fail with an InputDataError naming the file / row / field when the offline teacher folder
    `root` does not fit the run: settings (k, vocabulary, temperature) differ from the run's,
    a row lacks a feature or has the wrong length, ids fall outside the vocabulary, log-probs
    are not finite log-probs, or the rows differ (count, order, content) from the rows the
    folder claims (its rows_sha256) — and, with data_root, from that packed folder's rows (the
    same shard names, seq_len and rows, compared row by row). Reads every row once.
    Returns the folder's config."""
    cfg_path = os.path.join(root, CONFIG)
    if not tf.io.gfile.exists(cfg_path):
        raise InputDataError(f"{cfg_path}: missing (not an offline teacher folder)")
    cfg = _read_json(cfg_path)
    for key in ("seq_len", "teacher_topk", "teacher_temperature", "teacher_vocab_size", "rows_sha256"):
        if key not in cfg:
            raise InputDataError(f"{cfg_path}: no {key!r} (not an offline teacher folder)")
    if cfg["teacher_topk"] != k:
        raise InputDataError(f"{cfg_path}: teacher_topk is {cfg['teacher_topk']} but the run expects k={k}")
    if cfg["teacher_vocab_size"] != vocab_size:
        raise InputDataError(f"{cfg_path}: teacher_vocab_size is {cfg['teacher_vocab_size']} but the "
                             f"student's vocab_size is {vocab_size}")
    if abs(float(cfg["teacher_temperature"]) - temperature) > _TEMP_TOL:
        raise InputDataError(f"{cfg_path}: teacher_temperature is {cfg['teacher_temperature']} but the "
                             f"run distills at temperature {temperature} (top-k log-probs cannot be "
                             f"re-tempered: recompute them)")
    seq_len = int(cfg["seq_len"])
    src_seq = None
    if data_root is not None:
        src_cfg = os.path.join(data_root, CONFIG)
        if tf.io.gfile.exists(src_cfg):
            src_seq = _read_json(src_cfg).get("seq_len")
        if src_seq is not None and int(src_seq) != seq_len:
            raise InputDataError(f"{cfg_path}: seq_len is {seq_len} but {src_cfg} has seq_len {src_seq}")
    for split, want_sha in sorted(cfg["rows_sha256"].items()):
        names = _shards(root, split)
        if data_root is not None:
            src_names = _shards(data_root, split)
            if names != src_names:
                raise InputDataError(f"{root}/Split-{split}: shards {names} but {data_root}/Split-{split} "
                                     f"has {src_names}")
        h = hashlib.sha256()
        for name in names:
            path = os.path.join(root, f"Split-{split}", name)
            src_iter = (_records(os.path.join(data_root, f"Split-{split}", name))
                        if data_root is not None else None)
            n = 0
            for i, ex in enumerate(_records(path)):
                feats = ex.features.feature
                _check_row(path, i, feats, seq_len, k, vocab_size)
                key = _row_key(feats)
                h.update(hashlib.sha256(key).digest())
                if src_iter is not None:
                    src = next(src_iter, None)
                    if src is None:
                        raise InputDataError(f"{path}: has more rows than {data_root} (row {i} has no "
                                             f"source row)")
                    if _row_key(src.features.feature) != key:
                        raise InputDataError(f"{path}: row {i} differs from the same row of {data_root} "
                                             f"({_first_diff(feats, src.features.feature)})")
                n = i + 1
            if src_iter is not None and next(src_iter, None) is not None:
                raise InputDataError(f"{path}: has {n} rows, fewer than its source shard in {data_root}")
        if h.hexdigest() != want_sha:
            raise InputDataError(f"{root}/Split-{split}: rows do not match the rows_sha256 in {cfg_path} "
                                 f"(rows changed, reordered, added or removed after precompute)")
    return cfg


def _first_diff(a, b) -> str:
    for name in _HASHED:
        va = list(a[name].int64_list.value) if name in a else None
        vb = list(b[name].int64_list.value) if name in b else None
        if va != vb:
            return f"field {name!r}"
    return "fields differ"


def _check_row(path: str, i: int, feats, seq_len: int, k: int, vocab_size: int) -> None:
    where = f"{path}: row {i}"
    for name in (*ROW_FEATURES, TEACHER_IDS, TEACHER_LOGPROBS):
        if name not in feats:
            raise InputDataError(f"{where} has no feature {name!r}")
    n = len(feats["input_ids"].int64_list.value)
    if n != seq_len:
        raise InputDataError(f"{where} field 'input_ids' has {n} tokens, config seq_len is {seq_len}")
    ids = np.asarray(feats[TEACHER_IDS].int64_list.value)
    lps = np.asarray(feats[TEACHER_LOGPROBS].float_list.value)
    for name, arr in ((TEACHER_IDS, ids), (TEACHER_LOGPROBS, lps)):
        if arr.size != seq_len * k:
            raise InputDataError(f"{where} field {name!r} has {arr.size} values, expected seq_len·k = "
                                 f"{seq_len}·{k} = {seq_len * k} (another k?)")
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        bad = int(ids[(ids < 0) | (ids >= vocab_size)][0])
        raise InputDataError(f"{where} field {TEACHER_IDS!r} has id {bad} outside vocab_size {vocab_size}")
    if not np.all(np.isfinite(lps)) or lps.max(initial=-np.inf) > 1e-4:
        raise InputDataError(f"{where} field {TEACHER_LOGPROBS!r} holds values that are not finite "
                             f"log-probabilities (<= 0)")


def check_vocab(teacher_cfg, student_cfg, teacher_tok=None, student_tok=None) -> None:
    """ConfigError unless teacher and student share the vocabulary: the same vocab_size and,
    when both tokenizers are given (a tokenizer.json path, a folder holding one, or a
    `tokenizers.Tokenizer`), the same token -> id map (added tokens included)."""
    tv, sv = int(teacher_cfg.vocab_size), int(student_cfg.vocab_size)
    if tv != sv:
        raise ConfigError(f"teacher vocab_size {tv} != student vocab_size {sv}: distillation compares "
                          f"distributions over the same token ids")
    if teacher_tok is None or student_tok is None:
        return
    (t_name, t_vocab), (s_name, s_vocab) = _vocab_map(teacher_tok), _vocab_map(student_tok)
    if t_vocab == s_vocab:
        return
    for tok in sorted(set(t_vocab) | set(s_vocab), key=lambda x: (t_vocab.get(x, -1), s_vocab.get(x, -1))):
        a, b = t_vocab.get(tok), s_vocab.get(tok)
        if a != b:
            raise ConfigError(f"teacher tokenizer {t_name} and student tokenizer {s_name} differ: token "
                              f"{tok!r} has id {a} vs {b} ({len(t_vocab)} vs {len(s_vocab)} tokens)")


def _vocab_map(tok) -> tuple[str, dict[str, int]]:
    from tokenizers import Tokenizer
    if isinstance(tok, Tokenizer):
        return "<in memory>", tok.get_vocab(with_added_tokens=True)
    path = str(tok)
    if tf.io.gfile.isdir(path):
        path = os.path.join(path, "tokenizer.json")
    if not tf.io.gfile.exists(path):
        raise ConfigError(f"{path}: tokenizer file not found")
    try:
        return path, Tokenizer.from_str(tf.io.gfile.GFile(path).read()).get_vocab(with_added_tokens=True)
    except Exception as e:  # tokenizers raises its own Exception type for malformed files
        raise ConfigError(f"{path}: not a readable tokenizer.json ({e})") from None
