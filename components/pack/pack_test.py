"""The pack pipeline (Beam): every document's tokens land in the rows exactly once, with
boundaries; the same rows with one and two worker processes; the data report."""

import json
import os

import numpy as np
import pytest
from tensorflow.core.example import example_pb2

from components.common.metrics import local_pipeline
from components.common.shards import read_records, shard_name
from components.common.testdata import write_text_examples
from components.ingest.sources import list_corpus_files
from components.pack import pack as pk
from components.tokenizer import tokenizer as tkz
from configs.schema import IngestConfig, PackConfig, TokenizerConfig

CFG = PackConfig(seq_len=128, num_shards=2, batch_size=8)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pack")
    files = list_corpus_files(IngestConfig(max_files=30, max_file_bytes=30_000))
    texts = [open(f.uri, encoding="utf-8").read() for f in files if f.size < 30_000]
    splits = {"train": texts[:-4], "eval": texts[-4:]}
    write_text_examples(str(root / "ex"), splits, source="stdlib")
    (root / "ex" / "ingest_report.json").write_text(json.dumps({"stages": [["files listed", 30]]}))
    tkz.train_from_examples(str(root / "ex"), str(root / "tok"), TokenizerConfig(vocab_size=600))
    return root, splits


@pytest.fixture(scope="module")
def packed(inputs):
    root, _ = inputs
    report = pk.run_pack(str(root / "ex"), str(root / "tok"), str(root / "out"), CFG)
    return root / "out", report


def rows(out, split):
    got = []
    for rec in read_records(os.path.join(out, f"Split-{split}", "*.gz")):
        f = example_pb2.Example.FromString(rec).features.feature
        got.append({k: list(f[k].int64_list.value) for k in ("input_ids", "segment_ids", "positions", "num_tokens")})
    return got


def test_every_token_of_every_document_is_written_once(inputs, packed):
    root, splits = inputs
    out, report = packed
    tok = tkz.load(str(root / "tok"))
    for split, texts in splits.items():
        rs = rows(out, split)
        assert all(len(r["input_ids"]) == CFG.seq_len for r in rs)
        # Cut the written stream at EOS: the pieces are the documents, each [BOS] ids EOS as the
        # tokenizer encodes it on its own (the reference), in some order.
        stream = [t for r in rs for t, s in zip(r["input_ids"], r["segment_ids"], strict=True) if s]
        docs, cur = [], []
        for t in stream:
            cur.append(t)
            if t == 2:
                docs.append(tuple(cur))
                cur = []
        assert cur == []
        expected = sorted(tuple([1, *tok.encode(t, add_special_tokens=False).ids, 2]) for t in texts)
        assert sorted(docs) == expected
        assert report["tokens_written"][split] == len(stream) == sum(r["num_tokens"][0] for r in rs)
        assert report["rows"][split] == len(rs)
        assert report["documents_packed"][split] == len(texts)
    assert sorted(os.listdir(out / "Split-train")) == [shard_name(i, 2) for i in range(2)]


def test_data_report(packed):
    out, report = packed
    saved = json.loads((out / "data_report.json").read_text())
    assert saved["ingest"]["stages"] == [["files listed", 30]]
    assert saved["seq_len"] == 128 and saved["tokens_written"] == report["tokens_written"]
    total_docs = sum(sum(h.values()) for h in saved["document_tokens_histogram_log2"].values())
    assert total_docs == sum(saved["documents_packed"].values())
    assert saved["source_tokens"]["stdlib"]["train"] == report["tokens_written"]["train"]
    assert os.path.getsize(out / "data_report.png") > 10_000
    assert not [n for n in os.listdir(out) if n.startswith(".staging")]


def test_same_rows_with_one_and_two_worker_processes(inputs, packed, tmp_path):
    root, _ = inputs
    out, _ = packed
    pk.run_pack(str(root / "ex"), str(root / "tok"), str(tmp_path / "two"), CFG, pipeline=local_pipeline(2, "multi_processing"))
    for split in ("train", "eval"):
        for i in range(2):
            name = os.path.join(f"Split-{split}", shard_name(i, 2))
            assert (out / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name


def test_positions_restart_per_segment(packed):
    out, _ = packed
    for r in rows(out, "train")[:20]:
        seg, pos = np.array(r["segment_ids"]), np.array(r["positions"])
        for s in set(seg.tolist()) - {0}:
            assert pos[seg == s].tolist() == list(range(int((seg == s).sum())))
