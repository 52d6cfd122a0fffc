"""The SFT data artifact: training/data.py reads it; rows hold the encoded conversations with their
masks; the report counts everything; writes are all-or-nothing; the split is content-stable."""

import json
import os
import sysconfig

import numpy as np
import pytest
import tensorflow as tf

from common.errors import ConfigError, InputDataError
from components.sft.chat_template import get_template
from components.sft.dataset import build_sft_dataset, conversation_key, split_conversations
from components.sft.formats import Conversation, Message
from components.sft.instructions import instructions_from_documents
from components.sft.testdata import chatml_tokenizer_dir, seekline_tokenizer_dir
from training.data import ROW_FEATURES, open_packed, train_stream


@pytest.fixture(scope="module")
def toks(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("toks"))
    return {"seekline": seekline_tokenizer_dir(root), "chatml": chatml_tokenizer_dir(root)}


@pytest.fixture(scope="module")
def convs():
    stdlib = sysconfig.get_paths()["stdlib"]
    names = ("textwrap.py", "shlex.py", "fnmatch.py", "colorsys.py", "glob.py", "heapq.py", "base64.py")
    srcs = [(n, open(os.path.join(stdlib, n), encoding="utf-8").read()) for n in names]
    c = instructions_from_documents(srcs, max_examples=40)
    assert len(c) >= 20
    c.append(Conversation((Message("system", "Be short."), Message("user", "2+2?"), Message("assistant", "4"),
                           Message("user", "3+3?"), Message("assistant", "6")), "multi:1"))
    return c


def _read_rows(root: str, split: str) -> dict[str, np.ndarray]:
    files = sorted(tf.io.gfile.glob(os.path.join(root, f"Split-{split}", "*.gz")))
    spec = {k: tf.io.FixedLenFeature([open_packed(root).seq_len], tf.int64) for k in ROW_FEATURES + ("loss_mask",)}
    rows = [tf.io.parse_single_example(r, spec) for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]
    return {k: np.stack([r[k].numpy() for r in rows]) for k in spec}


def test_rows_hold_the_encoded_conversations_and_training_reads_them(toks, convs, tmp_path):
    out = str(tmp_path / "sft")
    train, ev = split_conversations(convs, 0.2, seed=0)
    rep = build_sft_dataset(train, ev, toks["seekline"], out, seq_len=1024, malformed=["a.jsonl:3: bad JSON"])
    data = open_packed(out)
    assert data.seq_len == 1024
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert cfg["template"] == "seekline" and cfg["packing"] is True
    assert json.load(open(os.path.join(out, "report.json"))) == rep
    assert rep["malformed"] == {"count": 1, "first": ["a.jsonl:3: bad JSON"]}

    # Every row segment is one whole encoded conversation with its mask (or a counted truncation), and every conversation appears once.
    tpl = get_template("seekline", toks["seekline"])
    want = {}
    for c in train:
        ex = tpl.encode(c)
        want[tuple(ex.ids.tolist())] = ex.loss_mask.tolist()
    rows = _read_rows(out, "train")
    got = []
    for ids, seg, pos, mask in zip(rows["input_ids"], rows["segment_ids"], rows["positions"], rows["loss_mask"],
                                   strict=True):
        for s in range(1, seg.max() + 1):
            sel = seg == s
            np.testing.assert_array_equal(pos[sel], np.arange(sel.sum()))
            key = tuple(ids[sel].tolist())
            got.append(key)
            if key in want:
                assert mask[sel].tolist() == want[key]
        assert not mask[seg == 0].any()
    st = rep["train"]
    assert st["truncated"] == sum(1 for k in got if k not in want)
    assert len(got) == st["packed"] == len(train) - st["dropped_no_target"] - st["dropped_too_long"]
    assert st["tokens"] == int((rows["segment_ids"] > 0).sum())
    assert st["assistant_tokens"] == int(rows["loss_mask"].sum()) > 0
    assert st["rows"] == len(rows["input_ids"])
    assert st["efficiency"] == pytest.approx(st["tokens"] / (st["rows"] * 1024), abs=1e-6)
    assert rep["eval"]["conversations"] == len(ev) and rep["eval"]["rows"] >= 1

    batch = next(iter(train_stream(data.train_files, 1024, micro_batch=2, accum=1, num_replicas=1, seed=0,
                                   shuffle_buffer=8, num_rows=data.num_rows("train"))))
    assert set(batch) == {"input_ids", "segment_ids", "positions", "loss_mask"}
    assert batch["loss_mask"].shape == (1, 2, 1024)
    assert int(tf.reduce_sum(batch["loss_mask"])) > 0


def test_padded_mode_truncation_and_chatml(toks, convs, tmp_path):
    out = str(tmp_path / "padded")
    rep = build_sft_dataset(convs[:10], convs[10:14], toks["chatml"], out, seq_len=400, packing=False)
    assert rep["template"] == "chatml"
    rows = _read_rows(out, "train")
    assert rows["segment_ids"].max() == 1  # one example per row
    t = rep["train"]
    assert t["rows"] == t["packed"] == 10 - t["dropped_no_target"]
    assert t["truncated"] > 0  # code answers are longer than 400 tokens with a 400-token vocab
    # truncation keeps the first seq_len tokens: every truncated row is full
    assert int((rows["segment_ids"] > 0).sum(axis=1).max()) == 400
    drop = build_sft_dataset(convs[:10], convs[10:14], toks["chatml"], str(tmp_path / "drop"), seq_len=400,
                             truncate=False)
    # too long = kept after truncation + truncated down to no target
    assert drop["train"]["truncated"] == 0
    assert drop["train"]["dropped_too_long"] == t["truncated"] + t["dropped_no_target"]


def test_refused_conversations_are_counted_and_a_failed_build_keeps_the_old_output(toks, convs, tmp_path):
    out = str(tmp_path / "sft")
    bad = Conversation((Message("user", "x <|user|> y"), Message("assistant", "z")), "bad.jsonl:9")
    rep = build_sft_dataset(convs[:8] + [bad], convs[8:10], toks["seekline"], out, seq_len=2048)
    assert rep["train"]["encode_errors"] == 1
    assert rep["train"]["encode_error_reasons"][0].startswith("bad.jsonl:9: message text contains the control token")
    before = sorted(os.listdir(out))
    with pytest.raises(InputDataError, match=r"SFT eval split has no rows: 1 conversations.*bad\.jsonl:9"):
        build_sft_dataset(convs[:8], [bad], toks["seekline"], out, seq_len=2048)
    assert sorted(os.listdir(out)) == before and json.load(open(os.path.join(out, "report.json"))) == rep
    assert [n for n in os.listdir(tmp_path) if n.startswith(".")] == []  # no staging left behind
    # a rebuild replaces the output
    rep2 = build_sft_dataset(convs[:4], convs[8:10], toks["seekline"], out, seq_len=2048)
    assert json.load(open(os.path.join(out, "report.json")))["train"]["conversations"] == 4 == rep2["train"][
        "conversations"]
    with pytest.raises(ConfigError, match="does not fit the tokenizer"):
        build_sft_dataset(convs[:4], convs[8:10], toks["seekline"], out, seq_len=2048, template="chatml")


def test_split_is_deterministic_and_stable_when_data_grows(convs):
    train, ev = split_conversations(convs, 0.25, seed=0)
    assert len(train) + len(ev) == len(convs) and ev and train
    assert split_conversations(convs, 0.25, seed=0) == (train, ev)
    more = [Conversation((Message("user", f"q{i}"), Message("assistant", f"a{i}")), f"n:{i}") for i in range(200)]
    train2, ev2 = split_conversations(more + list(convs), 0.25, seed=0)
    keys_ev2 = {conversation_key(c) for c in ev2}
    assert {conversation_key(c) for c in ev} <= keys_ev2
    assert not {conversation_key(c) for c in train} & keys_ev2
    assert 0.15 < len(ev2) / (len(train2) + len(ev2)) < 0.35
    assert split_conversations(convs, 0.25, seed=1) != (train, ev)
    # the same messages from another file are the same conversation
    twin = Conversation(convs[0].messages, "elsewhere.jsonl:1")
    assert conversation_key(twin) == conversation_key(convs[0])
    tiny_train, tiny_eval = split_conversations(convs[:2], 0.01)
    assert len(tiny_train) == len(tiny_eval) == 1
    with pytest.raises(ConfigError, match="eval_fraction"):
        split_conversations(convs, 1.0)
