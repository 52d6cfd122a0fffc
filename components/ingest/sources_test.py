"""Corpus listing and reading messages (no Beam): what a user sees when the corpus is not what
the config expects."""

import pytest

from components.common.errors import InputDataError
from components.ingest import sources as src
from configs.schema import IngestConfig


def _tree(root, files: dict[str, bytes]):
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


def test_a_directory_missing_every_pattern_lists_patterns_and_the_extensions_it_has(tmp_path):
    _tree(tmp_path, {"a.jsonl": b"{}\n", "b.jsonl": b"{}\n", "sub/c.jsonl.gz": b"", "d.md": b"x", "LICENSE": b"x"})
    with pytest.raises(InputDataError) as e:
        src.list_corpus_files(IngestConfig(corpus=[str(tmp_path)], include=["*.py"]))
    msg = str(e.value)
    assert "\n" not in msg
    assert f"corpus {tmp_path}: none of its 5 files match include=['*.py']" in msg
    assert "it has 2 .jsonl, " in msg and "1 .jsonl.gz" in msg and "1 .md" in msg and "1 (none)" in msg
    assert "--include" in msg


def test_an_empty_directory_says_so(tmp_path):
    with pytest.raises(InputDataError, match=rf"corpus {tmp_path} has no files \(include=\['\*.py'\]"):
        src.list_corpus_files(IngestConfig(corpus=[str(tmp_path)], include=["*.py"], exclude=[]))


@pytest.mark.parametrize("name,ext", [
    ("a.jsonl", ".jsonl"), ("a.JSONL.GZ", ".jsonl.gz"), ("x.tar.gz", ".tar.gz"), ("a.gz", ".gz"),
    ("Makefile", "(none)"), (".bashrc", "(none)"), ("v1.2.parquet", ".parquet"),
])
def test_extension(name, ext):
    assert src.extension(name) == ext


def test_sniff_binary_names_binary_text_files_only(tmp_path):
    _tree(tmp_path, {"a.bin": b"\x00\x01\x02" * 10, "b.txt": b"hello\n", "c.txt": "hé".encode("utf-16"),
                     "d.jsonl": b"\x00not sniffed: JSONL is parsed, not sniffed\n"})
    cfg = IngestConfig(corpus=[str(tmp_path)], include=["*"])
    binary, sniffed = src.sniff_binary(src.list_corpus_files(cfg), cfg)
    assert sniffed == 3
    assert sorted(f.relpath for f in binary) == ["a.bin", "c.txt"]  # UTF-16 text has NUL bytes
    assert src.sniff_binary(src.list_corpus_files(cfg), cfg, limit=1)[1] == 1


def test_skipped_binary_files_are_counted(tmp_path):
    _tree(tmp_path, {"a.bin": b"\x00" * 10})
    cfg = IngestConfig(corpus=[str(tmp_path)], include=["*"])
    counts = []
    assert list(src.read_file(src.list_corpus_files(cfg)[0], cfg, counts.append)) == []
    assert counts == ["files_read", "skipped_binary"]


def test_invalid_utf8_fail_names_file_and_line(tmp_path):
    data = b"line one\nline two \xff here\n"
    with pytest.raises(InputDataError, match=r"^f\.txt: invalid UTF-8 at byte 18 \(line 2\): 0xff "
                       r"\(ingest\.on_invalid_utf8=fail\)$"):
        src.decode_utf8(data, "fail", "f.txt", lambda _: None)
    _tree(tmp_path, {"d.jsonl": b'{"text": "ok"}\n{"text": "bad \xfe"}\n'})
    cfg = IngestConfig(corpus=[str(tmp_path)], include=["*.jsonl"], on_invalid_utf8="fail")
    with pytest.raises(InputDataError, match=rf"^{tmp_path}/d\.jsonl:2: invalid UTF-8 at byte 14 of the line: 0xfe"):
        list(src.read_file(src.list_corpus_files(cfg)[0], cfg, lambda _: None))
