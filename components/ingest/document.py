"""The document record ingest writes and later phases read (one tf.train.Example per document).

Features: text (bytes, UTF-8), path (bytes, relative to its corpus root), source (bytes, the
corpus entry it came from), doc_id (bytes, sha256 hex of the normalised text), num_bytes (int64),
num_lines (int64). Only TF's protos are imported, so Beam workers stay light.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Document:
    text: str
    relpath: str
    source: str
    doc_id: str  # sha256 hex of the normalised UTF-8 text


def to_example(doc: Document) -> bytes:
    from tensorflow.core.example import (  # protos only; TF is imported once per worker
        example_pb2,
        feature_pb2,
    )

    def b(v: str) -> feature_pb2.Feature:
        return feature_pb2.Feature(bytes_list=feature_pb2.BytesList(value=[v.encode("utf-8")]))

    def i(v: int) -> feature_pb2.Feature:
        return feature_pb2.Feature(int64_list=feature_pb2.Int64List(value=[v]))

    raw = doc.text.encode("utf-8")
    ex = example_pb2.Example(
        features=feature_pb2.Features(
            feature={
                "text": b(doc.text),
                "path": b(doc.relpath),
                "source": b(doc.source),
                "doc_id": b(doc.doc_id),
                "num_bytes": i(len(raw)),
                "num_lines": i(doc.text.count("\n") + (0 if doc.text.endswith("\n") else 1)),
            }
        )
    )
    return ex.SerializeToString(deterministic=True)


def parse_example(record: bytes) -> Document:
    """Inverse of ``to_example`` (the derived num_bytes / num_lines are not needed back)."""
    from tensorflow.core.example import example_pb2

    f = example_pb2.Example.FromString(record).features.feature

    def text(name: str) -> str:
        return f[name].bytes_list.value[0].decode("utf-8")

    return Document(text=text("text"), relpath=text("path"), source=text("source"), doc_id=text("doc_id"))
