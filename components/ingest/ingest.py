"""Ingest: a corpus of source files → TFRecord shards of tf.train.Example, split train/eval.

Plain functions, no TFX: the component in ``component.py`` is a thin wrapper over
``run_ingest``. Files are addressed through ``tf.io.gfile`` so local paths and object-store
URIs (gs://, s3://, hdfs://) work alike.

Every document becomes one example with features:
  text (bytes, UTF-8 source), path (bytes, relative to its corpus root), source (bytes, the
  corpus entry it came from), doc_id (bytes, sha256 of the text), num_bytes (int64),
  num_lines (int64).
The split is a pure function of the document's content hash, so it does not depend on file
order, worker count or which other files exist.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import sysconfig
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field

import tensorflow as tf

from components.common.errors import InputDataError
from components.common.fileio import atomic_write_json
from configs.schema import IngestConfig

STDLIB = "python-stdlib"
SPLITS = ("train", "eval")
REPORT_FILE = "ingest_report.json"


@dataclass(frozen=True)
class SourceFile:
    uri: str  # what tf.io.gfile opens
    relpath: str  # relative to its corpus root, '/'-separated
    source: str  # the corpus entry it came from (as written in the config)
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class Document:
    text: str
    relpath: str
    source: str
    doc_id: str  # sha256 hex of the UTF-8 text


@dataclass
class IngestReport:
    files_listed: int = 0
    files_sampled: int = 0
    skipped_too_large: int = 0
    skipped_empty: int = 0
    skipped_invalid_utf8: int = 0
    documents: dict[str, int] = field(default_factory=lambda: {s: 0 for s in SPLITS})
    bytes: dict[str, int] = field(default_factory=lambda: {s: 0 for s in SPLITS})
    shards: dict[str, list[str]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_root(entry: str) -> str:
    """A corpus entry as a directory/glob URI; 'python-stdlib' is resolved where we run."""
    if entry == STDLIB:
        return sysconfig.get_paths()["stdlib"]
    return entry


def _is_glob(s: str) -> bool:
    return any(c in s for c in "*?[")


def _matches(relpath: str, include: list[str], exclude: list[str]) -> bool:
    name = relpath.rsplit("/", 1)[-1]
    if include and not any(fnmatch.fnmatch(name, p) or fnmatch.fnmatch(relpath, p) for p in include):
        return False
    return not any(fnmatch.fnmatch(relpath, p) for p in exclude)


def _stat(uri: str) -> tuple[int, int]:
    st = tf.io.gfile.stat(uri)
    return int(st.length), int(st.mtime_nsec)


def list_corpus_files(cfg: IngestConfig) -> list[SourceFile]:
    """Every file the config selects, sampled to ``max_files`` deterministically.

    Raises InputDataError naming the entry when a directory/glob does not exist or matches
    nothing.
    """
    files: list[SourceFile] = []
    for entry in cfg.corpus:
        root = resolve_root(entry)
        if _is_glob(root):
            matched = sorted(tf.io.gfile.glob(root))
            if not matched:
                raise InputDataError(f"corpus glob matches no files: {entry}")
            base = root.split("*", 1)[0].rsplit("/", 1)[0]
            for uri in matched:
                if tf.io.gfile.isdir(uri):
                    continue
                rel = uri[len(base) :].lstrip("/") if uri.startswith(base) else os.path.basename(uri)
                if _matches(rel, [], cfg.exclude):
                    size, mtime = _stat(uri)
                    files.append(SourceFile(uri, rel, entry, size, mtime))
            continue
        if not tf.io.gfile.isdir(root):
            raise InputDataError(f"corpus directory not found: {root}" + (f" ({entry})" if root != entry else ""))
        for dirpath, _dirs, names in tf.io.gfile.walk(root):
            for name in names:
                uri = os.path.join(dirpath, name)
                rel = os.path.relpath(uri, root).replace(os.sep, "/")
                if not _matches(rel, cfg.include, cfg.exclude):
                    continue
                try:
                    size, mtime = _stat(uri)
                except (tf.errors.OpError, OSError) as e:
                    raise InputDataError(f"cannot read corpus file {uri}: {_reason(e)}") from None
                files.append(SourceFile(uri, rel, entry, size, mtime))
    if not files:
        raise InputDataError(
            f"corpus {', '.join(cfg.corpus)} has no files matching include={cfg.include}"
        )
    # A hash order is a fair sample of a directory tree (sorted order would take one package).
    files.sort(key=lambda f: (hashlib.sha256(f"{f.source}/{f.relpath}".encode()).hexdigest()))
    if cfg.max_files is not None:
        files = files[: cfg.max_files]
    return files


def corpus_fingerprint(files: Iterable[SourceFile]) -> str:
    """Changes when any selected file is added, removed, resized or touched.

    The pipeline passes it to the ingest component as a parameter, so the TFX cache re-runs
    ingest exactly when its input changed.
    """
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.source}\0{f.relpath}\0{f.size}\0{f.mtime_ns}\n".encode())
    return h.hexdigest()


def split_for(doc_id: str, eval_percent: int) -> str:
    return "eval" if int(doc_id[:8], 16) % 100 < eval_percent else "train"


def _reason(e: BaseException) -> str:
    if isinstance(e, tf.errors.OpError):
        return e.message.splitlines()[0]
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e)


def read_documents(
    files: Iterable[SourceFile], cfg: IngestConfig, report: IngestReport
) -> Iterator[Document]:
    for f in files:
        if f.size > cfg.max_file_bytes:
            report.skipped_too_large += 1
            continue
        try:
            with tf.io.gfile.GFile(f.uri, "rb") as fh:
                raw = fh.read()
        except (tf.errors.OpError, OSError) as e:
            raise InputDataError(f"cannot read corpus file {f.uri}: {_reason(e)}") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            if cfg.on_invalid_utf8 == "fail":
                raise InputDataError(
                    f"{f.uri}: invalid UTF-8 at byte {e.start} (ingest.on_invalid_utf8=fail)"
                ) from None
            report.skipped_invalid_utf8 += 1
            continue
        if not text.strip():
            report.skipped_empty += 1
            continue
        doc_id = hashlib.sha256(raw).hexdigest()
        yield Document(text=text, relpath=f.relpath, source=f.source, doc_id=doc_id)


def to_example(doc: Document) -> tf.train.Example:
    def b(v: str) -> tf.train.Feature:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v.encode("utf-8")]))

    def i(v: int) -> tf.train.Feature:
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[v]))

    return tf.train.Example(
        features=tf.train.Features(
            feature={
                "text": b(doc.text),
                "path": b(doc.relpath),
                "source": b(doc.source),
                "doc_id": b(doc.doc_id),
                "num_bytes": i(len(doc.text.encode("utf-8"))),
                "num_lines": i(doc.text.count("\n") + (0 if doc.text.endswith("\n") else 1)),
            }
        )
    )


def shard_name(index: int, num_shards: int) -> str:
    # The ExampleGen naming; the .gz suffix tells Beam/TFDV readers the shards are GZIP.
    return f"data_tfrecord-{index:05d}-of-{num_shards:05d}.gz"


def run_ingest(cfg: IngestConfig, output_uri: str, files: list[SourceFile] | None = None) -> IngestReport:
    """Write ``output_uri/Split-{train,eval}/data_tfrecord-*.gz`` and ``ingest_report.json``.

    Each split is written into a hidden temporary folder and renamed into place only when all
    its shards are closed, so a crash never leaves a half-written split published.
    """
    report = IngestReport()
    if files is None:
        files = list_corpus_files(cfg)
    report.files_listed = report.files_sampled = len(files)
    tf.io.gfile.makedirs(output_uri)
    tmp = {s: os.path.join(output_uri, f".tmp-Split-{s}-{uuid.uuid4().hex[:8]}") for s in SPLITS}
    writers: dict[str, list[tf.io.TFRecordWriter]] = {}
    try:
        for s in SPLITS:
            tf.io.gfile.makedirs(tmp[s])
            writers[s] = [
                tf.io.TFRecordWriter(os.path.join(tmp[s], shard_name(i, cfg.num_shards)), "GZIP")
                for i in range(cfg.num_shards)
            ]
        for doc in read_documents(files, cfg, report):
            split = split_for(doc.doc_id, cfg.eval_percent)
            shard = int(doc.doc_id[8:16], 16) % cfg.num_shards
            writers[split][shard].write(to_example(doc).SerializeToString())
            report.documents[split] += 1
            report.bytes[split] += len(doc.text.encode("utf-8"))
        for ws in writers.values():
            for w in ws:
                w.close()
        for s in SPLITS:
            if report.documents[s] == 0:
                total = sum(report.documents.values())
                raise InputDataError(
                    f"ingest produced an empty {s!r} split ({total} documents, "
                    f"eval_percent={cfg.eval_percent}); add files or change ingest.eval_percent"
                )
        for s in SPLITS:
            final = os.path.join(output_uri, f"Split-{s}")
            if tf.io.gfile.exists(final):
                tf.io.gfile.rmtree(final)
            tf.io.gfile.rename(tmp[s], final)
            report.shards[s] = sorted(tf.io.gfile.listdir(final))
    finally:
        for ws in writers.values():
            for w in ws:
                w.close()
        for s in SPLITS:
            if tf.io.gfile.exists(tmp[s]):
                tf.io.gfile.rmtree(tmp[s])
    atomic_write_json(os.path.join(output_uri, REPORT_FILE), report.to_dict())
    return report
