"""Ingest (the Beam pipeline) on corpora made in tmp dirs: what is read, cleaned, deduplicated,
split and written, bad input, and determinism across worker counts."""

import gzip
import hashlib
import json
import os
import sysconfig

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components.common.errors import InputDataError
from components.common.shards import read_records, shard_name
from components.ingest import ingest as ing
from configs.schema import IngestConfig, QualityFilters


def make_corpus(root, files: dict[str, bytes]):
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


def unique_text(i: int, n_words: int = 120) -> str:
    """Python-looking text of random words: two of these share almost no 5-word shingle."""
    rng = np.random.default_rng(i)
    ws = [f"name{int(x)}" for x in rng.integers(0, 50_000, n_words)]
    lines = [f"    {ws[j]} = {ws[j + 1]}({ws[j + 2]}, {ws[j + 3]})" for j in range(0, n_words - 3, 4)]
    return f"def func_{i}():\n" + "\n".join(lines) + "\n"


def read_split(out, split):
    from tensorflow.core.example import example_pb2

    docs = []
    for rec in read_records(os.path.join(out, f"Split-{split}", "*.gz")):
        f = example_pb2.Example.FromString(rec).features.feature
        docs.append(
            {
                "text": f["text"].bytes_list.value[0].decode(),
                "path": f["path"].bytes_list.value[0].decode(),
                "source": f["source"].bytes_list.value[0].decode(),
                "doc_id": f["doc_id"].bytes_list.value[0].decode(),
                "num_lines": f["num_lines"].int64_list.value[0],
                "num_bytes": f["num_bytes"].int64_list.value[0],
            }
        )
    return docs


@pytest.fixture
def corpus(tmp_path):
    files = {f"pkg/mod{i}.py": unique_text(i).encode() for i in range(40)}
    files["pkg/readme.txt"] = b"not python"
    files["site-packages/vendored.py"] = unique_text(99).encode()
    return make_corpus(tmp_path / "corpus", files)


def cfg(corpus, **kw):
    return IngestConfig(corpus=[str(corpus)], eval_percent=kw.pop("eval_percent", 20), **kw)


def test_lists_included_files_only(corpus):
    rels = {f.relpath for f in ing.list_corpus_files(cfg(corpus))}
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
    assert report["documents"] == {"train": len(train), "eval": len(evals)}
    for split, docs in (("train", train), ("eval", evals)):
        for d in docs:
            src = (corpus / d["path"]).read_bytes()
            assert d["text"] == src.decode()
            assert d["doc_id"] == hashlib.sha256(src).hexdigest()
            assert d["num_bytes"] == len(src) and d["num_lines"] == src.count(b"\n")
            # the split is a function of the content alone: formula from the docstring
            assert (int(d["doc_id"][:8], 16) % 100 < 20) == (split == "eval")
    assert sorted(os.listdir(os.path.join(out, "Split-train"))) == [shard_name(i, 3) for i in range(3)]
    assert sorted(os.listdir(out)) == ["Split-eval", "Split-train", "ingest_report.json", "ingest_report.png"]
    with gzip.open(os.path.join(out, "Split-train", shard_name(0, 3))) as f:
        f.read(1)  # real GZIP, as the .gz suffix tells readers
    stages = dict(report["stages"])
    assert stages["files read"] == stages["after near dedup"] == 40


def test_split_does_not_depend_on_other_files(corpus, tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    ing.run_ingest(cfg(corpus), a)
    make_corpus(corpus, {f"extra/x{i}.py": unique_text(1000 + i).encode() for i in range(10)})
    ing.run_ingest(cfg(corpus), b)
    ids_a = {d["doc_id"] for d in read_split(a, "eval")}
    ids_b = {d["doc_id"] for d in read_split(b, "eval")}
    assert ids_a <= ids_b


def test_planted_exact_and_near_duplicates_are_removed(tmp_path):
    uniques = {f"u{i}.py": unique_text(i, 200) for i in range(12)}
    base_words = uniques["u0.py"].split(" ")
    near = " ".join(base_words[:50] + ["CHANGED"] + base_words[51:])  # one word of ~250 changed
    half = unique_text(0, 200)[: len(unique_text(0, 200)) // 2] + unique_text(500, 100)  # J ≈ 0.3
    planted = {
        "copy_of_u1.py": uniques["u1.py"],  # exact duplicate
        "z/u2_again.py": uniques["u2.py"],  # exact duplicate, other folder
        "near_u0.py": near,  # near duplicate of u0
        "near_u3.py": uniques["u3.py"].replace("def func_3", "def func_3b"),  # near duplicate
        "half_u0.py": half,  # shares half of u0: not a near duplicate
    }
    corpus = make_corpus(tmp_path / "c", {k: v.encode() for k, v in {**uniques, **planted}.items()})
    report = ing.run_ingest(IngestConfig(corpus=[str(corpus)], eval_percent=20), str(tmp_path / "o"))
    kept = read_split(tmp_path / "o", "train") + read_split(tmp_path / "o", "eval")
    texts = sorted(d["text"] for d in kept)
    # Expected by construction: every unique once, plus the half-similar document. Of a
    # near-duplicate pair the one with the smaller content hash stays.
    sha = lambda t: hashlib.sha256(t.encode()).hexdigest()  # noqa: E731
    expected = dict(uniques)
    expected["half_u0.py"] = half
    expected["u0.py"] = min(uniques["u0.py"], near, key=sha)
    expected["u3.py"] = min(uniques["u3.py"], planted["near_u3.py"], key=sha)
    assert texts == sorted(expected.values())
    assert report["exact_duplicates"] == 2 and report["near_duplicates"] == 2
    # of byte-identical files the first by path is the one kept
    assert {d["path"] for d in kept if d["text"] == uniques["u1.py"]} == {"copy_of_u1.py"}


def test_same_output_with_one_and_two_worker_processes(corpus, tmp_path):
    make_corpus(corpus, {"pkg/dup.py": unique_text(3).encode()})
    c = cfg(corpus, num_shards=2)
    one, two = tmp_path / "one", tmp_path / "two"
    ing.run_ingest(c, str(one), pipeline=ing.local_pipeline(1, "in_memory"))
    r2 = ing.run_ingest(c, str(two), pipeline=ing.local_pipeline(2, "multi_processing"))
    assert r2["exact_duplicates"] == 1  # counters come back from the worker processes
    for split in ("train", "eval"):
        for i in range(2):
            name = os.path.join(f"Split-{split}", shard_name(i, 2))
            assert (one / name).read_bytes() == (two / name).read_bytes(), name


def test_bad_input_is_counted(tmp_path):
    files = {f"ok{i}.py": unique_text(i).encode() for i in range(20)}
    files.update(
        {
            "binary.py": b"\x7fELF\x00\x01\x02" + bytes(range(256)),
            "empty.py": b"",
            "blank.py": b"  \n\n",
            "latin1.py": ("s = 'caf\xe9'\n" + unique_text(50)).encode("latin-1"),
            "oneline.py": b"x" * 2_000_000,  # larger than max_file_bytes: skipped unread
            "gen.py": b"# Code generated by protoc. DO NOT EDIT.\n" + unique_text(51).encode(),
            "mini.py": (b";".join([b"ab=1"] * 40) + b"\n") * 5,  # 5 lines of 199 chars: mean > 120
        }
    )
    docs = [{"text": unique_text(60 + i)} for i in range(3)]
    jsonl = [json.dumps(d) for d in docs] + ['{"text": "unterminated', '{"body": "no text field"}', '{"text": 3}']
    files["data/docs.jsonl"] = ("\n".join(jsonl) + "\n").encode()
    corpus = make_corpus(tmp_path / "c", files)
    report = ing.run_ingest(
        IngestConfig(corpus=[str(corpus)], include=["*.py", "*.jsonl"], eval_percent=20), str(tmp_path / "o")
    )
    assert report["skipped"] == {
        "skipped_too_large": 1, "skipped_empty": 1, "skipped_binary": 1, "invalid_utf8_skipped": 1,
        "invalid_utf8_replaced": 0, "jsonl_malformed": 1, "missing_text_field": 2,
    }
    assert report["filtered"] == {"empty": 1, "generated": 1, "minified": 1}
    assert sum(report["documents"].values()) == 23  # 20 files + 3 JSONL lines
    kept = read_split(tmp_path / "o", "train") + read_split(tmp_path / "o", "eval")
    assert sorted(d["path"] for d in kept if d["path"].startswith("data/")) == [
        "data/docs.jsonl:1", "data/docs.jsonl:2", "data/docs.jsonl:3"
    ]
    assert os.path.getsize(tmp_path / "o" / "ingest_report.png") > 10_000


def test_replace_policy_and_a_50mb_line_that_is_read(tmp_path):
    files = {f"ok{i}.py": unique_text(i).encode() for i in range(20)}
    files["latin1.py"] = ("s = 'caf\xe9'\n" + unique_text(50)).encode("latin-1")
    files["huge.py"] = b"x = '" + b"a" * 50_000_000 + b"'\n"
    corpus = make_corpus(tmp_path / "c", files)
    c = IngestConfig(
        corpus=[str(corpus)], eval_percent=20, on_invalid_utf8="replace", max_file_bytes=60_000_000,
        filters=QualityFilters(max_chars=100_000_000),  # so the line-length filter is the one hit
    )
    report = ing.run_ingest(c, str(tmp_path / "o"))
    assert report["skipped"]["invalid_utf8_replaced"] == 1
    assert report["filtered"] == {"long_line": 1}
    kept = read_split(tmp_path / "o", "train") + read_split(tmp_path / "o", "eval")
    assert [d["text"][:10] for d in kept if d["path"] == "latin1.py"] == ["s = 'caf\ufffd'"]


def test_jsonl_and_parquet_sources(tmp_path):
    root = tmp_path / "c"
    root.mkdir()
    with gzip.open(root / "a.jsonl.gz", "wt") as f:
        for i in range(10):
            f.write(json.dumps({"meta": {"body": unique_text(i)}}) + "\n")
    pq.write_table(pa.table({"body": [unique_text(10 + i) for i in range(10)] + [None]}), root / "b.parquet")
    c = IngestConfig(corpus=[str(root / "*")], text_field="meta.body", eval_percent=50)
    with pytest.raises(InputDataError, match=r"b.parquet: no column 'meta.body' \(columns: body\)"):
        ing.run_ingest(c, str(tmp_path / "o1"))
    assert not [n for n in os.listdir(tmp_path / "o1") if n.startswith("Split")]  # nothing published
    ing.run_ingest(c.model_copy(update={"corpus": [str(root / "a.jsonl.gz")]}), str(tmp_path / "o2"))
    got = read_split(tmp_path / "o2", "train") + read_split(tmp_path / "o2", "eval")
    assert sorted(d["text"] for d in got) == sorted(unique_text(i) for i in range(10))
    r = ing.run_ingest(c.model_copy(update={"corpus": [str(root / "b.parquet")], "text_field": "body"}), str(tmp_path / "o3"))
    assert sum(r["documents"].values()) == 10 and r["skipped"]["missing_text_field"] == 1


@pytest.mark.parametrize(
    "line,message",
    [
        ('{"text": "unterminated', r"docs.jsonl:3: malformed JSON: .*\(ingest.strict\)$"),
        ('{"body": "x"}', r"docs.jsonl:3: field 'text' is missing, not a string \(ingest.strict\)$"),
    ],
)
def test_strict_jsonl_fails_naming_file_and_line_and_publishes_nothing(tmp_path, line, message):
    lines = [json.dumps({"text": unique_text(i)}) for i in range(2)] + [line]
    corpus = make_corpus(tmp_path / "c", {"docs.jsonl": ("\n".join(lines) + "\n").encode()})
    out = tmp_path / "out"
    with pytest.raises(InputDataError, match=message):
        ing.run_ingest(IngestConfig(corpus=[str(corpus / "docs.jsonl")], strict=True), str(out))
    assert os.listdir(out) == []  # no published split, no staging folder


def test_invalid_utf8_fails_when_strict(corpus, tmp_path):
    make_corpus(corpus, {"pkg/latin1.py": "s = 'caf\xe9'\n".encode("latin-1")})
    with pytest.raises(InputDataError, match=r"latin1.py: invalid UTF-8 at byte 8"):
        ing.run_ingest(cfg(corpus, on_invalid_utf8="fail"), str(tmp_path / "out"))


def test_fingerprint_changes_with_the_corpus(corpus):
    before = ing.corpus_fingerprint(ing.list_corpus_files(cfg(corpus)))
    assert before == ing.corpus_fingerprint(ing.list_corpus_files(cfg(corpus)))
    (corpus / "pkg" / "mod1.py").write_bytes(b"changed = True  # longer than before\n")
    assert before != ing.corpus_fingerprint(ing.list_corpus_files(cfg(corpus)))


def test_missing_directory_is_named(tmp_path):
    with pytest.raises(InputDataError, match=f"corpus directory not found: {tmp_path}/nope"):
        ing.list_corpus_files(IngestConfig(corpus=[str(tmp_path / "nope")]))


def test_unreadable_file_is_named(corpus, tmp_path):
    os.symlink(tmp_path / "gone.py", corpus / "pkg" / "dangling.py")
    with pytest.raises(InputDataError, match=r"cannot read corpus file .*dangling.py"):
        ing.list_corpus_files(cfg(corpus))


def test_glob_corpus(corpus):
    files = ing.list_corpus_files(IngestConfig(corpus=[str(corpus / "pkg" / "mod1*.py")]))
    assert sorted(f.relpath for f in files) == sorted(["mod1.py"] + [f"mod1{i}.py" for i in range(10)])
    with pytest.raises(InputDataError, match="corpus glob matches no files"):
        ing.list_corpus_files(IngestConfig(corpus=[str(corpus / "*.rs")]))


def test_empty_split_fails_and_publishes_nothing(tmp_path):
    corpus = make_corpus(tmp_path / "c", {"only.py": unique_text(1).encode()})
    out = tmp_path / "out"
    with pytest.raises(InputDataError, match="empty 'eval' split"):
        ing.run_ingest(IngestConfig(corpus=[str(corpus)], eval_percent=1), str(out))
    assert os.listdir(out) == []  # no half-written split, no staging folder


def test_python_stdlib_is_the_running_interpreters():
    assert ing.resolve_root("python-stdlib") == sysconfig.get_paths()["stdlib"]
    files = ing.list_corpus_files(IngestConfig(max_files=10))
    assert len(files) == 10 and all(f.relpath.endswith(".py") for f in files)
    assert all(os.path.isfile(f.uri) for f in files)


def test_corrupt_gzip_jsonl_is_a_clear_error(tmp_path):
    good = gzip.compress(b'{"text": "x = 1"}\n' * 50)
    corpus = make_corpus(tmp_path / "c", {"a.jsonl.gz": good[:20] + b"\x00garbage" * 20 + good[-8:]})
    with pytest.raises(InputDataError, match=r"cannot read corpus file .*a.jsonl.gz"):
        ing.run_ingest(IngestConfig(corpus=[str(corpus)], include=["*.jsonl.gz"]), str(tmp_path / "o"))
