"""Normalisation and quality filters of one document (pure functions, no Beam, no TF).

``normalise`` makes equal texts byte-equal (so the content hash is the exact-dedup key):
a leading BOM is dropped, CRLF / CR line ends become LF, and the text is put in Unicode NFC.
Nothing else changes — code is whitespace-sensitive.

``reject_reason`` returns the name of the first filter a document fails (the name is the
report's counter: ``filter_<name>``) or None when it passes.
"""

from __future__ import annotations

import re
import unicodedata

from configs.schema import QualityFilters

# Filter names, in the order they are checked (cheap first).
FILTERS = ("empty", "too_short", "too_long", "long_line", "minified", "low_alnum", "generated")

_NOT_ALNUM = re.compile(r"[\W_]+")  # everything but letters and digits
_SPACE = re.compile(r"\s+")


def normalise(text: str) -> str:
    if text.startswith("\ufeff"):
        text = text[1:]
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    # is_normalized is a fast scan; most text already is NFC.
    if not unicodedata.is_normalized("NFC", text):
        text = unicodedata.normalize("NFC", text)
    return text


def alnum_fraction(text: str) -> float:
    """Letters and digits / non-whitespace characters (0 for all-whitespace text)."""
    visible = len(_SPACE.sub("", text))
    if visible == 0:
        return 0.0
    alnum = len(_NOT_ALNUM.sub("", text))
    return alnum / visible


def reject_reason(text: str, f: QualityFilters) -> str | None:
    if not text.strip():
        return "empty"
    n = len(text)
    if n < f.min_chars:
        return "too_short"
    if n > f.max_chars:
        return "too_long"
    lines = text.split("\n")
    if max(map(len, lines)) > f.max_line_length:
        return "long_line"
    if n / len(lines) > f.max_mean_line_length:
        return "minified"
    if alnum_fraction(text) < f.min_alnum_fraction:
        return "low_alnum"
    if f.generated_markers and f.generated_scan_lines:
        head = "\n".join(lines[: f.generated_scan_lines]).lower()
        if any(m.lower() in head for m in f.generated_markers):
            return "generated"
    return None
