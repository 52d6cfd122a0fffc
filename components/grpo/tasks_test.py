import gzip
import json
import re

import pytest

from common.errors import ConfigError, InputDataError
from components.grpo.code_reward import CodeTestsReward
from components.grpo.code_templates import TEMPLATES, problem_key
from components.grpo.tasks import (
    FIELDS,
    Task,
    arithmetic_tasks,
    coding_tasks,
    read_task_file,
    split_of,
    task_fields,
)

N_CODE_PROBLEMS = sum(1 for t in TEMPLATES for _ in t.space())


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _all(family, split, **kw):
    """Every problem of a split: ask for too many and read the pool size off the error."""
    with pytest.raises(ConfigError) as e:
        family(10**6, seed=0, split=split, **kw)
    return family(int(re.search(r"has only (\d+)", str(e.value)).group(1)), seed=0, split=split, **kw)


# ---- arithmetic ----

def test_arithmetic_prompt_and_answer_follow_python_arithmetic():
    tasks = arithmetic_tasks(200, seed=3, max_operand=12)
    for t in tasks:
        a, op, b = re.fullmatch(r"(\d+)([-+*])(\d+)=", t.prompt).groups()
        assert 0 <= int(a) <= 12 and 0 <= int(b) <= 12
        assert t.answer == str(eval(f"{a}{op}{b}"))  # Python's own arithmetic is the reference
        assert t.kind == "math" and t.task_id == f"arith/{t.prompt[:-1]}" and t.tests == () and t.test is None
    assert len({t.task_id for t in tasks}) == 200
    assert any(t.answer.startswith("-") for t in tasks)  # subtraction goes negative


def test_arithmetic_splits_are_disjoint_and_cover_the_space():
    train, held = _all(arithmetic_tasks, "train"), _all(arithmetic_tasks, "eval")
    assert {t.task_id for t in train}.isdisjoint({t.task_id for t in held})
    assert len(train) + len(held) == 21 * 21 * 3  # a, b in 0..20, ops + - *
    assert 0.15 < len(held) / (len(train) + len(held)) < 0.25  # HELD_OUT_PERCENT = 20
    # the split belongs to the problem, not to the seed or the request
    assert {t.task_id for t in arithmetic_tasks(50, seed=9, split="held_out")} <= {t.task_id for t in held}


def test_arithmetic_is_deterministic_per_seed():
    assert arithmetic_tasks(30, seed=1) == arithmetic_tasks(30, seed=1)
    assert arithmetic_tasks(30, seed=1) != arithmetic_tasks(30, seed=2)
    assert all("*" in t.prompt for t in arithmetic_tasks(100, seed=0, ops="*"))


@pytest.mark.parametrize("kw,field", [({"ops": "/"}, "ops"), ({"ops": ""}, "ops"), ({"ops": "++"}, "ops"),
                                      ({"split": "test"}, "split"), ({"max_operand": 0}, "max_operand"),
                                      ({"n": -1}, "n"), ({"n": 10**6}, "n")])
def test_arithmetic_bad_arguments(kw, field):
    args = {"n": 5, "seed": 0, **kw}
    with pytest.raises(ConfigError, match=rf"arithmetic_tasks\.{field}"):
        arithmetic_tasks(args.pop("n"), **args)


# ---- coding ----

def test_reference_callables_on_hand_checked_inputs():
    ref = {t.key: t.reference for t in TEMPLATES}
    assert ref["add_const"]({"k": 7}, 1) == 8
    assert ref["multiply_const"]({"k": 3}, -4) == -12
    assert ref["divisible"]({"k": 3}, 9) is True and ref["divisible"]({"k": 3}, 10) is False
    assert ref["remainder"]({"k": 5}, 17) == 2
    assert ref["reverse_string"]({"case": "upper"}, "abC") == "CBA"
    assert ref["count_char"]({"c": "a"}, "banana") == 3
    assert [ref["list_reduce"]({"op": op}, [3, -1, 2]) for op in ("max", "min", "sum", "product")] == [3, -1, 4, -6]
    assert ref["repeat_string"]({"n": 3, "sep": "-"}, "ab") == "ab-ab-ab"
    assert [ref["clamp"]({"lo": 2, "hi": 8}, x) for x in (-1, 5, 10)] == [2, 5, 8]
    assert ref["count_greater"]({"k": 3}, [1, 4, 3, 9]) == 2


def test_coding_task_shape():
    tasks = coding_tasks(60, seed=0)
    assert len({t.task_id for t in tasks}) == 60
    for t in tasks:
        m = re.fullmatch(r'def ([a-z_0-9]+)\((\w+)\):\n    """[^\n]+"""\n', t.prompt)
        assert m, t.prompt
        assert t.kind == "code" and t.entry_point == m.group(1) and t.answer is None
        assert 3 <= len(t.tests) <= 5 and len(set(t.tests)) == len(t.tests)
        for test in t.tests:
            assert test.startswith(f"assert {t.entry_point}(")
            compile(test, "<test>", "exec")
        assert t.test.startswith("def check(candidate):\n") and all(x in t.test for x in t.tests)
    assert len(TEMPLATES) >= 8 and len({t.task_id.split("/")[1] for t in coding_tasks(120, seed=1)}) >= 8


def test_coding_splits_disjoint_and_deterministic():
    assert coding_tasks(20, seed=5) == coding_tasks(20, seed=5)
    assert coding_tasks(20, seed=5) != coding_tasks(20, seed=6)
    train, held = _all(coding_tasks, "train"), _all(coding_tasks, "eval")
    assert {t.task_id for t in train}.isdisjoint({t.task_id for t in held})
    assert len(train) + len(held) == N_CODE_PROBLEMS
    assert all(split_of(t.task_id) == "eval" for t in held)
    # the problem's identity ignores the function name: the key is template + constants only
    assert problem_key(TEMPLATES[0], {"k": 7}) == "code/add_const/k=7"


def test_every_generated_task_passes_with_its_reference_and_fails_without():
    """The reference body (canonical_solution) against the tests the reference callables made,
    for every problem of both splits, through the real sandbox."""
    tasks = _all(coding_tasks, "train") + _all(coding_tasks, "eval")
    fields, prompts = task_fields(tasks), [t.prompt for t in tasks]
    with CodeTestsReward(workers=2, timeout_s=5.0) as reward:
        assert reward(prompts, [t.canonical_solution for t in tasks], **fields) == [1.0] * len(tasks)
        assert reward(prompts, ["    return None\n"] * len(tasks), **fields) == [0.0] * len(tasks)
    with CodeTestsReward(mode="binary", workers=2, timeout_s=5.0) as reward:  # through check()
        assert reward(prompts, [t.canonical_solution for t in tasks], **fields) == [1.0] * len(tasks)


def test_task_fields_are_column_wise_and_aligned():
    tasks = arithmetic_tasks(2, seed=0) + coding_tasks(1, seed=0)
    cols = task_fields(tasks)
    assert tuple(cols) == FIELDS
    assert cols["task_id"] == [t.task_id for t in tasks] and cols["kind"] == ["math", "math", "code"]
    assert cols["answer"][2] is None and cols["tests"][2] == tasks[2].tests
    assert tasks[0].fields() == {k: cols[k][0] for k in FIELDS}


# ---- task files ----

MATH = {"task_id": "m1", "prompt": "2+2=", "answer": "4"}
CODE = {"task_id": "c1", "prompt": "def inc(x):\n", "tests": ["assert inc(1) == 2", "assert inc(-1) == 0"]}


def test_seekline_rows(tmp_path):
    tasks = read_task_file(_write(tmp_path / "t.jsonl", [MATH, "", {**MATH, "task_id": 7, "answer": -3}, CODE]))
    assert tasks[0] == Task("m1", "math", "2+2=", answer="4")
    assert tasks[1].task_id == "7" and tasks[1].answer == "-3"
    c = tasks[2]
    assert (c.kind, c.tests, c.entry_point) == ("code", tuple(CODE["tests"]), "inc")  # entry point from the def
    assert c.test == "def check(candidate):\n    assert inc(1) == 2\n    assert inc(-1) == 0\n"


def test_seekline_code_row_entry_point_from_tests_and_explicit_test(tmp_path):
    row = {"task_id": "c", "prompt": "Write a function that doubles a number.\n",
           "tests": ["assert len(str(double(5))) == 2"], "test": "def check(c):\n    assert c(2) == 4\n"}
    (t,) = read_task_file(_write(tmp_path / "t.jsonl", [row]))
    assert t.entry_point == "double" and t.test == row["test"]  # len/str are builtins, skipped


def test_gzipped(tmp_path):
    path = tmp_path / "t.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write(json.dumps(MATH) + "\n")
    assert read_task_file(path) == [Task("m1", "math", "2+2=", answer="4")]


def test_humaneval_and_mbpp_files(tmp_path):
    he = {"task_id": "HE/0", "prompt": "def f(x):\n", "test": "def check(c):\n    assert c(1) == 2\n",
          "entry_point": "f", "canonical_solution": "    return x + 1\n"}
    (t,) = read_task_file(_write(tmp_path / "he.jsonl", [he]))
    assert (t.kind, t.tests, t.test, t.entry_point) == ("code", (), he["test"], "f")  # binary through check()
    mbpp = {"task_id": 11, "text": "Add one.", "code": "import math\ndef add_one(x):\n    return x + 1",
            "test_list": ["assert add_one(1) == 2", "assert add_one(math.floor(2.5)) == 3"],
            "test_setup_code": "import math"}
    (m,) = read_task_file(_write(tmp_path / "mbpp.jsonl", [mbpp]))
    assert m.task_id == "11" and m.entry_point == "add_one"
    assert m.tests == ("import math\nassert add_one(1) == 2", "import math\nassert add_one(math.floor(2.5)) == 3")
    with CodeTestsReward(workers=1) as reward:  # each MBPP test runs alone, with its setup
        assert reward([m.prompt], [mbpp["code"]], **task_fields([m])) == [1.0]
        assert reward([m.prompt], ["def add_one(x):\n    return 2\n"], **task_fields([m])) == [0.5]


@pytest.mark.parametrize("rows,message", [
    ([MATH, {"task_id": "x", "prompt": "p"}],
     r"t\.jsonl:2: task has no tests or answer \(expected field 'answer'.*'tests'"),
    ([{**CODE, "tests": ["assert inc(1) == 2", "assert inc(1 ==="]}],
     r"t\.jsonl:1: field 'tests\[1\]' has a syntax error"),
    ([{**CODE, "test": "def check(c):\n  assert ("}], r"t\.jsonl:1: field 'test' has a syntax error"),
    ([MATH, MATH], r"t\.jsonl:2: field 'task_id': duplicate 'm1' \(first on line 1\)"),
    ([MATH, {"task_id": "h", "prompt": "def f():\n", "test": "def check(c): pass", "entry_point": "f"}],
     r"t\.jsonl:2: mixes seekline rows"),
    ([{**MATH, "tests": ["assert True"]}], r"t\.jsonl:1: has both 'answer' and 'tests'"),
    ([{**CODE, "tests": []}], r"t\.jsonl:1: field 'tests' must be a non-empty list"),
    ([{**MATH, "answer": ""}], r"t\.jsonl:1: field 'answer'"),
    ([{"task_id": "m", "answer": "1"}], r"t\.jsonl:1: missing field 'prompt'"),
    ([{"task_id": "c", "prompt": "Do it.\n", "tests": ["assert True"]}], r"t\.jsonl:1: missing field 'entry_point'"),
    (["{not json"], r"t\.jsonl:1: not valid JSON"),
    (["[1, 2]"], r"t\.jsonl:1: expected a JSON object"),
    ([""], r"t\.jsonl: no tasks \(the file is empty\)"),
])
def test_bad_task_files(tmp_path, rows, message):
    with pytest.raises(InputDataError, match=message):
        read_task_file(_write(tmp_path / "t.jsonl", rows))


def test_bad_humaneval_file_reports_through_the_evaluate_reader(tmp_path):
    bad = {"task_id": "HE/0", "prompt": "def f(x):\n", "test": "def check(c):\n  assert (", "entry_point": "f"}
    with pytest.raises(InputDataError, match=r"he\.jsonl:1: field 'test' has a syntax error"):
        read_task_file(_write(tmp_path / "he.jsonl", [bad]))
    with pytest.raises(InputDataError, match="no such file"):
        read_task_file(tmp_path / "missing.jsonl")
