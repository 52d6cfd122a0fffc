"""Atomic writes: readers never see a half-written file, and a crash leaves the old file.

Published outputs get the permissions a plain ``open()`` / ``mkdir`` would give them (0666 /
0777 less the process umask: 0644 / 0755 under the usual 022). ``tempfile.mkstemp`` and
``mkdtemp`` create 0600 / 0700 on purpose, which would leave every renamed output private to
its writer; so the staging file / folder is created here with the kernel applying the umask
(``os.open(..., 0o666)`` / ``os.mkdir(..., 0o777)``), which also honours default ACLs and,
unlike reading the umask with ``os.umask`` set-and-restore, cannot race other threads.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

_ATTEMPTS = 100  # random 64-bit names: a clash is already astronomically unlikely


def _sibling_name(parent: Path, prefix: str, suffix: str) -> Path:
    return parent / f"{prefix}{secrets.token_hex(8)}{suffix}"


def make_temp_dir(parent: str | os.PathLike[str], prefix: str) -> str:
    """Create a new, empty, uniquely named folder in ``parent`` with umask-governed permissions
    (where ``tempfile.mkdtemp`` gives 0700). Used to stage a folder that is then renamed into
    place, so the published folder is as readable as any other the process creates."""
    parent = Path(parent)
    for _ in range(_ATTEMPTS):
        tmp = _sibling_name(parent, prefix, "")
        try:
            os.mkdir(tmp, 0o777)
        except FileExistsError:
            continue
        return str(tmp)
    raise FileExistsError(f"{parent}: could not create a unique temporary folder {prefix}*")


def _create_temp_file(parent: Path, name: str) -> tuple[int, Path]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(_ATTEMPTS):
        tmp = _sibling_name(parent, f".{name}.", ".tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{parent}: could not create a unique temporary file .{name}.*.tmp")


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    if "://" in str(path):  # object stores: write a sibling then rename (gfile handles it)
        import tensorflow as tf

        tmp = f"{path}.tmp-{os.getpid()}"
        with tf.io.gfile.GFile(tmp, "wb") as f:
            f.write(data)
        tf.io.gfile.rename(tmp, str(path), overwrite=True)
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp_file(path.parent, path.name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")
