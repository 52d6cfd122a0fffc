"""Atomic writes: re-exported from ``common.fileio``, where they live so that configs/ and model/
can use them without importing components/."""

from common.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text, make_temp_dir

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_write_json", "make_temp_dir"]
