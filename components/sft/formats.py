"""SFT data files (JSONL, optionally gzipped) → one canonical conversation form.

Three line formats are accepted, detected per line by their keys:

  conversation  {"messages": [{"role", "content", "tool_calls"?, "name"?}, ...]}  (OpenAI chat style;
                a tool call is {"type": "function", "function": {"name", "arguments"}} with the
                arguments an object or a JSON string holding one)
  instruction   {"instruction", "input"?, "output"} → user = instruction (+ "\\n\\n" + input when the
                input is non-empty), assistant = output  (Alpaca style)
  completion    {"prompt", "completion"} → user, assistant

Every line becomes a ``Conversation`` or a "FILE:LINE: reason" entry in the read result: bad lines
are counted and reported, never dropped silently. Blank lines carry no data and are only counted.
A conversation needs at least one assistant turn; turns after the last assistant turn have no
loss target and are dropped (so a conversation always ends with the assistant).
"""

from __future__ import annotations

import gzip
import io
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from common.errors import InputDataError
from common.fileio import atomic_write_bytes

ROLES = ("system", "user", "assistant", "tool")
FORMATS = ("conversation", "instruction", "completion")
# How many reasons an all-bad file's error message quotes.
_REASONS_IN_ERROR = 3


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict


@dataclass(frozen=True)
class Message:
    role: str  # one of ROLES
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    name: str | None = None


@dataclass(frozen=True)
class Conversation:
    messages: tuple[Message, ...]
    source: str  # "FILE:LINE" (or whatever produced it): where to look when it misbehaves


@dataclass
class SFTReadResult:
    conversations: list[Conversation]
    # Per file: {"lines", "blank", "ok", "malformed", "conversation", "instruction", "completion"}.
    counts: dict[str, dict[str, int]]
    malformed: list[str] = field(default_factory=list)  # "FILE:LINE: reason", in file order


class BadRecordError(ValueError):
    """One line's problem (parse_record); the reader prefixes FILE:LINE."""


def _text(value: Any, where: str) -> str:
    """A message content: a string, or OpenAI content parts that are all text."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value:
        parts = []
        for i, p in enumerate(value):
            if not (isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)):
                raise BadRecordError(f"{where}[{i}]: only text content parts are supported")
            parts.append(p["text"])
        return "".join(parts)
    if value is None:
        raise BadRecordError(f"{where} is missing")
    raise BadRecordError(f"{where} must be a string, not {type(value).__name__}")


def _tool_call(tc: Any, where: str) -> ToolCall:
    if not isinstance(tc, dict):
        raise BadRecordError(f"{where} must be an object")
    fn = tc.get("function", tc)  # OpenAI nests it under "function"; accept the flat form too
    if tc.get("type", "function") != "function" or not isinstance(fn, dict):
        raise BadRecordError(f"{where}: only function tool calls are supported")
    name = fn.get("name")
    if not isinstance(name, str) or not name:
        raise BadRecordError(f"{where}.function.name must be a non-empty string")
    args = fn.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as e:
            raise BadRecordError(f"{where}.function.arguments is not valid JSON ({e.msg} at char {e.pos})") from None
    if not isinstance(args, dict):
        raise BadRecordError(f"{where}.function.arguments must be a JSON object, not {type(args).__name__}")
    return ToolCall(name, args)


def _message(m: Any, i: int) -> Message:
    where = f"messages[{i}]"
    if not isinstance(m, dict):
        raise BadRecordError(f"{where} must be an object")
    role = m.get("role")
    if role not in ROLES:
        raise BadRecordError(f"{where}.role {role!r} is not one of {', '.join(ROLES)}")
    raw_calls = m.get("tool_calls") or []
    if not isinstance(raw_calls, list):
        raise BadRecordError(f"{where}.tool_calls must be a list")
    if raw_calls and role != "assistant":
        raise BadRecordError(f"{where}: only assistant messages may have tool_calls")
    calls = tuple(_tool_call(tc, f"{where}.tool_calls[{j}]") for j, tc in enumerate(raw_calls))
    content = m.get("content")
    # An assistant turn that only calls tools has no text (OpenAI sends null or omits it).
    content = "" if (calls and content in (None, "")) else _text(content, f"{where}.content")
    name = m.get("name")
    if name is not None and not isinstance(name, str):
        raise BadRecordError(f"{where}.name must be a string")
    return Message(role, content, calls, name)


def _detect(obj: dict) -> str:
    if "messages" in obj:
        return "conversation"
    if "instruction" in obj and "output" in obj:
        return "instruction"
    if "prompt" in obj and "completion" in obj:
        return "completion"
    keys = ", ".join(sorted(obj)[:8]) or "none"
    raise BadRecordError(f"unknown format (keys: {keys}); expected messages, instruction/output or prompt/completion")


def _string_field(obj: dict, key: str, optional: bool = False) -> str:
    v = obj.get(key)
    if v is None and optional:
        return ""
    if not isinstance(v, str):
        raise BadRecordError(f"{key} must be a string" + ("" if key in obj else " (missing)"))
    return v


def parse_record(obj: Any, source: str) -> tuple[Conversation, str]:
    """A decoded JSON line → (Conversation, format name); raises BadRecordError (a ValueError) with
    the reason."""
    if not isinstance(obj, dict):
        raise BadRecordError(f"a line must be a JSON object, not {type(obj).__name__}")
    fmt = _detect(obj)
    if fmt == "instruction":
        inst, inp = _string_field(obj, "instruction"), _string_field(obj, "input", optional=True)
        user = f"{inst}\n\n{inp}" if inp else inst
        msgs = (Message("user", user), Message("assistant", _string_field(obj, "output")))
    elif fmt == "completion":
        msgs = (Message("user", _string_field(obj, "prompt")), Message("assistant", _string_field(obj, "completion")))
    else:
        raw = obj["messages"]
        if not isinstance(raw, list) or not raw:
            raise BadRecordError("messages must be a non-empty list")
        msgs = tuple(_message(m, i) for i, m in enumerate(raw))
    last = max((i for i, m in enumerate(msgs) if m.role == "assistant"), default=None)
    if last is None:
        raise BadRecordError("no assistant turn (nothing to train on)")
    msgs = msgs[: last + 1]
    if all(not m.content and not m.tool_calls for m in msgs if m.role == "assistant"):
        raise BadRecordError("every assistant turn is empty")
    return Conversation(msgs, source), fmt


def _open_lines(path: str) -> Iterator[bytes]:
    if "://" in path:  # object stores
        import tensorflow as tf

        raw: io.BufferedIOBase = tf.io.gfile.GFile(path, "rb")
    else:
        raw = open(path, "rb")  # noqa: SIM115 (closed below)
    with raw:
        f = gzip.GzipFile(fileobj=raw) if path.endswith(".gz") else raw
        yield from f


def read_sft_file(path: str) -> tuple[list[Conversation], dict[str, int], list[str]]:
    """One JSONL(.gz) file → (conversations, counts, malformed reasons). Raises InputDataError
    when the file cannot be read or has no good line."""
    counts = {"lines": 0, "blank": 0, "ok": 0, "malformed": 0, **{f: 0 for f in FORMATS}}
    convs: list[Conversation] = []
    bad: list[str] = []
    try:
        for n, raw in enumerate(_open_lines(path), start=1):
            counts["lines"] += 1
            where = f"{path}:{n}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                bad.append(f"{where}: not UTF-8 (byte {e.start})")
                continue
            if not line.strip():
                counts["blank"] += 1
                continue
            try:
                conv, fmt = parse_record(json.loads(line), where)
            except json.JSONDecodeError as e:
                bad.append(f"{where}: bad JSON ({e.msg} at char {e.pos})")
                continue
            except BadRecordError as e:
                bad.append(f"{where}: {e}")
                continue
            convs.append(conv)
            counts[fmt] += 1
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise InputDataError(f"{path}: cannot read ({e})") from None
    counts["ok"], counts["malformed"] = len(convs), len(bad)
    if not convs:
        if not bad:
            raise InputDataError(f"{path}: no SFT examples (the file has no non-blank lines)")
        first = "; ".join(b.removeprefix(f"{path}:") for b in bad[:_REASONS_IN_ERROR])
        raise InputDataError(f"{path}: none of its {len(bad)} non-blank lines is a valid SFT example "
                             f"(line {first})")
    return convs, counts, bad


def read_sft_files(paths: Sequence[str] | str) -> SFTReadResult:
    """Read every file (in the given order) into one result; see the module docstring."""
    paths = [paths] if isinstance(paths, str) else list(paths)
    if not paths:
        raise InputDataError("no SFT data files given")
    result = SFTReadResult([], {})
    for p in paths:
        convs, counts, bad = read_sft_file(os.fspath(p))
        result.conversations.extend(convs)
        result.counts[os.fspath(p)] = counts
        result.malformed.extend(bad)
    return result


def to_record(conv: Conversation) -> dict:
    """The conversation as an OpenAI-style {"messages": [...]} object (what parse_record reads)."""
    out = []
    for m in conv.messages:
        d: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.tool_calls:
            d["tool_calls"] = [{"type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                               for c in m.tool_calls]
        if m.name is not None:
            d["name"] = m.name
        out.append(d)
    return {"messages": out}


def write_jsonl(path: str, conversations: Iterable[Conversation]) -> int:
    """Write conversations as conversation-format JSONL (gzipped when path ends in .gz), atomically;
    returns the line count."""
    lines = [json.dumps(to_record(c), ensure_ascii=False) for c in conversations]
    data = ("\n".join(lines) + "\n" if lines else "").encode("utf-8")
    if path.endswith(".gz"):
        data = gzip.compress(data, mtime=0)  # mtime 0: the same conversations give the same bytes
    atomic_write_bytes(path, data)
    return len(lines)
