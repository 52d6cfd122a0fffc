"""Process-step supervision: character spans of the tool name, the JSON arguments and the
integration of tool results in one agent trajectory's text.

The trajectory format is the shared one (docs/agent.md)::

    Thought: <free text>
    Action: {"name": "<tool>", "arguments": {...}}
    Observation: <tool output, written by the loop>
    ...
    Action: {"name": "finish", "arguments": {"answer": "<final answer>"}}

`extract_process_spans(text, tool_names, spans=None)` returns three lists of character spans
(end exclusive) into `text`:

tool-name spans   the characters of the "name" value of each Action's JSON object, without its
                  quotes, for names in the tool registry (`tool_names`). A name outside the
                  registry gets no span (the student must not learn to call it); it is counted
                  in `unknown_tools`. When the Action's JSON does not parse, a top-level-looking
                  `"name": "<tool>"` pair in the action text still gives the span.
argument spans    the text of the "arguments" value — the whole `{...}` object, braces included —
                  of each Action whose JSON object parses, whose name is in the registry and
                  whose arguments are a JSON object. Invalid JSON gives none: these spans are
                  the *valid* JSON the JSON-validity loss teaches.
integration spans where a later Thought or the final answer reuses what an Observation returned.
                  Rule: a piece s of Observation k's content is *new information* when s does
                  not occur anywhere in the text before Observation k begins (so the code the
                  agent itself wrote, the task's own words or common keywords never count).
                  A character of a later REASON span, or of the finish answer's string value,
                  is an integration of Observation k when it lies in an occurrence of such an s
                  where s is one of
                    • a number (`-?\\d+(\\.\\d+)?`, exponent allowed), any length — "3" counts;
                    • an identifier/word (`[A-Za-z_][A-Za-z0-9_]*`) of ≥ `min_word_chars` chars;
                    • a matching block between the Observation content and the Thought/answer
                      text (difflib's SequenceMatcher: Ratcliff–Obershelp longest common
                      substrings) of at least `min_block_chars` characters once stripped of
                      surrounding whitespace; it may hold punctuation, e.g. a whole file path.
                  Numbers and words must match as whole tokens (not inside a longer one). When
                  several Observations supply the same piece, the latest one before the
                  position owns it. Adjacent characters owned by the same Observation merge
                  into one span, which carries that Observation's 0-based index.

Where the actions, thoughts and observations are: from the segmenter's `spans` ([start, end,
label] with REASON / ACT / OBSERVATION, the shared contract) when given, otherwise from the
labels "Thought:", "Action:", "Observation:" at the start of a line (any case, optional
markdown bold). Never raises on a str: messy text gives the spans that can be found.
"""
from __future__ import annotations

import difflib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

DEFAULT_TOOLS = ("python", "retrieve", "finish")
FINISH = "finish"

_LABEL = re.compile(r"(?im)^[ \t]*(?:[*_#>]+[ \t]*)?(thought|action|observation)[ \t]*(?:[*_]+)?[ \t]*:(?:[ \t]*[*_]+)?")
_KIND = {"thought": "REASON", "action": "ACT", "observation": "OBSERVATION"}
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w])")
_WORD = re.compile(r"(?<![\w])[A-Za-z_][A-Za-z0-9_]*(?![\w])")
_NAME_PAIR = re.compile(r'"name"\s*:\s*"([^"\\\n]*)"')
_DECODER = json.JSONDecoder()
_WS = " \t\n\r"


@dataclass
class ProcessSpans:
    """Character spans (end exclusive) of one trajectory; see the module docstring."""

    tool_names: list[tuple[int, int, int]] = field(default_factory=list)    # (start, end, tool index)
    arguments: list[tuple[int, int]] = field(default_factory=list)          # the {...} text
    integration: list[tuple[int, int, int]] = field(default_factory=list)   # (start, end, obs index)
    actions: int = 0                # Action segments seen
    invalid_json: int = 0           # actions whose JSON object did not parse
    unknown_tools: int = 0          # actions naming a tool outside the registry


def _segments(text: str, spans: Sequence | None) -> list[tuple[int, int, str]]:
    """(start, end, kind) content segments, sorted: the given spans, or the labels' contents."""
    if spans is not None:
        out = []
        for s in spans:
            try:
                a, b, kind = int(s[0]), int(s[1]), str(s[2]).upper()
            except (TypeError, ValueError, IndexError):
                continue
            if 0 <= a < b <= len(text) and kind in ("REASON", "ACT", "OBSERVATION"):
                out.append((a, b, kind))
        return sorted(out)
    marks = list(_LABEL.finditer(text))
    out = []
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        a, b = m.end(), end
        while a < b and text[a] in _WS:
            a += 1
        while b > a and text[b - 1] in _WS:
            b -= 1
        if a < b:
            out.append((a, b, _KIND[m.group(1).lower()]))
    return out


def _members(text: str, start: int) -> dict[str, tuple[object, int, int]] | None:
    """Top-level members of the JSON object starting at text[start] == "{":
    {key: (value, value_start, value_end)} with spans into `text`; None when it does not parse."""
    try:
        i = start + 1
        out: dict[str, tuple[object, int, int]] = {}
        while True:
            while i < len(text) and text[i] in _WS:
                i += 1
            if i < len(text) and text[i] == "}" and not out:
                return out
            if i >= len(text) or text[i] != '"':
                return None
            key, i = json.decoder.scanstring(text, i + 1)
            while i < len(text) and text[i] in _WS:
                i += 1
            if i >= len(text) or text[i] != ":":
                return None
            i += 1
            while i < len(text) and text[i] in _WS:
                i += 1
            value, end = _DECODER.raw_decode(text, i)
            out[key] = (value, i, end)
            i = end
            while i < len(text) and text[i] in _WS:
                i += 1
            if i < len(text) and text[i] == ",":
                i += 1
                continue
            if i < len(text) and text[i] == "}":
                return out
            return None
    except (ValueError, IndexError, RecursionError):
        return None


def _string_inner(value: object, a: int, b: int) -> tuple[int, int] | None:
    """The span inside the quotes of a JSON string value's text [a, b)."""
    return (a + 1, b - 1) if isinstance(value, str) and b - a >= 2 else None


def _parse_action(text: str, a: int, b: int, registry: dict[str, int], out: ProcessSpans):
    """Fill out's tool-name / argument spans for the action content text[a:b]; returns the span
    of the finish answer string's content when this is a finish call, else None."""
    out.actions += 1
    brace = text.find("{", a, b)
    members = _members(text[:b], brace) if brace >= 0 else None
    if members is None or not isinstance(members.get("name", (None,))[0], str):
        out.invalid_json += 1
        m = _NAME_PAIR.search(text, a, b)
        if m is None:
            return None
        if m.group(1) in registry:
            out.tool_names.append((m.start(1), m.end(1), registry[m.group(1)]))
        else:
            out.unknown_tools += 1
        return None
    name, na, nb = members["name"]
    if name not in registry:
        out.unknown_tools += 1
        return None
    inner = _string_inner(name, na, nb)
    if inner and inner[0] < inner[1]:
        out.tool_names.append((*inner, registry[name]))
    if "arguments" not in members:
        return None
    args, aa, ab = members["arguments"]
    if not isinstance(args, dict):
        return None
    out.arguments.append((aa, ab))
    if name != FINISH:
        return None
    answer = _members(text[:ab], aa)
    if answer and "answer" in answer:
        return _string_inner(*answer["answer"])
    return None


def _novel(pattern: re.Pattern, obs: str, before: str) -> set[str]:
    return {m.group(0) for m in pattern.finditer(obs)} - {m.group(0) for m in pattern.finditer(before)}


def _mark_integration(text: str, targets: list[tuple[int, int]], observations: list[tuple[int, int]],
                      owner: list[int], min_word_chars: int, min_block_chars: int) -> None:
    """owner[c] = 1 + index of the Observation character c reuses (0 = none); later ones win."""
    for k, (oa, ob) in enumerate(observations):
        obs, before = text[oa:ob], text[:oa]
        numbers = _novel(_NUMBER, obs, before)
        words = {w for w in _novel(_WORD, obs, before) if len(w) >= min_word_chars}
        for ta, tb in targets:
            if ta < ob:
                continue
            seg = text[ta:tb]
            for pat, pieces in ((_NUMBER, numbers), (_WORD, words)):
                for m in pat.finditer(seg):
                    if m.group(0) in pieces:
                        owner[ta + m.start():ta + m.end()] = [k + 1] * (m.end() - m.start())
            sm = difflib.SequenceMatcher(None, obs, seg, autojunk=False)
            for blk in sm.get_matching_blocks():
                piece = obs[blk.a:blk.a + blk.size]
                lead = len(piece) - len(piece.lstrip())            # whitespace is not content
                piece = piece.strip()
                if len(piece) >= min_block_chars and piece not in before:
                    a = ta + blk.b + lead
                    owner[a:a + len(piece)] = [k + 1] * len(piece)


def extract_process_spans(text: str, tool_names: Sequence[str] = DEFAULT_TOOLS, *, spans: Sequence | None = None,
                          min_word_chars: int = 3, min_block_chars: int = 12) -> ProcessSpans:
    """Tool-name, argument and integration spans of one trajectory (see the module docstring).

    tool_names: the registry, in order (a tool-name span carries its index there). spans: the
    segmenter's [start, end, label] list, or None to find the labels here."""
    out = ProcessSpans()
    if not isinstance(text, str) or not text:
        return out
    registry = {n: i for i, n in enumerate(tool_names)}
    segs = _segments(text, spans)
    reasons = [(a, b) for a, b, k in segs if k == "REASON"]
    observations = [(a, b) for a, b, k in segs if k == "OBSERVATION"]
    answers = []
    for a, b, kind in segs:
        if kind == "ACT":
            ans = _parse_action(text, a, b, registry, out)
            if ans is not None and ans[0] < ans[1]:
                answers.append(ans)
    if observations:
        owner = [0] * len(text)
        _mark_integration(text, sorted(reasons + answers), observations, owner, min_word_chars, min_block_chars)
        out.integration = _runs(owner)
    return out


def _runs(owner: list[int]) -> list[tuple[int, int, int]]:
    """Maximal runs of equal non-zero owner values → (start, end, owner − 1)."""
    runs, c = [], 0
    while c < len(owner):
        if owner[c]:
            d = c
            while d < len(owner) and owner[d] == owner[c]:
                d += 1
            runs.append((c, d, owner[c] - 1))
            c = d
        else:
            c += 1
    return runs

