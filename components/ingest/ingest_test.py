"""Ingest on corpora made in tmp dirs: what is read, how it is split, and bad input."""

import gzip
import hashlib
import os
import sysconfig

import pytest
import tensorflow as tf

from components.common.errors import InputDataError
from components.ingest import ingest as ing
from configs.schema import IngestConfig


def make_corpus(root, files: dict[str, bytes]):
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


def read_split(out, split):
    docs = []
    for shard in sorted(tf.io.gfile.glob(os.path.join(out, f"Split-{split}", "*.gz"))):
        for rec in tf.data.TFRecordDataset(shard, compression_type="GZIP"):
            ex = tf.train.Example.FromString(rec.numpy())
            f = ex.features.feature
            docs.append(
                {
                    "text": f["text"].bytes_list.value[0].decode(),
                    "path": f["path"].bytes_list.value[0].decode(),
                    "doc_id": f["doc_id"].bytes_list.value[0].decode(),
                    "num_lines": f["num_lines"].int64_list.value[0],
                    "num_bytes": f["num_bytes"].int64_list.value[0],
                }
            )
    return docs


@pytest.fixture
def corpus(tmp_path):
    files = {f"pkg/mod{i}.py": f"def f{i}():\n    return {i}\n".encode() for i in range(40)}
    files["pkg/readme.txt"] = b"not python"
    files["site-packages/vendored.py"] = b"x = 1\n"
    return make_corpus(tmp_path / "corpus", files)


def cfg(corpus, **kw):
    return IngestConfig(corpus=[str(corpus)], eval_percent=kw.pop("eval_percent", 20), **kw)


def test_lists_included_files_only(corpus):
    files = ing.list_corpus_files(cfg(corpus))
    rels = {f.relpath for f in files}
    assert len(rels) == 40
    assert "pkg/readme.txt" not in rels and "site-packages/vendored.py" not in rels


def test_max_files_is_a_deterministic_sample(corpus):
    a = [f.relpath for f in ing.list_corpus_files(cfg(corpus, max_files=5))]
    b = [f.relpath for f in ing.list_corpus_files(cfg(corpus, max_files=5))]
    assert a == b and len(a) == 5
    # hash-ordered, not the first five names of a sorted listing
    assert a != sorted(f.relpath for f in ing.list_corpus_files(cfg(corpus)))[:5]


def test_writes_every_document_once_with_content_hash_split(corpus, tmp_path):
    out = str(tmp_path / "out")
    report = ing.run_ingest(cfg(corpus, num_shards=3), out)
    train, evals = read_split(out, "train"), read_split(out, "eval")
    assert len(train) + len(evals) == 40
    assert report.documents == {"train": len(train), "eval": len(evals)}
    for split, docs in (("train", train), ("eval", evals)):
        for d in docs:
            src = (corpus / d["path"]).read_bytes()
            assert d["text"] == src.decode()
            assert d["doc_id"] == hashlib.sha256(src).hexdigest()
            assert d["num_bytes"] == len(src) and d["num_lines"] == 2
            # the split is a function of the content alone: formula from the docstring
            assert (int(d["doc_id"][:8], 16) % 100 < 20) == (split == "eval")
    assert sorted(os.listdir(os.path.join(out, "Split-train"))) == [
        ing.shard_name(i, 3) for i in range(3)
    ]
    assert not [n for n in os.listdir(out) if n.startswith(".tmp")]
    with gzip.open(os.path.join(out, "Split-train", ing.shard_name(0, 3))) as f:
        f.read(1)  # real GZIP, as the .gz suffix tells readers


def test_split_does_not_depend_on_other_files(corpus, tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    ing.run_ingest(cfg(corpus), a)
    make_corpus(corpus, {f"extra/x{i}.py": f"y = {i}\n".encode() for i in range(10)})
    ing.run_ingest(cfg(corpus), b)
    ids_a = {d["doc_id"] for d in read_split(a, "eval")}
    ids_b = {d["doc_id"] for d in read_split(b, "eval")}
    assert ids_a <= ids_b


def test_fingerprint_changes_with_the_corpus(corpus):
    before = ing.corpus_fingerprint(ing.list_corpus_files(cfg(corpus)))
    assert before == ing.corpus_fingerprint(ing.list_corpus_files(cfg(corpus)))
    (corpus / "pkg" / "mod1.py").write_bytes(b"changed = True  # longer than before\n")
    assert before != ing.corpus_fingerprint(ing.list_corpus_files(cfg(corpus)))


def test_skips_large_empty_and_invalid_utf8_and_counts_them(corpus, tmp_path):
    make_corpus(
        corpus,
        {"pkg/big.py": b"x" * 5000, "pkg/empty.py": b"  \n", "pkg/latin1.py": "s = 'caf\xe9'\n".encode("latin-1")},
    )
    report = ing.run_ingest(cfg(corpus, max_file_bytes=4000), str(tmp_path / "out"))
    assert (report.skipped_too_large, report.skipped_empty, report.skipped_invalid_utf8) == (1, 1, 1)
    assert sum(report.documents.values()) == 40


def test_invalid_utf8_fails_when_strict(corpus, tmp_path):
    make_corpus(corpus, {"pkg/latin1.py": "s = 'caf\xe9'\n".encode("latin-1")})
    with pytest.raises(InputDataError, match=r"latin1.py: invalid UTF-8 at byte 8"):
        ing.run_ingest(cfg(corpus, on_invalid_utf8="fail"), str(tmp_path / "out"))


def test_missing_directory_is_named(tmp_path):
    with pytest.raises(InputDataError, match=f"corpus directory not found: {tmp_path}/nope"):
        ing.list_corpus_files(IngestConfig(corpus=[str(tmp_path / "nope")]))


def test_unreadable_file_is_named(corpus, tmp_path):
    os.symlink(tmp_path / "gone.py", corpus / "pkg" / "dangling.py")
    with pytest.raises(InputDataError, match=r"cannot read corpus file .*dangling.py"):
        ing.list_corpus_files(cfg(corpus))


def test_glob_corpus(corpus, tmp_path):
    files = ing.list_corpus_files(IngestConfig(corpus=[str(corpus / "pkg" / "mod1*.py")]))
    assert sorted(f.relpath for f in files) == sorted(["mod1.py"] + [f"mod1{i}.py" for i in range(10)])
    with pytest.raises(InputDataError, match="corpus glob matches no files"):
        ing.list_corpus_files(IngestConfig(corpus=[str(corpus / "*.rs")]))


def test_empty_split_fails_and_publishes_nothing(tmp_path):
    corpus = make_corpus(tmp_path / "c", {"only.py": b"x = 1\n"})
    out = tmp_path / "out"
    with pytest.raises(InputDataError, match="empty 'eval' split"):
        ing.run_ingest(IngestConfig(corpus=[str(corpus)], eval_percent=1), str(out))
    assert os.listdir(out) == []  # no half-written split, no temp folders


def test_python_stdlib_is_the_running_interpreters():
    assert ing.resolve_root("python-stdlib") == sysconfig.get_paths()["stdlib"]
    files = ing.list_corpus_files(IngestConfig(max_files=10))
    assert len(files) == 10 and all(f.relpath.endswith(".py") for f in files)
    assert all(os.path.isfile(f.uri) for f in files)
