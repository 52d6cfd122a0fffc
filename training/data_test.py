"""The packed-row train stream: deterministic, resumable at any step, per-epoch reshuffled,
sliced per replica; input checks that fail before any compute."""
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from common.errors import InputDataError
from training.data import check_rows, eval_stream, open_packed, train_stream
from training.testdata import synthetic_rows, write_packed

SEQ, VOCAB, ROWS = 16, 64, 10


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    # 10 rows in 3 shards: a 6-row step wraps an epoch mid-batch every few steps.
    return open_packed(write_packed(str(tmp_path_factory.mktemp("packed")), SEQ, VOCAB,
                                    train_rows=ROWS, eval_rows=5, shards=3))


def _file_rows(files):
    """Rows in file order, read with plain protobuf parsing (independent of the stream code)."""
    out = []
    for raw in tf.data.TFRecordDataset(list(files), compression_type="GZIP"):
        f = tf.train.Example.FromString(raw.numpy()).features.feature
        out.append(tuple(f["input_ids"].int64_list.value) + tuple(f["segment_ids"].int64_list.value))
    return out


def _steps(data, n_steps, **kw):
    """First n_steps elements of train_stream as lists of row keys: [step][accum][row]."""
    args = dict(micro_batch=3, accum=2, num_replicas=1, seed=7, shuffle_buffer=100, num_rows=ROWS)
    args.update(kw)
    ds = train_stream(data.train_files, data.seq_len, **args)
    out = []
    for el in ds.take(n_steps):
        ids, seg = el["input_ids"].numpy(), el["segment_ids"].numpy()       # (accum, M, T)
        assert ids.dtype == np.int32 and ids.shape[-1] == SEQ
        out.append([[tuple(i) + tuple(s) for i, s in zip(ids[a], seg[a], strict=True)]
                    for a in range(ids.shape[0])])
    return out


def _flat(steps):
    return [row for step in steps for micro in step for row in micro]


def test_stream_is_deterministic_and_resumes_mid_epoch(packed):
    full = _steps(packed, 8)                      # 48 rows = 4.8 epochs of 10
    assert full == _steps(packed, 8)
    # 6 rows/step over 10-row epochs: steps 1, 2 and 5 start inside an epoch (offsets 6, 2, 0).
    for s in (1, 2, 5, 7):
        assert _steps(packed, 8 - s, start_step=s) == full[s:], f"resume at step {s}"


def test_each_epoch_is_a_new_permutation_of_all_rows(packed):
    rows = _flat(_steps(packed, 8))
    file_rows = _file_rows(packed.train_files)
    epochs = [rows[e * ROWS:(e + 1) * ROWS] for e in range(4)]
    for ep in epochs:
        assert sorted(ep) == sorted(file_rows)    # every row exactly once per epoch
    assert len({tuple(ep) for ep in epochs}) == 4  # a different order every epoch
    assert epochs[0] != file_rows
    # A different seed gives a different stream.
    assert _flat(_steps(packed, 2, seed=8)) != rows[:12]


def test_windowed_shuffle_still_covers_every_row(packed):
    # A 4-row shuffle buffer: shuffling happens within windows, but coverage and resume hold.
    full = _steps(packed, 5, shuffle_buffer=4)
    rows = _flat(full)
    for e in range(3):
        assert sorted(rows[e * ROWS:(e + 1) * ROWS]) == sorted(_file_rows(packed.train_files))
    assert _steps(packed, 2, shuffle_buffer=4, start_step=3) == full[3:]


def test_replica_slices_partition_the_global_batch(packed):
    """2 replicas × micro 2 see, per step and micro-step, exactly the rows of 1 replica × micro 4."""
    single = _steps(packed, 4, micro_batch=4)
    r0 = _steps(packed, 4, micro_batch=2, num_replicas=2, replica_range=(0, 1))
    r1 = _steps(packed, 4, micro_batch=2, num_replicas=2, replica_range=(1, 2))
    for s in range(4):
        for a in range(2):
            assert r0[s][a] + r1[s][a] == single[s][a]
    # One input pipeline feeding both local replicas: elements alternate replica 0, replica 1.
    both = _steps(packed, 8, micro_batch=2, num_replicas=2, replica_range=(0, 2))
    assert both[0::2] == r0 and both[1::2] == r1
    # Resuming a replica's slice gives the same tail.
    assert _steps(packed, 2, micro_batch=2, num_replicas=2, replica_range=(1, 2), start_step=2) == r1[2:]


def test_eval_stream_is_file_order_and_capped(packed):
    batches = list(eval_stream(packed.eval_files, SEQ, batch_size=2, max_batches=2))
    assert [b["input_ids"].shape[0] for b in batches] == [2, 2]
    got = [tuple(i) + tuple(s) for b in batches
           for i, s in zip(b["input_ids"].numpy(), b["segment_ids"].numpy(), strict=True)]
    assert got == _file_rows(packed.eval_files)[:4]


def _write_rows(path, rows):
    def feat(v):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(x) for x in v]))
    with tf.io.TFRecordWriter(path, options="GZIP") as w:
        for ids, seg, pos in rows:
            f = {"input_ids": feat(ids), "segment_ids": feat(seg), "positions": feat(pos)}
            w.write(tf.train.Example(features=tf.train.Features(feature=f)).SerializeToString())


def _one_line_error(excinfo, *needles):
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    for n in needles:
        assert n in msg, msg
    return msg


def test_check_rows_accepts_matching_rows(packed):
    check_rows(packed, SEQ, VOCAB)


def test_check_rows_rejects_wrong_length(packed):
    with pytest.raises(InputDataError) as e:
        check_rows(packed, SEQ * 2, VOCAB)
    _one_line_error(e, packed.train_files[0], f"{SEQ} tokens", f"seq_len {2 * SEQ}")


def test_check_rows_rejects_out_of_vocab_ids(packed, tmp_path):
    top = max(max(r[:SEQ]) for r in _file_rows(packed.train_files[:1]))
    with pytest.raises(InputDataError) as e:
        check_rows(packed, SEQ, vocab_size=top)       # ids 0..top need vocab_size top+1
    _one_line_error(e, packed.train_files[0], f"token id {top}", f"vocab_size {top}")
    # A negative id (a corrupt or foreign artifact) is reported as itself.
    root = tmp_path / "neg"
    shutil.copytree(packed.root, root)
    first = os.path.join(root, "Split-train", os.path.basename(packed.train_files[0]))
    ids, seg, pos = synthetic_rows(1, SEQ, VOCAB, seed=3)[0]
    ids[5] = -7
    _write_rows(first, [(ids, seg, pos)])
    with pytest.raises(InputDataError) as e:
        check_rows(open_packed(str(root)), SEQ, VOCAB)
    _one_line_error(e, first, "token id -7")


def test_open_packed_errors_name_the_folder(tmp_path, packed):
    missing = str(tmp_path / "nope")
    with pytest.raises(InputDataError) as e:
        open_packed(missing)
    _one_line_error(e, missing, "not found")

    root = tmp_path / "no-train"
    shutil.copytree(packed.root, root)
    shutil.rmtree(root / "Split-train")
    with pytest.raises(InputDataError) as e:
        open_packed(str(root))
    _one_line_error(e, str(root), "Split-train")

    (root / "Split-train").mkdir()
    with pytest.raises(InputDataError) as e:
        open_packed(str(root))
    _one_line_error(e, "Split-train", "no TFRecord shards")

    broken = tmp_path / "bad-config"
    shutil.copytree(packed.root, broken)
    (broken / "config.json").write_text("{not json")
    with pytest.raises(InputDataError) as e:
        open_packed(str(broken))
    _one_line_error(e, str(broken / "config.json"))


def test_open_packed_reads_seq_len_with_or_without_config(tmp_path, packed):
    assert packed.seq_len == SEQ and len(packed.train_files) == 3
    assert packed.num_rows("train") == ROWS and packed.num_rows("eval") == 5
    root = tmp_path / "no-config"
    shutil.copytree(packed.root, root)
    os.remove(root / "config.json")
    assert open_packed(str(root)).seq_len == SEQ    # peeked from the first row


def test_empty_train_split_is_an_input_error(packed):
    with pytest.raises(InputDataError):
        train_stream(packed.train_files, SEQ, micro_batch=1, accum=1, num_replicas=1, seed=0,
                     shuffle_buffer=4, num_rows=0)


# ------------------------------------------------------------------ offline-teacher features
K = 3


def _teacher_value(ids):
    """Deterministic per-row teacher features derived from the row's ids (so a test can find them
    again from input_ids alone): ids (T,) -> top-k ids (T, K) and log-probs (T, K)."""
    ids = np.asarray(ids, np.int64)
    top = (ids[:, None] + np.arange(K)[None, :]) % VOCAB                      # (T, K)
    lp = -(0.5 + 0.01 * top.astype(np.float32))                               # exact in float32
    return top, lp.astype(np.float32)


@pytest.fixture(scope="module")
def with_teacher(packed, tmp_path_factory):
    """The packed fixture's rows + teacher_topk_* features; config.json declares teacher_topk."""
    root = str(tmp_path_factory.mktemp("teacher"))
    shutil.copytree(packed.root, root, dirs_exist_ok=True)
    for split in ("train", "eval"):
        d = os.path.join(root, f"Split-{split}")
        for name in os.listdir(d):
            path = os.path.join(d, name)
            rows = [tf.train.Example.FromString(r.numpy())
                    for r in tf.data.TFRecordDataset([path], compression_type="GZIP")]
            with tf.io.TFRecordWriter(path, options="GZIP") as w:
                for ex in rows:
                    top, lp = _teacher_value(ex.features.feature["input_ids"].int64_list.value)
                    ex.features.feature["teacher_topk_ids"].int64_list.value.extend(top.reshape(-1).tolist())
                    ex.features.feature["teacher_topk_logprobs"].float_list.value.extend(lp.reshape(-1).tolist())
                    w.write(ex.SerializeToString())
    with open(os.path.join(root, "config.json"), "w") as f:
        json.dump({"seq_len": SEQ, "teacher_topk": K}, f)
    return open_packed(root)


def _check_teacher_batch(el):
    ids = el["input_ids"].numpy()
    top, lp = el["teacher_topk_ids"].numpy(), el["teacher_topk_logprobs"].numpy()
    assert top.shape == ids.shape + (K,) and top.dtype == np.int32 and lp.dtype == np.float32
    for row_ids, row_top, row_lp in zip(ids.reshape(-1, SEQ), top.reshape(-1, SEQ, K),
                                        lp.reshape(-1, SEQ, K), strict=True):
        want_top, want_lp = _teacher_value(row_ids)
        np.testing.assert_array_equal(row_top, want_top)      # the features travel with their row
        np.testing.assert_array_equal(row_lp, want_lp)


def test_teacher_features_are_declared_parsed_and_keep_order_and_slices(packed, with_teacher):
    assert with_teacher.teacher_topk == K and packed.teacher_topk == 0
    # Same order as the plain rows (the features do not change the stream).
    assert _steps(with_teacher, 4) == _steps(packed, 4)
    args = dict(micro_batch=2, accum=2, num_replicas=2, seed=7, shuffle_buffer=100, num_rows=ROWS)
    for first in (0, 1):
        for el in train_stream(with_teacher.train_files, SEQ, replica_range=(first, first + 1), **args).take(3):
            assert el["input_ids"].shape == (2, 2, SEQ)
            _check_teacher_batch(el)
    assert _steps(with_teacher, 3, micro_batch=2, num_replicas=2, replica_range=(1, 2)) == \
        _steps(packed, 3, micro_batch=2, num_replicas=2, replica_range=(1, 2))
    for b in eval_stream(with_teacher.eval_files, SEQ, batch_size=2, max_batches=2):
        _check_teacher_batch(b)
    # Not declared (or explicitly off): the features are not parsed.
    plain = next(iter(eval_stream(with_teacher.eval_files, SEQ, 2, 1, teacher_topk=0)))
    assert "teacher_topk_ids" not in plain


def test_teacher_topk_in_config_must_be_a_count(packed, tmp_path):
    root = tmp_path / "badk"
    shutil.copytree(packed.root, root)
    (root / "config.json").write_text(json.dumps({"seq_len": SEQ, "teacher_topk": "4"}))
    with pytest.raises(InputDataError) as e:
        open_packed(str(root))
    _one_line_error(e, str(root / "config.json"), "teacher_topk")


# ------------------------------------------------------------------ extra int64 features (agent rows)
def _extra_value(ids):
    """Per-row extra features derived from the row's ids: reason_mask (T,) always; tool_name_ids
    (T,) only on rows whose first id is even (the others must read back as the fill, -1)."""
    ids = np.asarray(ids, np.int64)
    out = {"reason_mask": ids % 2}
    if ids[0] % 2 == 0:
        out["tool_name_ids"] = ids % 5 - 1
    return out


@pytest.fixture(scope="module")
def with_extra(packed, tmp_path_factory):
    """The packed fixture's rows + extra int64 features listed in config.json "features"."""
    root = str(tmp_path_factory.mktemp("extra"))
    shutil.copytree(packed.root, root, dirs_exist_ok=True)
    for split in ("train", "eval"):
        d = os.path.join(root, f"Split-{split}")
        for name in os.listdir(d):
            path = os.path.join(d, name)
            rows = [tf.train.Example.FromString(r.numpy())
                    for r in tf.data.TFRecordDataset([path], compression_type="GZIP")]
            with tf.io.TFRecordWriter(path, options="GZIP") as w:
                for ex in rows:
                    for k, v in _extra_value(ex.features.feature["input_ids"].int64_list.value).items():
                        ex.features.feature[k].int64_list.value.extend(v.tolist())
                    w.write(ex.SerializeToString())
    with open(os.path.join(root, "config.json"), "w") as f:
        # Base names are listed too (as the agent dataset builder writes them) and are not extra;
        # "integration_mask" and "my_flag" are in no row: fills 0 (FEATURE_FILL / unknown name).
        json.dump({"seq_len": SEQ, "features": ["input_ids", "segment_ids", "positions", "loss_mask",
                                                "reason_mask", "tool_name_ids", "integration_mask",
                                                "my_flag"]}, f)
    return open_packed(root)


def _check_extra_batch(el):
    ids = el["input_ids"].numpy().reshape(-1, SEQ)
    for k in ("reason_mask", "tool_name_ids", "integration_mask", "my_flag"):
        assert el[k].dtype == np.int32 and el[k].shape == el["input_ids"].shape, k
    assert "loss_mask" in el and (el["loss_mask"].numpy() == 1).all()   # still the absent-mask default
    for i, row in enumerate(ids):
        want = _extra_value(row)
        np.testing.assert_array_equal(el["reason_mask"].numpy().reshape(-1, SEQ)[i], want["reason_mask"])
        np.testing.assert_array_equal(el["tool_name_ids"].numpy().reshape(-1, SEQ)[i],
                                      want.get("tool_name_ids", np.full(SEQ, -1)))
        assert (el["integration_mask"].numpy().reshape(-1, SEQ)[i] == 0).all()
        assert (el["my_flag"].numpy().reshape(-1, SEQ)[i] == 0).all()


def test_extra_features_are_declared_parsed_with_fills_and_keep_order(packed, with_extra):
    assert with_extra.extra_features == ("reason_mask", "tool_name_ids", "integration_mask", "my_flag")
    assert packed.extra_features == ()
    assert _steps(with_extra, 4) == _steps(packed, 4)         # the features do not change the stream
    args = dict(micro_batch=2, accum=2, num_replicas=2, seed=7, shuffle_buffer=100, num_rows=ROWS)
    seen_fill = seen_value = False
    for first in (0, 1):
        for el in train_stream(with_extra.train_files, SEQ, replica_range=(first, first + 1), **args).take(3):
            assert el["input_ids"].shape == (2, 2, SEQ)
            _check_extra_batch(el)
            t = el["tool_name_ids"].numpy()
            seen_fill |= bool((t == -1).all(axis=-1).any())
            seen_value |= bool((t >= 0).any())
    assert seen_fill and seen_value                           # both kinds of row were exercised
    for b in eval_stream(with_extra.eval_files, SEQ, batch_size=2, max_batches=2):
        _check_extra_batch(b)
    # A folder that lists none (or an explicit empty tuple) parses exactly the base features.
    plain = next(iter(eval_stream(packed.eval_files, SEQ, 2, 1)))
    assert set(plain) == {"input_ids", "segment_ids", "positions", "loss_mask"}
    off = next(iter(eval_stream(with_extra.eval_files, SEQ, 2, 1, extra_features=())))
    assert set(off) == set(plain)


@pytest.mark.parametrize("features", ["reason_mask", [1, 2], ["teacher_topk_ids"]])
def test_bad_features_list_is_an_input_error(packed, tmp_path, features):
    root = tmp_path / "badf"
    shutil.copytree(packed.root, root)
    (root / "config.json").write_text(json.dumps({"seq_len": SEQ, "features": features}))
    with pytest.raises(InputDataError) as e:
        open_packed(str(root))
    _one_line_error(e, str(root / "config.json"), "features")
