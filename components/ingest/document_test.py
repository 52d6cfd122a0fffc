import tensorflow as tf

from components.ingest.document import Document, parse_example, to_example


def test_round_trip_and_derived_features():
    doc = Document(text="def f():\n    return 'é'\n", relpath="pkg/m.py", source="python-stdlib", doc_id="ab" * 32)
    record = to_example(doc)
    assert parse_example(record) == doc
    f = tf.train.Example.FromString(record).features.feature
    assert f["num_bytes"].int64_list.value == [len(doc.text.encode("utf-8"))]  # 'é' is 2 bytes
    assert f["num_lines"].int64_list.value == [2]
    # a last line without a newline still counts
    no_nl = tf.train.Example.FromString(to_example(Document("a\nb", "x", "s", "0" * 64))).features.feature
    assert no_nl["num_lines"].int64_list.value == [2]
    assert to_example(doc) == record  # deterministic bytes (shards are compared byte for byte)
