"""Staged shard output: temp-name writes, empty shards, all-or-nothing publication."""

import os

import pytest

from components.common import shards as sh


def test_shard_of_uses_the_hash_digits_after_the_split_digits():
    doc_id = "00000000" + "0000000b" + "f" * 48
    assert sh.shard_of(doc_id, 4) == 11 % 4
    assert sh.shard_name(3, 12) == "data_tfrecord-00003-of-00012.gz"


def test_write_fill_publish(tmp_path):
    out = str(tmp_path / "out")
    staging = sh.new_staging(out)
    assert os.path.basename(staging).startswith(".staging-")
    n = sh.write_shard(os.path.join(staging, "Split-train", sh.shard_name(1, 3)), [b"a", b"bc"])
    assert n == 2
    sh.fill_empty_shards(os.path.join(staging, "Split-train"), 3)
    assert os.listdir(out) == [os.path.basename(staging)]  # nothing published yet
    shards = sh.publish(staging, out, ["train"])
    assert shards == {"train": [sh.shard_name(i, 3) for i in range(3)]}
    assert sorted(os.listdir(out)) == ["Split-train"]  # staging removed
    assert sh.read_records(os.path.join(out, "Split-train", "*.gz")) == [b"a", b"bc"]
    assert not [n for n in os.listdir(os.path.join(out, "Split-train")) if ".tmp-" in n]


def test_publish_replaces_an_older_split_and_discard_removes_staging(tmp_path):
    out = str(tmp_path / "out")
    for payload in (b"old", b"new"):
        staging = sh.new_staging(out)
        sh.write_shard(os.path.join(staging, "Split-eval", sh.shard_name(0, 1)), [payload])
        sh.publish(staging, out, ["eval"])
    assert sh.read_records(os.path.join(out, "Split-eval", "*.gz")) == [b"new"]
    staging = sh.new_staging(out)
    sh.discard(staging)
    assert sorted(os.listdir(out)) == ["Split-eval"]


def test_staged_output_leaves_nothing_when_the_block_fails(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="boom"):
        with sh.staged(str(out)) as staging:
            sh.write_shard(os.path.join(staging, "Split-train", sh.shard_name(0, 2)), [b"a", b"b"])
            raise RuntimeError("boom")
    assert os.listdir(out) == []  # no .staging-* folder, no Split-*


def test_publish_splits_fills_missing_shards(tmp_path):
    out = tmp_path / "out"
    with sh.staged(str(out)) as staging:
        sh.write_shard(os.path.join(staging, "Split-train", sh.shard_name(1, 3)), [b"x"])
        shards = sh.publish_splits(staging, str(out), ["train", "eval"], 3)
    expected = [sh.shard_name(i, 3) for i in range(3)]
    assert shards == {"train": expected, "eval": expected}
    assert sorted(os.listdir(out)) == ["Split-eval", "Split-train"]
    assert sh.read_records(str(out / "Split-train" / "*")) == [b"x"]
