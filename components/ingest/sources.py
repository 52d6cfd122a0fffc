"""Corpus sources: list the files a config selects, and read each into raw records.

A corpus entry is a directory (walked, filtered by include/exclude), a glob, a single file, or
"python-stdlib". Every file is addressed through ``tf.io.gfile``, so local paths and
object-store URIs (gs://, s3://, hdfs://) work alike. One file yields:
  text      one record: the file's bytes (decoded later, by the configured UTF-8 policy);
  jsonl     one record per non-blank line, the string at ``text_field`` (.jsonl.gz too);
  parquet   one record per row, the string in column ``text_field``.
Problems are counted through ``count(name)`` (Beam counters in the pipeline) or, for what
cannot be skipped, raised as InputDataError naming file[:line] and field.
"""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import io
import json
import logging
import os
import sysconfig
import zlib
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import tensorflow as tf

from components.common.errors import InputDataError
from configs.schema import IngestConfig

STDLIB = "python-stdlib"
_BINARY_SNIFF_BYTES = 8192
_JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".ndjson", ".ndjson.gz")

Counter = Callable[[str], None]


@dataclass(frozen=True)
class SourceFile:
    uri: str  # what tf.io.gfile opens
    relpath: str  # relative to its corpus root, '/'-separated
    source: str  # the corpus entry it came from (as written in the config)
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class RawRecord:
    data: bytes | str  # bytes: a whole text file (not decoded yet); str: a JSONL/Parquet value
    relpath: str  # 'pkg/mod.py', 'data.jsonl:17' (1-based line), 'part-0.parquet:#3' (row)
    source: str
    uri: str  # the file, for error messages


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


def _reason(e: BaseException) -> str:
    if isinstance(e, tf.errors.OpError):
        return e.message.splitlines()[0]
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e)


def _stat(uri: str) -> tuple[int, int]:
    try:
        st = tf.io.gfile.stat(uri)
    except (tf.errors.OpError, OSError) as e:
        raise InputDataError(f"cannot read corpus file {uri}: {_reason(e)}") from None
    return int(st.length), int(st.mtime_nsec)


def list_corpus_files(cfg: IngestConfig) -> list[SourceFile]:
    """Every file the config selects, sampled to ``max_files`` deterministically.

    Raises InputDataError naming the entry when a directory/glob does not exist or matches
    nothing, or naming the file when one cannot be stat'ed (a dangling link).
    """
    files: list[SourceFile] = []
    missed: Tally[str] = Tally()  # extensions of the walked files the patterns left out
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
                    files.append(SourceFile(uri, rel, entry, *_stat(uri)))
            continue
        if not tf.io.gfile.isdir(root):
            if tf.io.gfile.exists(root):  # a single file
                files.append(SourceFile(root, os.path.basename(root), entry, *_stat(root)))
                continue
            raise InputDataError(f"corpus directory not found: {root}" + (f" ({entry})" if root != entry else ""))
        for dirpath, _dirs, names in tf.io.gfile.walk(root):
            for name in names:
                uri = os.path.join(dirpath, name)
                rel = os.path.relpath(uri, root).replace(os.sep, "/")
                if _matches(rel, cfg.include, cfg.exclude):
                    files.append(SourceFile(uri, rel, entry, *_stat(uri)))
                else:
                    missed[extension(name)] += 1
    if not files:
        raise InputDataError(_nothing_selected(cfg, missed))
    # A hash order is a fair sample of a directory tree (sorted order would take one package).
    files.sort(key=lambda f: hashlib.sha256(f"{f.source}/{f.relpath}".encode()).hexdigest())
    if cfg.max_files is not None:
        files = files[: cfg.max_files]
    return files


def extension(name: str) -> str:
    """'.jsonl', '.jsonl.gz', '(none)': what a user would put after '*' in an include pattern."""
    parts = name.lower().lstrip(".").split(".")
    if len(parts) == 1:
        return "(none)"
    if parts[-1] in ("gz", "bz2", "xz", "zst") and len(parts) > 2:
        return f".{parts[-2]}.{parts[-1]}"
    return f".{parts[-1]}"


def _nothing_selected(cfg: IngestConfig, missed: Tally[str]) -> str:
    where = f"corpus {', '.join(cfg.corpus)}"
    tried = f"include={cfg.include}" + (f", exclude={cfg.exclude}" if cfg.exclude else "")
    if not missed:
        return f"{where} has no files ({tried})"
    seen = ", ".join(f"{n} {ext}" for ext, n in missed.most_common(8))
    more = f" and {len(missed) - 8} more extensions" if len(missed) > 8 else ""
    return (
        f"{where}: none of its {sum(missed.values())} files match {tried}; it has {seen}{more} "
        "(pick patterns with --include or ingest.include, e.g. --include '*.jsonl')"
    )


def sniff_binary(files: Iterable[SourceFile], cfg: IngestConfig, limit: int = 32) -> tuple[list[SourceFile], int]:
    """(binary files, files sniffed) among the first ``limit`` files read as text.

    A preflight check: the run would skip binary files one by one (counted as skipped_binary in
    the ingest report), and a corpus of nothing else would end in an empty split that does not
    say why. Reads at most 8 KiB of each sniffed file.
    """
    binary, sniffed = [], 0
    for f in files:
        if sniffed >= limit:
            break
        if file_format(f, cfg) != "text" or f.size == 0 or f.size > cfg.max_file_bytes:
            continue
        sniffed += 1
        try:
            with _open(f.uri) as fh:
                head = fh.read(_BINARY_SNIFF_BYTES)
        except (tf.errors.OpError, OSError, EOFError, zlib.error) as e:
            raise InputDataError(f"cannot read corpus file {f.uri}: {_reason(e)}") from None
        if b"\0" in head:
            binary.append(f)
    return binary, sniffed


def corpus_fingerprint(files: Iterable[SourceFile]) -> str:
    """Changes when any selected file is added, removed, resized or touched.

    The pipeline passes it to the ingest component as a parameter, so the TFX cache re-runs
    ingest exactly when its input changed.
    """
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.source}\0{f.relpath}\0{f.size}\0{f.mtime_ns}\n".encode())
    return h.hexdigest()


def file_format(f: SourceFile, cfg: IngestConfig) -> str:
    if cfg.format != "auto":
        return cfg.format
    name = f.uri.lower()
    if name.endswith(_JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    return "text"


def _open(uri: str):
    """A binary file object; .gz files are decompressed on the fly."""
    fh = tf.io.gfile.GFile(uri, "rb")
    return gzip.GzipFile(fileobj=fh) if uri.endswith(".gz") else fh


def _field(obj: object, path: str) -> object:
    """obj['a']['b'] for 'a.b'; None when any step is missing."""
    for part in path.split("."):
        if not isinstance(obj, dict) or part not in obj:
            return None
        obj = obj[part]
    return obj


def _parquet_batches(pf, column: str, uri: str):
    """Batches of one column, streamed; a corrupt page is an error naming the file."""
    import pyarrow as pa

    it = pf.iter_batches(columns=[column], batch_size=1024)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except pa.ArrowException as e:
            raise InputDataError(f"{uri}: cannot read Parquet data ({e})") from None
        yield batch


def read_file(f: SourceFile, cfg: IngestConfig, count: Counter) -> Iterator[RawRecord]:
    """The raw records of one corpus file (see the module docstring)."""
    count("files_read")
    try:
        fmt = file_format(f, cfg)
        if fmt == "jsonl":
            yield from _read_jsonl(f, cfg, count)
        elif fmt == "parquet":
            yield from _read_parquet(f, cfg, count)
        else:
            yield from _read_text(f, cfg, count)
    except (tf.errors.OpError, OSError, EOFError, zlib.error) as e:
        # zlib.error: a corrupt .gz body (it is not an OSError)
        raise InputDataError(f"cannot read corpus file {f.uri}: {_reason(e)}") from None


def _read_text(f: SourceFile, cfg: IngestConfig, count: Counter) -> Iterator[RawRecord]:
    if f.size > cfg.max_file_bytes:  # never read a 50 MB blob just to throw it away
        count("skipped_too_large")
        return
    with _open(f.uri) as fh:
        data = fh.read()
    if not data:
        count("skipped_empty")
        return
    if b"\0" in data[:_BINARY_SNIFF_BYTES]:  # what git and grep call binary
        count("skipped_binary")
        logging.info("%s: binary (a NUL byte in the first 8 KiB), skipped", f.uri)
        return
    yield RawRecord(data, f.relpath, f.source, f.uri)


def decode_utf8(data: bytes, policy: str, where: str, count: Counter, line: int | None = None) -> str | None:
    """UTF-8 text by the ``on_invalid_utf8`` policy: None = skipped (counted).

    ``where`` names the file; ``line``: the line ``data`` is (JSONL), else the error counts
    the line within ``data`` (a whole text file).
    """
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        if policy == "fail":
            if line is None:
                nl = data.count(b"\n", 0, e.start) + 1
                at = f"{where}: invalid UTF-8 at byte {e.start} (line {nl})"
            else:
                at = f"{where}:{line}: invalid UTF-8 at byte {e.start} of the line"
            raise InputDataError(f"{at}: 0x{data[e.start]:02x} (ingest.on_invalid_utf8=fail)") from None
        if policy == "replace":
            count("invalid_utf8_replaced")
            return data.decode("utf-8", errors="replace")
        count("invalid_utf8_skipped")
        return None


def _read_jsonl(f: SourceFile, cfg: IngestConfig, count: Counter) -> Iterator[RawRecord]:
    with _open(f.uri) as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{f.uri}:{lineno}"
            text_line = decode_utf8(line, cfg.on_invalid_utf8, f.uri, count, line=lineno)
            if text_line is None:
                continue
            try:
                obj = json.loads(text_line)
            except json.JSONDecodeError as e:
                if cfg.strict:
                    raise InputDataError(f"{where}: malformed JSON: {e.msg} (column {e.colno}) (ingest.strict)") from None
                logging.warning("%s: malformed JSON line skipped (%s)", where, e.msg)
                count("jsonl_malformed")
                continue
            text = _field(obj, cfg.text_field)
            if not isinstance(text, str):
                got = "missing" if text is None else f"a {type(text).__name__}"
                if cfg.strict:
                    raise InputDataError(f"{where}: field {cfg.text_field!r} is {got}, not a string (ingest.strict)")
                count("missing_text_field")
                continue
            yield RawRecord(text, f"{f.relpath}:{lineno}", f.source, where)


def _read_parquet(f: SourceFile, cfg: IngestConfig, count: Counter) -> Iterator[RawRecord]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with tf.io.gfile.GFile(f.uri, "rb") as fh:
        # Parquet needs random access; gfile files are seekable but buffering the whole file
        # keeps pyarrow's many small reads off object stores.
        try:
            pf = pq.ParquetFile(io.BytesIO(fh.read()))
        except pa.ArrowException as e:
            raise InputDataError(f"{f.uri}: not a readable Parquet file ({e})") from None
    names = pf.schema_arrow.names
    if cfg.text_field not in names:
        raise InputDataError(f"{f.uri}: no column {cfg.text_field!r} (columns: {', '.join(names)})")
    col_type = pf.schema_arrow.field(cfg.text_field).type
    if not (pa.types.is_string(col_type) or pa.types.is_large_string(col_type)):
        raise InputDataError(f"{f.uri}: column {cfg.text_field!r} is {col_type}, not a string")
    row = 0
    for batch in _parquet_batches(pf, cfg.text_field, f.uri):
        for value in batch.column(0).to_pylist():
            if value is None:
                if cfg.strict:
                    raise InputDataError(f"{f.uri}: row {row}: {cfg.text_field!r} is null (ingest.strict)")
                count("missing_text_field")
            else:
                yield RawRecord(value, f"{f.relpath}:#{row}", f.source, f"{f.uri}:#{row}")
            row += 1
