"""Segment agent trajectories into REASON / ACT / OBSERVATION character spans.

A trajectory is the teacher's Thought / Action text with the loop's Observations appended::

    Thought: <free text>
    Action: {"name": "<tool>", "arguments": {...}}
    Observation: <tool output>

``segment(text)`` returns ``[(start, end, label), ...]``: sorted, non-overlapping, end-exclusive
character offsets into ``text``; the labels' keywords and the whitespace around them are never
inside a span. Conventions (the annotated set in tests/fixtures/agent follows them):

- REASON: a Thought's content; text before the first label; text an Action step carries after
  its JSON call (a teacher that forgot the next "Thought:").
- ACT: the JSON object of the tool call, first ``{`` to its matching ``}`` — a markdown fence
  or ``<tool_call>`` tags around it are not in the span. ReAct's ``Action Input:`` is an
  Action label too (its tool name and its JSON are two ACT spans). An Action with no ``{`` is ACT as a whole (stripped); an
  unfinished JSON object runs from ``{`` to the end of its step.
- OBSERVATION: an Observation's content, up to the next label: text the teacher writes after
  an Observation without a label is read as part of it (the one known miss in the set).
- A JSON object on its own line inside a Thought that parses as ``{"name": str, ...}`` is an
  ACT (the teacher forgot the "Action:" label).

Labels are found at the start of a line, in any case, with optional markdown decoration
(``**Thought:**``, ``### Action``, ``> Observation:``), a step number (``Thought 2:``) and a
``:``/``：``/``-``/``–``/``—`` separator or nothing but the end of the line; ``Action:``
followed by ``{`` or a fence is also found mid-line. The parser never raises on a str: every
malformed case degrades to REASON/ACT text spans, and ``segment_test`` fuzzes it.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from typing import Any

import numpy as np

from common import fileio
from common.errors import InputDataError
from serving.agent.protocol import INLINE_ACTION, LINE_LABEL

REASON, ACT, OBSERVATION = "REASON", "ACT", "OBSERVATION"
LABELS = (REASON, ACT, OBSERVATION)
Span = tuple[int, int, str]

def _kind(keyword: str) -> str:
    keyword = keyword.lower()
    return REASON if keyword.startswith("thought") else OBSERVATION if keyword == "observation" else ACT

_WS = " \t\r"
# The label patterns (a line-start label; an inline "Action: {") live in serving/agent/protocol.py,
# shared with neutralise_labels there, so the loop and the segmenter cannot drift apart.
_LINE_LABEL, _INLINE_ACTION = LINE_LABEL, INLINE_ACTION
# An unlabelled tool call inside a Thought: a line starting with "{" (optionally in a fence).
_BARE_CALL = re.compile(r"^[ \t]*(?:```[A-Za-z]*[ \t\r]*\n[ \t]*)?(?=\{)", re.MULTILINE)
_FENCE_OPEN = re.compile(r"```[\w+-]*[ \t\r]*\n?")  # ```json\n, ```\n, ```json {...

_DECODER = json.JSONDecoder()


def _labels(text: str) -> list[tuple[int, int, str]]:
    """(label start, content start, kind) for every label, sorted, overlaps dropped."""
    found = [(m.start(), m.end(), _kind(m.group("kw"))) for m in _LINE_LABEL.finditer(text)]
    found += [(m.start(), m.end(), ACT) for m in _INLINE_ACTION.finditer(text)]
    found.sort()
    out: list[tuple[int, int, str]] = []
    for start, cstart, kind in found:
        if out and start < out[-1][1]:
            continue
        out.append((start, cstart, kind))
    return out


def _strip(text: str, start: int, end: int) -> tuple[int, int]:
    """Narrow [start, end) to exclude leading/trailing whitespace (unicode-aware)."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _json_end(text: str, start: int, limit: int) -> int | None:
    """End (exclusive) of the JSON-ish object starting at text[start] == "{".

    Valid JSON may run past ``limit`` (a label-like line inside a string); otherwise a brace
    matcher that knows both quote styles ('single-quoted' dicts, trailing commas) must close
    the object before ``limit``. None when the object is unfinished.
    """
    try:
        _, end = _DECODER.raw_decode(text, start)
        return end
    except (ValueError, RecursionError):
        pass
    depth, quote, i = 0, "", start
    while i < limit:
        c = text[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = ""
        elif c in "\"'":
            quote = c
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return None


def _is_call(text: str, start: int, end: int) -> bool:
    """Whether text[start:end] is a JSON object naming a tool."""
    try:
        obj = json.loads(text[start:end])
    except (ValueError, RecursionError):
        return False
    return isinstance(obj, dict) and isinstance(obj.get("name"), str)


def _add(spans: list[Span], text: str, start: int, end: int, label: str) -> None:
    start, end = _strip(text, start, end)
    if start < end:
        spans.append((start, end, label))


def _reason(spans: list[Span], text: str, start: int, end: int) -> None:
    """A Thought's content, splitting out tool calls the teacher wrote without "Action:"."""
    pos = start
    for m in _BARE_CALL.finditer(text, start, end):
        brace = m.end()
        if brace < pos:
            continue
        close = _json_end(text, brace, end)
        if close is None or close > end or not _is_call(text, brace, close):
            continue
        _add(spans, text, pos, m.start(), REASON)
        spans.append((brace, close, ACT))
        pos = _skip_closer(text, close, end, "```" if m.group(0).lstrip().startswith("```") else "")
    _add(spans, text, pos, end, REASON)


def _skip_closer(text: str, pos: int, end: int, closer: str) -> int:
    """Past blanks and ``closer`` (a fence or </tool_call>) after a wrapped JSON object, if there."""
    i, _ = _strip(text, pos, end)
    return i + len(closer) if closer and text.startswith(closer, i) and i + len(closer) <= end else pos


def _action(spans: list[Span], text: str, start: int, end: int) -> int:
    """An Action's content; returns where the step really ends (valid JSON may pass ``end``)."""
    s, e = _strip(text, start, end)
    if s == e:
        return end
    closer = ""  # the call may be wrapped in a markdown fence or Qwen-style <tool_call> tags
    if text.startswith("```", s):
        closer, s = "```", _FENCE_OPEN.match(text, s).end()
    elif text.startswith("<tool_call>", s):
        closer, s = "</tool_call>", s + len("<tool_call>")
    s, _ = _strip(text, s, end)
    if s < e and text[s] == "{":
        close = _json_end(text, s, end)
        if close is None:  # unfinished object: the rest of the step
            _add(spans, text, s, end, ACT)
            return end
        spans.append((s, close, ACT))
        after = _skip_closer(text, close, max(end, close), closer)
        if after >= end:
            return after
        _add(spans, text, after, end, REASON)
        return end
    if closer:  # a wrapper around something that is not an object: its inner text
        inner_end = text.find(closer, s, end)
        _add(spans, text, s, end if inner_end < 0 else inner_end, ACT)
        if inner_end >= 0:
            _add(spans, text, inner_end + len(closer), end, REASON)
        return end
    _add(spans, text, s, e, ACT)
    return end


def segment(text: str) -> list[Span]:
    """REASON / ACT / OBSERVATION spans of one trajectory text (see the module docstring)."""
    spans: list[Span] = []
    labels = _labels(text)
    first = labels[0][0] if labels else len(text)
    _reason(spans, text, 0, first)
    i, floor = 0, 0  # floor: content already consumed (a JSON action that ran past labels)
    while i < len(labels):
        start, cstart, kind = labels[i]
        if start < floor:
            i += 1
            continue
        nxt = i + 1
        while nxt < len(labels) and labels[nxt][0] < cstart:
            nxt += 1
        end = labels[nxt][0] if nxt < len(labels) else len(text)
        if kind == REASON:
            _reason(spans, text, cstart, end)
            floor = end
        elif kind == ACT:
            floor = _action(spans, text, cstart, end)
        else:
            _add(spans, text, cstart, end, OBSERVATION)
            floor = end
        i = nxt
    return spans


def validate_spans(spans: Any, length: int) -> str | None:
    """None when ``spans`` are well formed for a text of ``length`` chars, else the reason."""
    if not isinstance(spans, list):
        return "spans is not a list"
    prev_end = 0
    for k, span in enumerate(spans):
        if not (isinstance(span, (list, tuple)) and len(span) == 3):
            return f"span {k} is not [start, end, label]"
        start, end, label = span
        if not (isinstance(start, int) and isinstance(end, int)) or isinstance(start, bool):
            return f"span {k} offsets are not integers"
        if label not in LABELS:
            return f"span {k} label {label!r} is not one of {', '.join(LABELS)}"
        if not 0 <= start < end <= length:
            return f"span {k} [{start}, {end}) is empty or outside the text (length {length})"
        if start < prev_end:
            return f"span {k} starts at {start}, before the previous span ends ({prev_end})"
        prev_end = end
    return None


_CODE = {REASON: 1, ACT: 2, OBSERVATION: 3}


def _char_labels(spans: list, length: int, what: str) -> np.ndarray:
    why = validate_spans([list(sp) for sp in spans], length)
    if why is not None:
        raise ValueError(f"{what} spans: {why}")
    out = np.zeros(length, np.int8)  # [length]: 0 = unlabelled, else _CODE
    for start, end, label in spans:
        out[start:end] = _CODE[label]
    return out


def _with_ratios(c: dict) -> dict:
    div = lambda a, b: a / b if b else 1.0  # noqa: E731 (nothing to find, nothing found: perfect)
    p, r = div(c["exact_spans"], c["pred_spans"]), div(c["exact_spans"], c["gold_spans"])
    return {**c, "char_accuracy": div(c["correct_chars"], c["labelled_chars"]),
            "span_precision": p, "span_recall": r, "span_f1": 2 * p * r / (p + r) if p + r else 0.0}


def span_accuracy(pred: list, gold: list, text: str) -> dict:
    """Agreement of predicted with gold spans on one text.

    char_accuracy: over the characters either side labels (gold or predicted), the fraction
    where both give the same label — unlabelled-vs-labelled counts as wrong, so predicting
    everything (or nothing) scores badly. span_precision / recall / f1: exact
    (start, end, label) matches. The raw counts are returned too; aggregate_accuracy sums them.
    """
    p, g = _char_labels(pred, len(text), "predicted"), _char_labels(gold, len(text), "gold")
    union = (p > 0) | (g > 0)  # [len(text)]
    exact = len({tuple(sp) for sp in pred} & {tuple(sp) for sp in gold})
    return _with_ratios({"labelled_chars": int(union.sum()), "correct_chars": int((union & (p == g)).sum()),
                         "pred_spans": len(pred), "gold_spans": len(gold), "exact_spans": exact})


def aggregate_accuracy(reports: list[dict]) -> dict:
    """span_accuracy over a set: counts summed over texts, then the same ratios (micro average)."""
    keys = ("labelled_chars", "correct_chars", "pred_spans", "gold_spans", "exact_spans")
    return _with_ratios({k: sum(r[k] for r in reports) for k in keys} | {"texts": len(reports)})


def segment_records(in_path: str | os.PathLike[str], out_path: str | os.PathLike[str]) -> dict:
    """Segment a trajectory JSONL file: each output line is the input object plus ``spans``.

    Lines that are not JSON objects with a string ``text`` are left out and counted with a
    FILE:LINE reason; blank lines are skipped. The output is written atomically.
    """
    try:
        with open(in_path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise InputDataError(f"{in_path}: no such trajectory file") from None
    except UnicodeDecodeError as e:
        raise InputDataError(f"{in_path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    out: list[str] = []
    errors: list[str] = []
    labels: Counter[str] = Counter()
    no_action = 0
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError as e:
            errors.append(f"{in_path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})")
            continue
        if not isinstance(rec, dict):
            errors.append(f"{in_path}:{lineno}: a line must be a JSON object, got {type(rec).__name__}")
            continue
        text = rec.get("text")
        if not isinstance(text, str):
            why = "missing" if "text" not in rec else f"a {type(text).__name__}, not a string"
            errors.append(f"{in_path}:{lineno}: field 'text' is {why}")
            continue
        spans = segment(text)
        labels.update(label for _, _, label in spans)
        no_action += not any(label == ACT for _, _, label in spans)
        rec["spans"] = [[s, e, label] for s, e, label in spans]
        out.append(json.dumps(rec, ensure_ascii=False))
    fileio.atomic_write_text(out_path, "".join(line + "\n" for line in out))
    return {"input": str(in_path), "output": str(out_path), "records": len(out),
            "malformed": len(errors), "errors": errors[:50],
            "spans": {label: labels[label] for label in LABELS},
            "records_without_action": no_action}
