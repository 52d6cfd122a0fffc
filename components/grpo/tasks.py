"""GRPO tasks: what the policy is prompted with and what its reward functions check.

Two procedural families (arithmetic, small coding functions) and a reader for task files
(seekline JSONL, HumanEval, MBPP). A task is math (an exact ``answer``) or code (independent
assert ``tests`` and/or a human-eval ``test`` defining ``check(candidate)``).

Train / held-out split: each family enumerates a finite space of distinct problems and a hash
of the problem's canonical form (not of the seed) puts it in "train" or "eval" (about
HELD_OUT_PERCENT % held out). So the splits are disjoint by construction whatever seeds the
two sides use; the seed only picks which problems of the split are drawn, in which order, and
(for code) the function names and test inputs.
"""

from __future__ import annotations

import ast
import builtins
import hashlib
import os
import random
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from common.errors import ConfigError, InputDataError
from components.evaluate.jsonl import iter_json_lines
from components.evaluate.problems import read_problems
from components.grpo.code_templates import TEMPLATES, problem_key

HELD_OUT_PERCENT = 20
SPLITS = {"train": "train", "eval": "eval", "held_out": "eval"}  # accepted name -> split
FIELDS = ("task_id", "kind", "answer", "tests", "test", "entry_point")  # what reward functions see
_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


@dataclass(frozen=True)
class Task:
    task_id: str
    kind: str  # "math" | "code"
    prompt: str  # the text the policy continues (plain completion style)
    answer: str | None = None  # math: the exact expected answer, e.g. "85", "-3", "3/4"
    tests: tuple[str, ...] = ()  # code: independent test statements, each runnable alone
    test: str | None = None  # code: human-eval source defining check(candidate); set for every code task
    entry_point: str | None = None  # code: the function check() is called with
    canonical_solution: str | None = None  # code: a reference body (generated tasks, HumanEval, MBPP)

    def fields(self) -> dict:
        """The fields reward functions receive for this task (see FIELDS)."""
        d = asdict(self)
        return {k: d[k] for k in FIELDS}


def task_fields(tasks: Sequence[Task]) -> dict[str, list]:
    """Column-wise reward fields, aligned with `tasks` (one entry per task, in order)."""
    rows = [t.fields() for t in tasks]
    return {k: [r[k] for r in rows] for k in FIELDS}


def split_of(problem_key: str) -> str:
    """"train" or "eval" for a problem's canonical form; stable across runs and machines."""
    h = int.from_bytes(hashlib.sha256(problem_key.encode()).digest()[:8], "big")
    return "eval" if h % 100 < HELD_OUT_PERCENT else "train"


def _split(split: str, where: str) -> str:
    if split not in SPLITS:
        raise ConfigError(f"{where}.split: must be one of {', '.join(SPLITS)}, got {split!r}")
    return SPLITS[split]


def _draw(pool: list, n: int, seed: int, where: str, what: str) -> list:
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ConfigError(f"{where}.n: must be an integer >= 0, got {n!r}")
    if n > len(pool):
        raise ConfigError(f"{where}.n: {n} tasks asked for but the split has only {len(pool)} distinct "
                          f"problems ({what})")
    return random.Random(seed).sample(pool, n)


def arithmetic_tasks(n: int, *, seed: int, split: str = "train", max_operand: int = 20,
                     ops: str = "+-*") -> list[Task]:
    """`n` distinct problems "{a}{op}{b}=" (a, b in 0..max_operand) whose answer is str(result);
    the policy is expected to complete e.g. "17+68=" with "85\\n"."""
    split = _split(split, "arithmetic_tasks")
    if not ops or any(op not in _OPS for op in ops) or len(set(ops)) != len(ops):
        raise ConfigError(f"arithmetic_tasks.ops: distinct characters of {''.join(_OPS)!r}, got {ops!r}")
    if not isinstance(max_operand, int) or max_operand < 1:
        raise ConfigError(f"arithmetic_tasks.max_operand: must be an integer >= 1, got {max_operand!r}")
    pool = [(a, op, b) for op in ops for a in range(max_operand + 1) for b in range(max_operand + 1)
            if split_of(f"arith/{a}{op}{b}") == split]
    return [Task(f"arith/{a}{op}{b}", "math", f"{a}{op}{b}=", answer=str(_OPS[op](a, b)))
            for a, op, b in _draw(pool, n, seed, "arithmetic_tasks", f"max_operand={max_operand}, ops={ops!r}")]


def coding_tasks(n: int, *, seed: int, split: str = "train") -> list[Task]:
    """`n` distinct small-function problems (code_templates.TEMPLATES): a human-eval style prompt
    (signature + one-line docstring), 3-5 independent asserts whose expected values come from
    the template's reference callable, the same asserts as check(candidate), and the reference
    body as canonical_solution."""
    split = _split(split, "coding_tasks")
    pool = [(t, p) for t in TEMPLATES for p in t.space() if split_of(problem_key(t, p)) == split]
    rng = random.Random(f"coding_tasks/{seed}/{split}")  # names and inputs; the draw uses `seed`
    return [_coding_task(t, p, rng) for t, p in _draw(pool, n, seed, "coding_tasks", f"{len(TEMPLATES)} templates")]


def _coding_task(template, params: dict, rng: random.Random) -> Task:
    name = rng.choice(template.names).format(**template.context(params))
    prompt, body = template.render(params, name)
    want, seen, calls = rng.randint(3, 5), set(), []
    for _ in range(100):  # distinct inputs; every template's input space is far larger than 5
        args = template.draw(rng, params)
        if repr(args) not in seen:
            seen.add(repr(args))
            calls.append(args)
        if len(calls) == want:
            break
    tests = tuple(f"assert {name}({', '.join(map(repr, a))}) == {template.reference(params, *a)!r}" for a in calls)
    return Task(problem_key(template, params), "code", prompt, tests=tests, test=_check_source(tests),
                entry_point=name, canonical_solution=body)


def _check_source(tests: Sequence[str]) -> str:
    """check(candidate) running the asserts (which call the function by name, as MBPP's do)."""
    body = "\n".join("    " + line for t in tests for line in t.splitlines())
    return f"def check(candidate):\n{body}\n"


# ---- task files ----

def read_task_file(path: str | os.PathLike[str]) -> list[Task]:
    """Tasks of a .jsonl / .jsonl.gz file, in file order. Either seekline rows
    {"task_id", "prompt", "answer"} (math) / {"task_id", "prompt", "tests": [...],
    "entry_point"?, "test"?} (code), or a HumanEval / MBPP file (read by
    components.evaluate.problems: HumanEval rows score through check(), MBPP rows also get their
    test_list as `tests`). One format per file. Faults raise InputDataError naming file:line."""
    path = os.fspath(path)
    rows: list[tuple[int, dict]] = []
    for lineno, row, err in iter_json_lines(path):
        where = f"{path}:{lineno}"
        if err:
            raise InputDataError(f"{where}: {err}")
        if not isinstance(row, dict):
            raise InputDataError(f"{where}: expected a JSON object per line, got {type(row).__name__}")
        if not any(k in row for k in ("answer", "tests", "test", "test_list")):
            raise InputDataError(f"{where}: task has no tests or answer (expected field 'answer' (math), "
                                 f"'tests' (code), or HumanEval 'test' / MBPP 'test_list')")
        rows.append((lineno, row))
    if not rows:
        raise InputDataError(f"{path}: no tasks (the file is empty)")
    ours = [("answer" in r or "tests" in r) for _, r in rows]
    if any(ours) and not all(ours):
        lineno = rows[ours.index(not ours[0])][0]
        raise InputDataError(f"{path}:{lineno}: mixes seekline rows ('answer'/'tests') with HumanEval/MBPP rows "
                             "('test'/'test_list'); use one format per file")
    tasks = [_seekline_task(r, f"{path}:{n}") for n, r in rows] if ours[0] else _standard_tasks(path, rows)
    first: dict[str, int] = {}
    for (lineno, _), t in zip(rows, tasks, strict=True):
        if t.task_id in first:
            raise InputDataError(f"{path}:{lineno}: field 'task_id': duplicate {t.task_id!r} "
                                 f"(first on line {first[t.task_id]})")
        first[t.task_id] = lineno
    return tasks


def _str_field(row: dict, name: str, where: str, required: bool = True) -> str | None:
    if name not in row or row[name] is None:
        if required:
            raise InputDataError(f"{where}: missing field {name!r} (have: {', '.join(sorted(row))})")
        return None
    if not isinstance(row[name], str):
        raise InputDataError(f"{where}: field {name!r} must be a string, got {type(row[name]).__name__}")
    return row[name]


def _compiles(source: str, field: str, where: str) -> None:
    try:
        compile(source, f"<{field}>", "exec")
    except SyntaxError as e:
        raise InputDataError(f"{where}: field {field!r} has a syntax error: {e.msg} "
                             f"(line {e.lineno} of the field)") from None


def _seekline_task(row: dict, where: str) -> Task:
    task_id = row.get("task_id")
    if isinstance(task_id, bool) or not isinstance(task_id, (str, int)):
        raise InputDataError(f"{where}: field 'task_id' must be a string or integer, got {task_id!r}")
    task_id, prompt = str(task_id), _str_field(row, "prompt", where)
    if "answer" in row and "tests" in row:
        raise InputDataError(f"{where}: has both 'answer' and 'tests'; a task is math (answer) or code (tests)")
    if "answer" in row:
        answer = row["answer"]
        if isinstance(answer, bool) or not isinstance(answer, (str, int, float)) or not str(answer).strip():
            raise InputDataError(f"{where}: field 'answer' must be a non-empty string or a number, got {answer!r}")
        return Task(task_id, "math", prompt, answer=str(answer))
    tests = row["tests"]
    if not isinstance(tests, list) or not tests or not all(isinstance(t, str) and t.strip() for t in tests):
        raise InputDataError(f"{where}: field 'tests' must be a non-empty list of non-empty strings")
    for i, t in enumerate(tests):
        _compiles(t, f"tests[{i}]", where)
    test = _str_field(row, "test", where, required=False)
    if test is not None:
        _compiles(test, "test", where)
    entry_point = _str_field(row, "entry_point", where, required=False) or _infer_entry_point(prompt, tests, where)
    if not entry_point.isidentifier():
        raise InputDataError(f"{where}: field 'entry_point' must be a Python identifier, got {entry_point!r}")
    return Task(task_id, "code", prompt, tests=tuple(tests), test=test or _check_source(tests),
                entry_point=entry_point, canonical_solution=_str_field(row, "canonical_solution", where, False))


def _infer_entry_point(prompt: str, tests: list[str], where: str) -> str:
    """The last function the prompt starts (``def name(``), else the first non-builtin the
    tests call."""
    defs = re.findall(r"^def\s+([A-Za-z_]\w*)\s*\(", prompt, flags=re.M)
    if defs:
        return defs[-1]
    for t in tests:
        for node in ast.walk(ast.parse(t)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not hasattr(builtins, node.func.id):
                return node.func.id
    raise InputDataError(f"{where}: missing field 'entry_point' (the prompt defines no function and the tests "
                         "call none)")


def _standard_tasks(path: str, rows: list[tuple[int, dict]]) -> list[Task]:
    problems = read_problems(path)  # validates every row and field, naming file:line
    tasks = []
    for _, row in rows:
        p = problems[str(row["task_id"])]
        tests: tuple[str, ...] = ()
        if "test_list" in row:  # MBPP: its asserts, each with the setup it needs, as independent tests
            setup = "\n".join([*(row.get("test_imports") or []), row.get("test_setup_code") or ""]).strip()
            tests = tuple(f"{setup}\n{t}" if setup else t for t in row["test_list"])
        tasks.append(Task(p.task_id, "code", p.prompt, tests=tests, test=p.test, entry_point=p.entry_point,
                          canonical_solution=p.canonical_solution))
    return tasks
