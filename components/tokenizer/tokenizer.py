"""Byte-level BPE with HF ``tokenizers``: train on the train split, save, reload, check.

The tokenizer has no normaliser (ingest already normalised the text) and a byte-level
pre-tokenizer/decoder, so every string encodes and decodes back to itself: ``check_roundtrip``
verifies it on the corpus after training. Ids 0, 1, 2 are PAD, BOS, EOS; the configured special
tokens (chat roles, tool calls, think markers) follow in config order, then the 256 byte
symbols and the learned merges.

Artifact layout (``save``):
  tokenizer.json        the HF tokenizers file (``Tokenizer.from_file`` / ``load`` read it)
  tokenizer_meta.json   special-token ids, actual vocab size, training and round-trip counts
"""

from __future__ import annotations

import heapq
import json
import os
from collections.abc import Iterable, Iterator

import tensorflow as tf
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from components.common.errors import InputDataError
from components.common.fileio import atomic_write_json, atomic_write_text
from components.ingest.document import parse_example
from configs.schema import TokenizerConfig

TOKENIZER_FILE = "tokenizer.json"
META_FILE = "tokenizer_meta.json"


def special_tokens(cfg: TokenizerConfig) -> list[str]:
    return [cfg.pad_token, cfg.bos_token, cfg.eos_token, *cfg.special_tokens]


def _parse(record: bytes) -> tuple[str, str, str]:
    d = parse_example(record)
    return d.doc_id, d.text, d.relpath


def _shard_docs(path: str) -> Iterator[tuple[str, str, str]]:
    for rec in tf.data.TFRecordDataset(path, compression_type="GZIP"):
        yield _parse(rec.numpy())


def iter_split(examples_uri: str, split: str = "train") -> Iterator[tuple[str, str, str]]:
    """(doc_id, text, path) of a split's examples in doc_id order.

    Ingest sorts each shard by doc_id, so merging the shards gives one global order that is a
    uniform shuffle (doc_id is a content hash) and the same for any shard count.
    """
    paths = sorted(tf.io.gfile.glob(os.path.join(examples_uri, f"Split-{split}", "*.gz")))
    if not paths:
        raise InputDataError(f"no Split-{split} shards under {examples_uri}")
    return heapq.merge(*(_shard_docs(p) for p in paths), key=lambda d: d[0])


def build(cfg: TokenizerConfig) -> tuple[Tokenizer, trainers.BpeTrainer]:
    tok = Tokenizer(models.BPE())  # no unk token: 256 byte symbols cover every input
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=special_tokens(cfg),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    return tok, trainer


def train(texts: Iterable[str], cfg: TokenizerConfig) -> Tokenizer:
    tok, trainer = build(cfg)
    tok.train_from_iterator(texts, trainer)
    # Corpus text containing e.g. "<|eos|>" is data, not a control token: encode it as bytes.
    tok.encode_special_tokens = True
    return tok


def check_roundtrip(tok: Tokenizer, docs: Iterable[tuple[str, str]]) -> int:
    """Encode → decode every (path, text); raise naming the first document that differs."""
    n = 0
    for path, text in docs:
        ids = tok.encode(text, add_special_tokens=False).ids
        back = tok.decode(ids, skip_special_tokens=False)
        if back != text:
            at = next((i for i, (a, b) in enumerate(zip(back, text, strict=False)) if a != b), min(len(back), len(text)))
            raise InputDataError(f"tokenizer round trip is lossy on {path} at character {at}")
        n += 1
    return n


def meta(tok: Tokenizer, cfg: TokenizerConfig, **extra) -> dict:
    ids = {t: tok.token_to_id(t) for t in special_tokens(cfg)}
    return {
        "vocab_size": tok.get_vocab_size(with_added_tokens=True),
        "requested_vocab_size": cfg.vocab_size,
        "pad_id": ids[cfg.pad_token],
        "bos_id": ids[cfg.bos_token],
        "eos_id": ids[cfg.eos_token],
        "special_tokens": ids,
        **extra,
    }


def save(tok: Tokenizer, out_uri: str, meta_obj: dict) -> None:
    atomic_write_text(os.path.join(out_uri, TOKENIZER_FILE), tok.to_str())
    atomic_write_json(os.path.join(out_uri, META_FILE), meta_obj)


def load(uri: str) -> Tokenizer:
    """The tokenizer of an artifact folder (or a tokenizer.json path), any gfile URI."""
    path = uri if uri.endswith(".json") else os.path.join(uri, TOKENIZER_FILE)
    with tf.io.gfile.GFile(path, "r") as f:
        tok = Tokenizer.from_str(f.read())
    tok.encode_special_tokens = True
    return tok


def load_meta(uri: str) -> dict:
    with tf.io.gfile.GFile(os.path.join(uri, META_FILE), "r") as f:
        return json.load(f)


def train_from_examples(examples_uri: str, out_uri: str, cfg: TokenizerConfig) -> dict:
    """Train on ``examples_uri``'s train split, check the round trip, save; returns the meta."""
    budget = cfg.max_training_bytes
    stats = {"documents": 0, "bytes": 0}
    check: list[tuple[str, str]] = []

    def texts() -> Iterator[str]:
        for _doc_id, text, path in iter_split(examples_uri, "train"):
            n = len(text.encode("utf-8"))
            if budget is not None and stats["bytes"] + n > budget and stats["documents"]:
                return
            stats["documents"] += 1
            stats["bytes"] += n
            if len(check) < cfg.roundtrip_check_docs:
                check.append((path, text))
            yield text

    tok = train(texts(), cfg)
    if stats["documents"] == 0:
        raise InputDataError(f"the train split under {examples_uri} has no documents to train a tokenizer on")
    checked = check_roundtrip(tok, check)
    tokens = sum(len(e.ids) for e in tok.encode_batch([t for _, t in check], add_special_tokens=False))
    m = meta(
        tok, cfg,
        trained_on=stats,
        roundtrip_checked_documents=checked,
        bytes_per_token=round(sum(len(t.encode()) for _, t in check) / max(tokens, 1), 4),
    )
    save(tok, out_uri, m)
    return m
