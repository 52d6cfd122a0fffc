"""The agent's Thought / Action / Observation protocol, shared by trajectory generation
(components/agent/loop.py, which re-exports these names), the segmenter
(components/agent/segment.py: the two label patterns) and the server's agent mode.

A reply is one step::

    Thought: <free text>
    Action: {"name": "<tool>", "arguments": {...}}

generation stops at STOP ("\\nObservation:"), and the caller, never the model, writes the
Observation. See docs/agent.md, "Agent loop and tools", and docs/serving.md, "Agent mode".
"""

from __future__ import annotations

import json
import re

STOP = ["\nObservation:"]

SYSTEM_PROMPT = """You solve tasks step by step, using tools. Every reply is exactly one step:
Thought: <your reasoning>
Action: {{"name": "<tool>", "arguments": {{...}}}}
The Action is one JSON object on the line after "Action:". After it, stop: the tool's output comes
back as "Observation: ...". When you know the final answer, call finish:
Action: {{"name": "finish", "arguments": {{"answer": "<final answer>"}}}}

Tools:
{tools}"""


# ---- the segmenter's labels (components/agent/segment.py reads trajectories with these) ----

# A label at the start of a line. Group "kw" is the keyword; the match ends where content starts
# (after the separator, closing emphasis and same-line blanks).
LINE_LABEL = re.compile(
    r"""^[ \t\r]*(?:[-#>]+[ \t]*)?                   # markdown: heading, quote, bullet
        (?P<em>\*\*|__|\*|_)?[ \t]*                 # emphasis: **Thought:** / *Action*:
        (?P<kw>thoughts?|action(?:[ \t]*input)?|observation)\b  # ReAct's "Action Input:" too
        (?:[ \t]*\d+)?                               # numbered steps: "Thought 2:"
        [ \t]*(?(em)(?:\*\*|__|\*|_)?)[ \t]*         # emphasis closed before the separator
        (?:(?::+|：|[-–—](?=\s|$))                     # separator ("Thought-process" is no label)
          |(?=[ \t\r]*(?(em)(?:\*\*|__|\*|_)?)[ \t\r]*$))  # or the label alone on its line
        (?(em)(?:[ \t]*(?:\*\*|__|\*|_))?)            # emphasis closed after it: **Thought:**
        [ \t\r]*""",
    re.IGNORECASE | re.MULTILINE | re.VERBOSE)
# "... Action: {" in the middle of a line: only with a JSON object or a fence right after it.
INLINE_ACTION = re.compile(
    r"(?<=\S)[ \t]+(?:\*\*|__)?(?P<kw>action)(?:\*\*|__)?[ \t]*[:：](?:[ \t]*(?:\*\*|__))?[ \t]*(?=\{|```)",
    re.IGNORECASE)


# ---- parsing one reply ----

FENCE = re.compile(r"^[ \t]*```[\w+-]*[ \t]*$", re.M)   # a markdown fence line
_LABEL = r"^[ \t>*_#]*{}[ \t*_]*:[ \t*_]*"
_THOUGHT = re.compile(_LABEL.format("thought"), re.I | re.M)
_ACTION = re.compile(_LABEL.format("action"), re.I | re.M)
_OBSERVATION = re.compile(r"^[ \t>*_#]*observation[ \t*_]*:", re.I | re.M)


def balanced_object(text: str, start: int = 0) -> tuple[int, int] | None:
    """(begin, end) of the first balanced {...} at or after `start` (braces inside JSON strings
    ignored), end exclusive; None when there is none or it never closes."""
    begin = text.find("{", start)
    if begin < 0:
        return None
    depth, in_str, esc = 0, False, False
    for i in range(begin, len(text)):
        c = text[i]
        if in_str:
            if esc:
                esc = False
            elif c == "\\":
                esc = True
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str = True
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return begin, i + 1
    return None


def parse_reply(reply: str) -> tuple[str, dict | None, str | None]:
    """(thought, action, error) from one teacher reply. action = {"name": str, "arguments": dict}
    or None with a one-line error saying what was wrong with the format."""
    text = FENCE.sub("", reply)
    obs = _OBSERVATION.search(text)
    if obs:  # the teacher wrote an observation itself: ignore it and everything after
        text = text[:obs.start()]
    act = _ACTION.search(text)
    head = text[:act.start()] if act else text
    th = _THOUGHT.search(head)
    thought = (head[th.end():] if th else head).strip()
    if not act:
        # no label keyword followed by a colon in this message: it lands in an Observation, and
        # the segmenter must not take it for a step
        return thought, None, "no Action line; reply with a Thought line, then an Action line holding one JSON tool call"
    span = balanced_object(text, act.end())
    if span is None:
        return thought, None, "the Action is not a complete JSON object ({...} with balanced braces)"
    try:
        obj = json.loads(text[span[0]:span[1]])
    except json.JSONDecodeError as e:
        return thought, None, f"the Action is not valid JSON: {e.msg} at column {e.colno}"
    if not isinstance(obj.get("name"), str):
        return thought, None, 'the Action JSON needs a string "name"'
    args = obj.get("arguments", {})
    if isinstance(args, str):  # OpenAI tool calls carry arguments as a JSON string
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            pass
    if not isinstance(args, dict):
        return thought, None, 'the Action JSON needs "arguments" to be an object'
    return thought, {"name": obj["name"], "arguments": args}, None


def neutralise_labels(observation: str) -> str:
    """Tool output with every label the segmenter would read (a line starting with Thought: /
    Action: / Observation:, any case, markdown around it, or an inline "Action: {") broken by a
    "|" right before the keyword, so a tool that prints "Thought: ..." cannot split the
    Observation into a fake step. The segmenter's own patterns decide, so the two cannot drift;
    a plain space would not do (its labels may be indented), nor "| " before an Action line
    (that is an inline Action to it)."""
    cuts = {m.start("kw") for m in LINE_LABEL.finditer(observation)}
    cuts |= {m.start("kw") for m in INLINE_ACTION.finditer(observation)}
    for i in sorted(cuts, reverse=True):
        observation = observation[:i] + "|" + observation[i:]
    return observation


def step_text(thought: str, action: dict) -> str:
    return f"Thought: {thought}\nAction: {json.dumps(action, ensure_ascii=False)}\n"
