"""A scripted expert teacher for the procedural agent tasks, and a small retrieval corpus.

ScriptedTeacher knows each task's reference (grpo Task objects carry the expected answer or a
reference solution) and answers through the same `complete(messages, ...)` interface as a real
teacher, so its trajectories go through the real loop, sandbox, tools, verifier and segmenter:
  math: every operand a single digit → finish at once (mental arithmetic); else python (print the
        expression) → finish (the printed value)
  code: a function of a string or a list (`s`, `xs`) → retrieve first (a tip on string / list
        operations, when the run has the retrieve tool); then python (the solution and its first
        test, printing "ok") → finish (the complete function)
Which tool comes next depends on details of the task (operand sizes, the argument's type) and on
what has happened so far, so tool choice is something a student has to learn. Thoughts are drawn from a few phrasings by a hash of (task,
step), and a reply can carry a deliberate slip (`slip_rate`: a wrong tool name), so the data has
some noise the loop's error accounting sees. It is the teacher of the agent learning check
(tests/test_learning_check_agent.py) — a stand-in for a strong remote model that this machine cannot
reach, not a model.
"""
from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence

from components.agent.loop import task_dict, user_prompt

TIPS = (
    ("strings.md", "Strings repeat with the * operator: 'ab' * 3 == 'ababab'. ''.join(parts) concatenates a list."),
    ("lists.md", "sum(xs) adds a list; max(xs) and min(xs) give its extremes; sorted(xs) returns a new list."),
    ("counting.md", "s.count(c) counts a character; len([x for x in xs if cond]) counts items that match."),
    ("math.md", "n % k == 0 tests divisibility; abs(x) is the magnitude; x ** 2 squares; // floors a division."),
    ("case.md", "s.upper() and s.lower() change case; s[::-1] reverses a string or a list."),
    ("words.md", "s.split() splits on whitespace; ' '.join(words) puts words back together."),
    ("bools.md", "all(...) is True when every item is true; any(...) when at least one is."),
    ("loops.md", "range(a, b) counts from a to b - 1; enumerate(xs) yields (index, item) pairs."),
)

_THINK = {
    ("math", 0): ("I will compute {expr} with Python to be exact.", "Let me evaluate {expr} in Python.",
                  "Computing {expr} in the interpreter avoids arithmetic slips."),
    ("math", 1): ("The interpreter printed {obs}, so the answer is {obs}.", "The result is {obs}.",
                  "Python says {obs}; that is the final answer."),
    ("math", "mental"): ("{expr} is small enough to do in my head: {obs}.", "Single digits: {expr} = {obs}.",
                         "No tool needed, {expr} is {obs}."),
    ("code", 0): ("First I look up a tip related to {fn}.", "Let me search the notes for how to write {fn}.",
                  "I will check the documentation for {fn} first."),
    ("code", 1): ("Now I write {fn} and run one of its tests.", "I will implement {fn} and test it.",
                  "Let me code {fn} and check it against a test."),
    ("code", 2): ("The test printed {obs}, so {fn} works; I return it.", "The test passed; {fn} is done.",
                  "It works ({obs}); finishing with the function."),
}


class ScriptedTeacher:
    """Expert policy over known procedural tasks; see the module docstring."""

    def __init__(self, tasks: Sequence, *, retrieve: bool = True, slip_rate: float = 0.0, name: str = "scripted"):
        self.name = name
        self.retrieve = retrieve
        self.slip_rate = slip_rate
        self._tasks = {}
        for t in tasks:
            d = task_dict(t)
            d["canonical_solution"] = getattr(t, "canonical_solution", None) if not isinstance(t, dict) \
                else t.get("canonical_solution")
            self._tasks[user_prompt(d)] = d

    def _pick(self, task_id: str, step: int, options: Sequence[str]) -> str:
        h = int(hashlib.sha256(f"{task_id}:{step}".encode()).hexdigest()[:8], 16)
        return options[h % len(options)]

    def _slip(self, task_id: str, step: int) -> bool:
        h = int(hashlib.sha256(f"slip:{task_id}:{step}".encode()).hexdigest()[:8], 16)
        return h / 16**8 < self.slip_rate

    def complete(self, messages: list[dict], *, max_tokens: int, temperature: float = 0.0,
                 stop: list[str] | None = None, seed: int | None = None) -> str:
        task = self._tasks[messages[1]["content"]]
        step = sum(m["role"] == "assistant" for m in messages)
        # the python tool appends "[exit status N]" on its own line: the value is the first line
        obs = messages[-1]["content"].removeprefix("Observation: ").strip().split("\n")[0] if step else ""
        if task["kind"] == "math":
            expr = task["prompt"].rstrip("=").strip()
            if step == 0 and all(len(d) == 1 for d in re.findall(r"\d+", expr)):
                thought = self._pick(task["task_id"], step, _THINK[("math", "mental")]).format(
                    expr=expr, obs=task["answer"])
                action = {"name": "finish", "arguments": {"answer": str(task["answer"])}}
            else:
                thought = self._pick(task["task_id"], step, _THINK[("math", min(step, 1))]).format(expr=expr, obs=obs)
                action = {"name": "python", "arguments": {"code": f"print({expr})"}} if step == 0 else \
                    {"name": "finish", "arguments": {"answer": obs}}
        else:
            fn = task["entry_point"]
            arg = re.search(r"\((\w+)", task["prompt"])
            looks_up = self.retrieve and arg is not None and arg.group(1) in ("s", "xs")
            plan = (["retrieve"] if looks_up else []) + ["python", "finish"]
            tool = plan[min(step, len(plan) - 1)]
            phase = {"retrieve": 0, "python": 1, "finish": 2}[tool]
            thought = self._pick(task["task_id"], step, _THINK[("code", phase)]).format(fn=fn, obs=obs)
            source = task["prompt"] + task["canonical_solution"]
            if tool == "retrieve":
                words = " ".join(re.split(r"[_\d]+", fn)).strip()
                action = {"name": "retrieve", "arguments": {"query": words or fn, "k": 1}}
            elif tool == "python":
                action = {"name": "python", "arguments": {"code": f"{source}\n{task['tests'][0]}\nprint('ok')"}}
            else:
                action = {"name": "finish", "arguments": {"answer": source}}
        if self._slip(task["task_id"], step):
            action = {**action, "name": action["name"].upper()}      # an unknown tool: a tool error
        return f"Thought: {thought}\nAction: {json.dumps(action)}"
