"""Offline teacher top-k: the folder written (layout, rows, values against numpy top-k of the
teacher's logits), resume after a crash, the input checks, and the vocabulary check."""
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from common.errors import ConfigError, InputDataError, UserError
from model.decoder import build_model
from training import teacher_logits as tl
from training.data import TEACHER_IDS, TEACHER_LOGPROBS, eval_stream, open_packed
from training.testdata import write_packed
from training.testing_worker import tiny_model_config

SEQ, K, TEMP = 16, 5, 2.0
TEACHER_CFG = tiny_model_config(1)
V = TEACHER_CFG.vocab_size


@pytest.fixture(scope="module")
def teacher():
    return build_model(TEACHER_CFG, seed=11)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return open_packed(write_packed(str(tmp_path_factory.mktemp("src")), SEQ, V, train_rows=7,
                                    eval_rows=3, shards=2))


@pytest.fixture(scope="module")
def written(teacher, source, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("t") / "teacher")
    report = tl.precompute_teacher_topk(teacher, source, out, k=K, temperature=TEMP, batch_size=3)
    return out, report


def _rows(path):
    return [tf.train.Example.FromString(r.numpy()).features.feature
            for r in tf.data.TFRecordDataset([path], compression_type="GZIP")]


def _np_topk(teacher, feats):
    """Reference: the teacher's logits for one row, log-softmax at TEMP in float64, top-K."""
    col = {n: np.array([feats[n].int64_list.value], np.int32) for n in ("input_ids", "segment_ids", "positions")}
    logits = teacher(col["input_ids"], position_ids=col["positions"], segment_ids=col["segment_ids"]).numpy()
    z = logits[0].astype(np.float64) / TEMP                                   # (T, V)
    lp = z - z.max(-1, keepdims=True)
    lp = lp - np.log(np.exp(lp).sum(-1, keepdims=True))
    ids = np.argsort(-lp, axis=-1, kind="stable")[:, :K]
    return ids, np.take_along_axis(lp, ids, -1)


def test_layout_rows_and_values(teacher, source, written):
    out, report = written
    assert report.rows == {"train": 7, "eval": 3} and report.shards_written == 4
    assert report.shards_resumed == 0 and report.k == K and report.vocab_size == V
    assert not os.path.exists(out + ".partial")
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert cfg["seq_len"] == SEQ and cfg["teacher_topk"] == K and cfg["teacher_temperature"] == TEMP
    assert cfg["teacher_vocab_size"] == V and cfg["source_data"] == source.root
    assert set(cfg["rows_sha256"]) == {"train", "eval"} and cfg["rows"] == {"train": 7, "eval": 3}
    for split in ("train", "eval"):
        src_names = sorted(os.listdir(os.path.join(source.root, f"Split-{split}")))
        assert sorted(os.listdir(os.path.join(out, f"Split-{split}"))) == src_names
        for name in src_names:
            src_rows = _rows(os.path.join(source.root, f"Split-{split}", name))
            out_rows = _rows(os.path.join(out, f"Split-{split}", name))
            assert len(src_rows) == len(out_rows)
            for s, o in zip(src_rows, out_rows, strict=True):
                for f in ("input_ids", "segment_ids", "positions"):
                    assert list(s[f].int64_list.value) == list(o[f].int64_list.value)
                ids = np.array(o[TEACHER_IDS].int64_list.value).reshape(SEQ, K)
                lps = np.array(o[TEACHER_LOGPROBS].float_list.value).reshape(SEQ, K)
                want_ids, want_lp = _np_topk(teacher, o)
                np.testing.assert_array_equal(ids, want_ids)
                np.testing.assert_allclose(lps, want_lp, atol=2e-5)
    assert open_packed(out).teacher_topk == K


def test_streams_parse_the_teacher_features(written):
    out, _ = written
    data = open_packed(out)
    b = next(iter(eval_stream(data.eval_files, data.seq_len, batch_size=2, max_batches=1)))
    assert b[TEACHER_IDS].shape == (2, SEQ, K) and b[TEACHER_IDS].dtype == tf.int32
    assert b[TEACHER_LOGPROBS].shape == (2, SEQ, K) and b[TEACHER_LOGPROBS].dtype == tf.float32
    first = _rows(data.eval_files[0])[0]
    np.testing.assert_allclose(b[TEACHER_LOGPROBS].numpy()[0].reshape(-1),
                               first[TEACHER_LOGPROBS].float_list.value)


def test_rerun_is_a_no_op_and_a_different_setting_refuses(teacher, source, written):
    out, _ = written
    again = tl.precompute_teacher_topk(teacher, source, out, k=K, temperature=TEMP, batch_size=3)
    assert again.already_done and again.shards_written == 0
    with pytest.raises(UserError, match="already exists"):
        tl.precompute_teacher_topk(teacher, source, out, k=K + 1, temperature=TEMP, batch_size=3)


def test_resume_after_a_crash_keeps_finished_shards(teacher, source, written, tmp_path, monkeypatch):
    out = str(tmp_path / "resumed")
    real = tl._write_shard
    calls = []

    def crash_on_second(*a, **kw):              # fault injection: the process dies mid-run
        calls.append(a[0])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **kw)
    monkeypatch.setattr(tl, "_write_shard", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        tl.precompute_teacher_topk(teacher, source, out, k=K, temperature=TEMP, batch_size=2)
    assert not os.path.exists(out) and os.path.isdir(out + ".partial")
    monkeypatch.setattr(tl, "_write_shard", real)
    rep = tl.precompute_teacher_topk(teacher, source, out, k=K, temperature=TEMP, batch_size=2)
    assert rep.shards_resumed == 1 and rep.shards_written == 3
    ref = written[0]
    for split in ("train", "eval"):
        for name in os.listdir(os.path.join(ref, f"Split-{split}")):
            a = _rows(os.path.join(ref, f"Split-{split}", name))
            b = _rows(os.path.join(out, f"Split-{split}", name))
            assert [x[TEACHER_IDS].int64_list.value for x in a] == [x[TEACHER_IDS].int64_list.value for x in b]
    tl.check_teacher_data(out, source.root, vocab_size=V, k=K, temperature=TEMP)


def test_a_partial_folder_from_another_teacher_is_not_reused(teacher, source, tmp_path, monkeypatch):
    out = str(tmp_path / "other")
    real = tl._write_shard
    n = []

    def crash(*a, **kw):
        n.append(1)
        if len(n) == 2:
            raise KeyboardInterrupt
        return real(*a, **kw)
    monkeypatch.setattr(tl, "_write_shard", crash)
    with pytest.raises(KeyboardInterrupt):
        tl.precompute_teacher_topk(build_model(TEACHER_CFG, seed=12), source, out, k=K, temperature=TEMP,
                                   batch_size=4)
    monkeypatch.setattr(tl, "_write_shard", real)
    rep = tl.precompute_teacher_topk(teacher, source, out, k=K, temperature=TEMP, batch_size=4)
    assert rep.shards_resumed == 0 and rep.shards_written == 4


def _one_line(e, *needles):
    msg = str(e.value)
    assert "\n" not in msg
    for n in needles:
        assert n in msg, msg


def test_check_teacher_data_accepts_and_rejects_settings(source, written):
    out, _ = written
    cfg = tl.check_teacher_data(out, source.root, vocab_size=V, k=K, temperature=TEMP)
    assert cfg["teacher_topk"] == K
    tl.check_teacher_data(out, vocab_size=V, k=K, temperature=TEMP)
    with pytest.raises(InputDataError) as e:
        tl.check_teacher_data(out, vocab_size=V, k=K + 1, temperature=TEMP)
    _one_line(e, "config.json", "teacher_topk is 5", "k=6")
    with pytest.raises(InputDataError) as e:
        tl.check_teacher_data(out, vocab_size=V + 1, k=K, temperature=TEMP)
    _one_line(e, "teacher_vocab_size", str(V + 1))
    with pytest.raises(InputDataError) as e:
        tl.check_teacher_data(out, vocab_size=V, k=K, temperature=1.0)
    _one_line(e, "teacher_temperature")


def _rewrite(path, rows):
    with tf.io.TFRecordWriter(path, options="GZIP") as w:
        for f in rows:
            w.write(tf.train.Example(features=tf.train.Features(feature=f)).SerializeToString())


def test_check_teacher_data_finds_rows_that_differ(source, written, tmp_path):
    out, _ = written
    # The source data changed after precompute: one token of row 1 of the first train shard.
    changed = tmp_path / "changed"
    shutil.copytree(source.root, changed)
    shard = sorted(os.listdir(changed / "Split-train"))[0]
    rows = _rows(str(changed / "Split-train" / shard))
    rows[1]["input_ids"].int64_list.value[3] += 1
    _rewrite(str(changed / "Split-train" / shard), rows)
    with pytest.raises(InputDataError) as e:
        tl.check_teacher_data(out, str(changed), vocab_size=V, k=K, temperature=TEMP)
    _one_line(e, shard, "row 1", "input_ids")
    # One row fewer in the source.
    _rewrite(str(changed / "Split-train" / shard), _rows(os.path.join(source.root, "Split-train", shard))[:-1])
    with pytest.raises(InputDataError) as e:
        tl.check_teacher_data(out, str(changed), vocab_size=V, k=K, temperature=TEMP)
    _one_line(e, shard, "more rows")
    # A source of another seq_len.
    other = tmp_path / "seq"
    shutil.copytree(source.root, other)
    (other / "config.json").write_text(json.dumps({"seq_len": SEQ * 2}))
    with pytest.raises(InputDataError) as e:
        tl.check_teacher_data(out, str(other), vocab_size=V, k=K, temperature=TEMP)
    _one_line(e, "seq_len is 16", "seq_len 32")


def test_check_teacher_data_finds_bad_rows_in_the_teacher_folder(source, written, tmp_path):
    out, _ = written
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    shard = sorted(os.listdir(bad / "Split-eval"))[0]               # 2 of the 3 eval rows
    path = str(bad / "Split-eval" / shard)
    rows = _rows(path)
    rows[0][TEACHER_IDS].int64_list.value[7] = V + 3
    _rewrite(path, rows)
    with pytest.raises(InputDataError) as e:
        tl.check_teacher_data(str(bad), vocab_size=V, k=K, temperature=TEMP)
    _one_line(e, shard, "row 0", TEACHER_IDS, str(V + 3))
    rows = _rows(os.path.join(out, "Split-eval", shard))
    del rows[-1][TEACHER_LOGPROBS].float_list.value[-1]
    _rewrite(path, rows)
    with pytest.raises(InputDataError) as e:
        tl.check_teacher_data(str(bad), vocab_size=V, k=K, temperature=TEMP)
    _one_line(e, shard, f"row {len(rows) - 1}", TEACHER_LOGPROBS, "another k")
    # Rows reordered: each row is fine, but the hash of the split no longer matches.
    rows = _rows(os.path.join(out, "Split-eval", shard))
    assert len(rows) == 2
    _rewrite(path, rows[::-1])
    with pytest.raises(InputDataError) as e:
        tl.check_teacher_data(str(bad), vocab_size=V, k=K, temperature=TEMP)
    _one_line(e, "Split-eval", "rows_sha256")


def _tokenizer_file(path, vocab):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = Whitespace()
    os.makedirs(path, exist_ok=True)
    tok.save(os.path.join(path, "tokenizer.json"))
    return path


def test_check_vocab(tmp_path):
    small = TEACHER_CFG.replace(vocab_size=V - 1)
    tl.check_vocab(TEACHER_CFG, tiny_model_config(2))
    with pytest.raises(ConfigError, match=f"teacher vocab_size {V} != student vocab_size {V - 1}"):
        tl.check_vocab(TEACHER_CFG, small)
    a = _tokenizer_file(str(tmp_path / "a"), {"<unk>": 0, "def": 1, "return": 2})
    b = _tokenizer_file(str(tmp_path / "b"), {"<unk>": 0, "def": 1, "return": 2})
    c = _tokenizer_file(str(tmp_path / "c"), {"<unk>": 0, "return": 1, "def": 2})
    tl.check_vocab(TEACHER_CFG, TEACHER_CFG, a, os.path.join(b, "tokenizer.json"))
    with pytest.raises(ConfigError) as e:
        tl.check_vocab(TEACHER_CFG, TEACHER_CFG, a, c)
    _one_line(e, "token 'def' has id 1 vs 2", a)
    with pytest.raises(ConfigError, match="not found"):
        tl.check_vocab(TEACHER_CFG, TEACHER_CFG, a, str(tmp_path / "missing"))
