"""Write tests/fixtures/agent/annotated_trajectories.jsonl: trajectories with gold spans.

Every trajectory is assembled from pieces ``(fragment, label)`` where label is REASON / ACT /
OBSERVATION or None (label keywords, separators, fences). The gold spans are the offsets of the
labelled pieces — known exactly by construction, never computed by the segmenter. The
conventions are the ones components/agent/segment.py documents: spans hold content only
(no label keyword, no surrounding whitespace, no markdown fence); ACT is the JSON object.

120 are generated (seeded) with messy variants; 33 are hand-written odd cases (one of them,
unlabelled text after an Observation, the segmenter is known to get wrong).
Run: .venv/bin/python scripts/make_annotated_trajectories.py [OUT]
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "agent" / "annotated_trajectories.jsonl"
R, A, O = "REASON", "ACT", "OBSERVATION"  # noqa: E741 (short names keep the piece tables readable)

THOUGHTS = [
    "I need to compute the sum of the first 100 squares.",
    "The task asks for a function that reverses a list; I will test it first.",
    "Let me look up the capital of Australia in the corpus.",
    "The previous run failed with a NameError, so I forgot to define `n`.",
    "Le résultat doit être un entier ; vérifions avec Python.",
    "我需要先检索相关文档，然后再回答。",
    "Die Größe ändert sich nicht — ok.",
    "The set {x | x > 0} is infinite, so I only sample a few values.",
    "Result looks right 🙂 — the test passes.",
    "Compare f(3) = 9 with the expected value; note the action: none needed yet.",
    "Observation noted: the output has a trailing newline.",
    "I should check edge cases:\n- empty list\n- one element\n- duplicates",
    "Step one: parse the input.\nStep two: count the vowels.\n\nStep three: return the count.",
    "Thinking about it again, the answer is 42 because 6 * 7 = 42.",
    "Δ = b² − 4ac, so with a=1, b=−3, c=2 we get Δ = 1.",
]
CODES = [
    "print(sum(i * i for i in range(1, 101)))",
    "def rev(xs):\n    return xs[::-1]\nprint(rev([1, 2, 3]))",
    "d = {'a': {'b': 1}}\nprint(d['a'])",
    "print(\"}{ braces in a string }\")",
    "import math\nprint(math.comb(10, 3))",
    "s = 'héllo wörld'\nprint(s.upper())",
    "print('{\"nested\": [1, {\"deep\": true}]}')",
]
QUERIES = ["capital of Australia", "BM25 ranking function", "größte Stadt der Schweiz", "python list slicing"]
ANSWERS = ["338350", "[3, 2, 1]", "Canberra", "42", "120", "Zürich", "HÉLLO WÖRLD"]
OBSERVATIONS = [
    "338350",
    "[3, 2, 1]",
    "{'b': 1}",
    "}{ braces in a string }",
    "exit status 0\nstdout:\n120\nstderr:",
    "Traceback (most recent call last):\n  File \"<sandbox>\", line 1, in <module>\nNameError: name 'n' is not defined\nexit status 1",
    "[1] Canberra is the capital city of Australia.\n[2] Sydney is the largest city in Australia.",
    "{\"passages\": [{\"id\": 3, \"text\": \"BM25 scores documents by term frequency\"}]}",
    "HÉLLO WÖRLD",
    "结果：42",
]

THOUGHT_LABELS = ["Thought: ", "thought: ", "THOUGHT - ", "**Thought:** ", "**Thought**: ", "### Thought\n",
                  "Thought 1: ", "Thought：", "Thought — ", "Thought:   ", "> Thought: ", "Thoughts: "]
ACTION_LABELS = ["Action: ", "action: ", "ACTION - ", "**Action:** ", "**Action**: ", "### Action\n",
                 "Action 1: ", "Action：", "Action:\n", "Action:   "]
OBS_LABELS = ["Observation: ", "Observation: ", "Observation: ", "observation: ", "OBSERVATION - ",
              "**Observation:** ", "Observation:\n"]
STEP_SEPS = ["\n", "\n", "\n\n", "\r\n", "  \n", "\n \n"]


def _call(rng: random.Random) -> dict:
    tool = rng.choice(["python", "python", "retrieve", "retrieve"])
    if tool == "python":
        return {"name": "python", "arguments": {"code": rng.choice(CODES)}}
    args: dict = {"query": rng.choice(QUERIES)}
    if rng.random() < 0.5:
        args["k"] = rng.randint(1, 5)
    return {"name": "retrieve", "arguments": args}


def _json(rng: random.Random, obj: dict) -> str:
    style = rng.randrange(4)
    if style == 0:
        return json.dumps(obj)
    if style == 1:
        return json.dumps(obj, ensure_ascii=False)
    if style == 2:
        return json.dumps(obj, separators=(",", ":"))
    return json.dumps(obj, indent=2, ensure_ascii=False)


def _action_pieces(rng: random.Random, obj: dict, label: str, tags: set[str]) -> list:
    """The Action label and its call, in one of several formats."""
    text = _json(rng, obj)
    if "\n  " in text:
        tags.add("pretty_json")
    form = rng.random()
    if form < 0.15:
        tags.add("fence_json")
        return [(label.rstrip(" ") + "\n```json\n", None), (text, A), ("\n```", None)]
    if form < 0.22:
        tags.add("fence_bare")
        return [(label + "```\n", None), (text, A), ("\n```", None)]
    if form < 0.27 and not text.startswith("{\n"):
        tags.add("malformed_json")  # a Python dict literal: not JSON, still the call
        return [(label, None), (repr(obj), A)]
    return [(label, None), (text, A)]


def generated(rng: random.Random, idx: int) -> dict:
    tags: set[str] = set()
    tl, al = rng.choice(THOUGHT_LABELS), rng.choice(ACTION_LABELS)
    ol = rng.choice(OBS_LABELS)
    tags.update({f"thought_label={tl.strip()!r}", f"action_label={al.strip()!r}"})
    pieces: list = []
    if rng.random() < 0.15:
        tags.add("preamble")
        pieces += [(rng.choice(["Sure, let me solve this.", "Okay — réfléchissons.", "Plan: use the tools."]), R),
                   ("\n", None)]
    n_steps = rng.randint(1, 4)
    for step in range(n_steps):
        sep = rng.choice(STEP_SEPS)
        if "\r" in sep:
            tags.add("crlf")
        if step == 0 and rng.random() < 0.1:
            tags.add("missing_first_thought_label")
            pieces += [(rng.choice(THOUGHTS), R), (sep, None)]
        else:
            pieces += [(tl, None), (rng.choice(THOUGHTS), R), (sep, None)]
        call = _call(rng)
        kind = rng.random()
        if kind < 0.08:
            tags.add("missing_action_label")
            pieces += [(json.dumps(call), A)]
        elif kind < 0.14 and "\n" not in pieces[-2][0] and pieces[-2][1] == R:
            tags.add("inline_action")  # "Thought: ... Action: {...}" on one line
            pieces[-1] = (" Action: ", None)
            pieces += [(json.dumps(call), A)]
        else:
            pieces += _action_pieces(rng, call, al, tags)
        if rng.random() < 0.07:
            tags.add("text_after_action")
            pieces += [(rng.choice(["\n", " "]), None), ("Waiting for the result.", R)]
        pieces += [("\n", None), (ol, None)]
        if rng.random() < 0.05:
            tags.add("empty_observation")
            pieces += [("\n", None)]
        else:
            pieces += [(rng.choice(OBSERVATIONS), O), (rng.choice(["\n", "\n\n", "\n"]), None)]
    ending = rng.random()
    if ending < 0.1:
        tags.add("unfinished_json")
        full = json.dumps({"name": "finish", "arguments": {"answer": rng.choice(ANSWERS)}})
        pieces += [(tl, None), (rng.choice(THOUGHTS), R), ("\n", None), (al, None),
                   (full[: rng.randint(5, len(full) - 2)].rstrip(), A)]
    elif ending < 0.17:
        tags.add("trailing_empty_thought")
        pieces += [(tl.rstrip(" "), None)]
    elif ending < 0.24:
        tags.add("truncated_thought")
        thought = rng.choice(THOUGHTS)
        cut = thought[: rng.randint(3, len(thought) - 1)].rstrip()
        pieces += [(tl, None), (cut, R)]
    else:
        pieces += [(tl, None), (rng.choice(THOUGHTS), R), ("\n", None)]
        pieces += _action_pieces(rng, {"name": "finish", "arguments": {"answer": rng.choice(ANSWERS)}}, al, tags)
    return _record(f"gen-{idx:03d}", "generated", pieces, sorted(tags))


# Hand-written odd cases: each a list of (fragment, label) pieces written out by hand.
HAND: list[tuple[str, list]] = [
    ("no labels at all: free text is REASON",
     [("I think the answer is 7, no tools needed.", R)]),
    ("only an action, no thought",
     [("Action: ", None), ('{"name": "finish", "arguments": {"answer": "7"}}', A)]),
    ("braces and label words inside a JSON string",
     [("Thought: ", None), ("print a dict", R), ("\nAction: ", None),
      ('{"name": "python", "arguments": {"code": "print({\\"Thought:\\": \\"}\\"})"}}', A),
      ("\nObservation: ", None), ("{'Thought:': '}'}", O)]),
    ("pretty JSON whose code has a line starting with a label word",
     [("Thought: ", None), ("try it", R), ("\nAction: ", None),
      ('{\n  "name": "python",\n  "arguments": {\n    "code": "x = 1\\nAction = 2\\nprint(x)"\n  }\n}', A),
      ("\nObservation: ", None), ("1", O)]),
    ("label alone on its line, content below",
     [("Thought\n", None), ("Multi-line\nthought here.", R), ("\nAction\n", None),
      ('{"name": "retrieve", "arguments": {"query": "x"}}', A)]),
    ("windows line endings and trailing spaces",
     [("Thought:  ", None), ("check", R), ("   \r\nAction: ", None),
      ('{"name": "python", "arguments": {"code": "print(1)"}}', A), ("\r\nObservation: ", None),
      ("1", O), ("\r\n", None)]),
    ("emoji and CJK everywhere",
     [("Thought: ", None), ("🙂🙂 先算一下", R), ("\nAction: ", None),
      ('{"name": "python", "arguments": {"code": "print(\'✓\')"}}', A), ("\nObservation: ", None),
      ("✓", O), ("\nThought: ", None), ("完成 ✅", R)]),
    ("fenced JSON with extra blank lines inside the fence",
     [("Thought: ", None), ("run", R), ("\nAction:\n```json\n\n", None),
      ('{"name": "python", "arguments": {"code": "1+1"}}', A), ("\n\n```\nObservation: ", None),
      ("2", O)]),
    ("action that is not JSON at all",
     [("Thought: ", None), ("finish up", R), ("\nAction: ", None), ("finish(answer=42)", A)]),
    ("trailing commas: not JSON, still the call",
     [("Action: ", None), ('{"name": "retrieve", "arguments": {"query": "x", "k": 2,},}', A),
      ("\nObservation: ", None), ("[1] x", O)]),
    ("unfinished string inside the last action",
     [("Thought: ", None), ("almost", R), ("\nAction: ", None),
      ('{"name": "finish", "arguments": {"answer": "it is {', A)]),
    ("bold labels with numbers",
     [("**Thought 1:** ", None), ("look up", R), ("\n**Action 1:** ", None),
      ('{"name": "retrieve", "arguments": {"query": "Oslo"}}', A), ("\n**Observation 1:** ", None),
      ("[1] Oslo is the capital of Norway.", O), ("\n**Thought 2:** ", None), ("done", R)]),
    ("a brace line in a thought that is not a tool call",
     [("Thought: ", None), ("consider the object\n{1, 2, 3}\nwhich is a set", R)]),
    ("tool call on its own line after the thought, no Action label",
     [("Thought: ", None), ("compute it", R), ("\n", None),
      ('{"name": "python", "arguments": {"code": "print(6*7)"}}', A), ("\nObservation: ", None),
      ("42", O)]),
    ("observation that itself holds JSON and a fence",
     [("Action: ", None), ('{"name": "python", "arguments": {"code": "print(1)"}}', A),
      ("\nObservation: ", None), ('```\n{"name": "x"}\n```', O), ("\nThought: ", None), ("ok", R)]),
    ("label words mid-sentence are not labels",
     [("Thought: ", None), ("my next action: call python; the observation: pending", R)]),
    ("Thought-process is a word, not a label",
     [("Thought-process: careful. Thoughtful analysis follows.", R)]),
    ("heading labels",
     [("## Thought\n", None), ("Heading style.", R), ("\n## Action\n", None),
      ('{"name": "finish", "arguments": {"answer": "yes"}}', A)]),
    ("empty thought followed by an action",
     [("Thought:\n", None), ("Action: ", None), ('{"name": "finish", "arguments": {"answer": ""}}', A)]),
    ("tabs and unicode spaces around labels",
     [("\tThought:\u00a0", None), ("tabbed", R), ("\u2003\n\tAction:\t", None),
      ('{"name": "finish", "arguments": {"answer": "t"}}', A)]),
    ("inline action after the thought on the same line",
     [("Thought: ", None), ("I'll run it now.", R), (" Action: ", None),
      ('{"name": "python", "arguments": {"code": "print(2)"}}', A), ("\nObservation: ", None), ("2", O)]),
    ("deeply nested arguments",
     [("Action: ", None), ('{"name": "python", "arguments": {"a": {"b": {"c": {"d": [1, {"e": "}}}"}]}}}}', A)]),
    ("text after a fenced action",
     [("Action:\n```json\n", None), ('{"name": "python", "arguments": {"code": "2"}}', A), ("\n```\n", None),
      ("Then I will check the output.", R), ("\nObservation: ", None), ("2", O)]),
    ("lower-case labels with dashes and a multi-line observation",
     [("thought - ", None), ("lower", R), ("\naction - ", None),
      ('{"name": "python", "arguments": {"code": "for i in range(3): print(i)"}}', A),
      ("\nobservation - ", None), ("0\n1\n2", O)]),
    ("ReAct style: tool name and Action Input on separate labels",
     [("Thought: ", None), ("search first", R), ("\nAction: ", None), ("retrieve", A), ("\nAction Input: ", None),
      ('{"query": "Canberra"}', A), ("\nObservation: ", None), ("[1] Canberra ...", O)]),
    ("a thought line starting with 'Action items' is not a label",
     [("Thought: ", None), ("Plan.\nAction items: check input, then run.", R), ("\nAction: ", None),
      ('{"name": "finish", "arguments": {"answer": "ok"}}', A)]),
    ("a fence inside the code string of a fenced action",
     [("Action:\n```json\n", None),
      (json.dumps({"name": "python", "arguments": {"code": "s = '```py\\nx\\n```'\nprint(len(s))"}}), A),
      ("\n```\nObservation: ", None), ("13", O)]),
    ("Qwen-style tool_call tags around the call",
     [("Thought: ", None), ("call it", R), ("\nAction: <tool_call>", None),
      ('{"name": "python", "arguments": {"code": "print(3)"}}', A), ("</tool_call>\nObservation: ", None),
      ("3", O)]),
    ("doubled colon after the label",
     [("Thought:: ", None), ("double colon", R)]),
    ("teacher goes on after an Observation without a Thought label (known hard: read as observation)",
     [("Action: ", None), ('{"name": "python", "arguments": {"code": "print(42)"}}', A), ("\nObservation: ", None),
      ("42", O), ("\n\n", None), ("So the answer is 42.", R), ("\nAction: ", None),
      ('{"name": "finish", "arguments": {"answer": "42"}}', A)]),
    ("markdown bold inside a thought is not a label",
     [("Thought: ", None), ("**Note:** the list is sorted.\n**Plan:** binary search.", R)]),
    ("a JSON array of calls",
     [("Action: ", None), ('[{"name": "python", "arguments": {"code": "1"}}]', A)]),
    ("single-line fence",
     [("Action: ```json ", None), ('{"name": "finish", "arguments": {"answer": "1"}}', A), ("```", None)]),
]


def _record(rid: str, source: str, pieces: list, tags: list[str]) -> dict:
    text, spans, pos = "", [], 0
    for frag, label in pieces:
        if label is not None:
            # gold spans hold content only: the fragment must not start/end with whitespace
            assert frag and frag == frag.strip(), (rid, frag)
            spans.append([pos, pos + len(frag), label])
        text += frag
        pos += len(frag)
    return {"id": rid, "source": source, "tags": tags, "text": text, "spans": spans}


def build() -> list[dict]:
    rng = random.Random(20261130)
    recs = [generated(rng, i) for i in range(120)]
    recs += [_record(f"hand-{i:02d}", "hand", pieces, [note]) for i, (note, pieces) in enumerate(HAND)]
    return recs


def main(argv: list[str]) -> None:
    out = Path(argv[1]) if len(argv) > 1 else OUT
    out.parent.mkdir(parents=True, exist_ok=True)
    recs = build()
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")
    print(f"{out}: {len(recs)} trajectories")


if __name__ == "__main__":
    main(sys.argv)
