"""Tokenizer training on real code (a slice of the stdlib): ids, reload, lossless round trip."""

import hashlib
import json

import pytest
from tokenizers import Tokenizer

from components.common.testdata import write_text_examples
from components.ingest.sources import list_corpus_files
from components.tokenizer import tokenizer as tkz
from configs.schema import IngestConfig, TokenizerConfig

CFG = TokenizerConfig(vocab_size=800, roundtrip_check_docs=10_000, max_training_bytes=None)


@pytest.fixture(scope="module")
def corpus():
    files = list_corpus_files(IngestConfig(max_files=40, max_file_bytes=60_000))
    return [open(f.uri, encoding="utf-8").read() for f in files if f.size < 60_000]


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    write_text_examples(str(root / "ex"), {"train": corpus})
    meta = tkz.train_from_examples(str(root / "ex"), str(root / "tok"), CFG)
    return root, meta


def test_special_tokens_come_first_in_config_order(trained):
    _, meta = trained
    expected = [CFG.pad_token, CFG.bos_token, CFG.eos_token, *CFG.special_tokens]
    assert meta["special_tokens"] == {t: i for i, t in enumerate(expected)}
    assert (meta["pad_id"], meta["bos_id"], meta["eos_id"]) == (0, 1, 2)
    assert meta["vocab_size"] == 800
    assert {"<|user|>", "<|assistant|>", "<|tool_call|>", "<think>", "</think>"} <= set(meta["special_tokens"])


def test_saved_file_reloads_with_identical_encodings(trained, corpus):
    root, _ = trained
    again = tkz.load(str(root / "tok"))
    plain = Tokenizer.from_file(str(root / "tok" / "tokenizer.json"))  # what any HF user does
    for text in corpus[:5]:
        assert again.encode(text).ids == plain.encode(text).ids
    assert json.loads((root / "tok" / "tokenizer_meta.json").read_text())["vocab_size"] == 800


def test_round_trip_is_lossless_on_the_corpus_and_odd_text(trained, corpus):
    root, meta = trained
    tok = tkz.load(str(root / "tok"))
    odd = ["caf\u00e9 \U0001f600 \u4e2d\u6587", "tabs\tand\r\ncrlf  \n\n  ", " leading space", "\x00\x01 control", "<|eos|> <think> as text"]
    for text in corpus + odd:
        ids = tok.encode(text, add_special_tokens=False).ids
        assert tok.decode(ids, skip_special_tokens=False) == text
    # special-token strings inside data are data: never the control ids
    assert meta["eos_id"] not in tok.encode("x <|eos|> y").ids
    assert meta["roundtrip_checked_documents"] == len(corpus)


def test_training_is_deterministic(trained, corpus, tmp_path):
    root, _ = trained
    tkz.train_from_examples(str(root / "ex"), str(tmp_path / "again"), CFG)
    assert (tmp_path / "again" / "tokenizer.json").read_bytes() == (root / "tok" / "tokenizer.json").read_bytes()


def test_byte_budget_takes_a_doc_hash_ordered_prefix(trained, corpus, tmp_path):
    root, _ = trained
    # reference: documents in sha256 order, added while the running total stays within budget
    ordered = sorted(corpus, key=lambda t: hashlib.sha256(t.encode()).hexdigest())
    budget = sum(len(t.encode()) for t in ordered[:7]) + 1
    meta = tkz.train_from_examples(
        str(root / "ex"), str(tmp_path / "b"), CFG.model_copy(update={"max_training_bytes": budget})
    )
    assert meta["trained_on"]["documents"] == 7


def test_missing_split_is_a_clear_error(tmp_path):
    with pytest.raises(Exception, match="no Split-train shards under"):
        tkz.train_from_examples(str(tmp_path), str(tmp_path / "t"), CFG)
