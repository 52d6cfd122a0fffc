"""Test helpers shared by the data phases: write text examples like ingest does, without Beam."""

from __future__ import annotations

import hashlib
import os

from components.common import shards as sh


def write_text_examples(out: str, texts_by_split: dict[str, list[str]], num_shards: int = 2, source: str = "test") -> None:
    """``out/Split-*/data_tfrecord-*.gz`` in ingest's format and order (shard by doc_id hash,
    sorted by doc_id)."""
    from components.ingest.ingest import Document, to_example

    for split, texts in texts_by_split.items():
        by_shard: dict[int, list] = {}
        for i, t in enumerate(texts):
            doc_id = hashlib.sha256(t.encode()).hexdigest()
            by_shard.setdefault(sh.shard_of(doc_id, num_shards), []).append(Document(t, f"doc{i}.py", source, doc_id))
        for shard in range(num_shards):
            docs = sorted(by_shard.get(shard, []), key=lambda d: d.doc_id)
            sh.write_shard(os.path.join(out, f"Split-{split}", sh.shard_name(shard, num_shards)), map(to_example, docs))
