"""Line-numbered JSONL reading (plain or gzipped) shared by the task and sample readers."""

from __future__ import annotations

import gzip
import json
import os
import zlib
from collections.abc import Iterator

from common.errors import InputDataError


def iter_json_lines(path: str | os.PathLike[str]) -> Iterator[tuple[int, object | None, str | None]]:
    """Yield (line number, parsed value, None) or (line number, None, parse error) per non-blank
    line. Callers decide whether a bad line stops the run (task files) or is recorded (samples).

    A file that cannot be opened, a broken gzip stream or bytes that are not UTF-8 raise
    InputDataError naming the file (and the line, where known).
    """
    path = os.fspath(path)
    opener = gzip.open if path.endswith(".gz") else open
    lineno = 0
    try:
        with opener(path, "rb") as f:
            for lineno, raw in enumerate(f, start=1):
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    yield lineno, None, f"not UTF-8 ({e.reason} at byte {e.start})"
                    continue
                if not text.strip():
                    continue
                try:
                    yield lineno, json.loads(text), None
                except json.JSONDecodeError as e:
                    yield lineno, None, f"not valid JSON ({e.msg} at column {e.colno})"
    except FileNotFoundError:
        raise InputDataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputDataError(f"{path}: is a directory, expected a .jsonl or .jsonl.gz file") from None
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        where = f"{path}:{lineno + 1}" if lineno else path
        raise InputDataError(f"{where}: cannot read ({e})") from None
