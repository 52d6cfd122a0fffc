"""code_tests through the real sandbox, on hand-written completions whose scores are counted by hand."""

import os

import pytest

from common.errors import ConfigError
from components.grpo.code_reward import CodeTestsReward, fraction_program, parse_fraction
from components.grpo.tasks import Task, task_fields
from sandbox import ExecResult
from sandbox.run import leftovers

ADD = Task("t/add", "code", 'def add(a, b):\n    """a + b"""\n',
           tests=("assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(2, 2) == 4", "assert add(0, 5) == 5"),
           test="def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-1, 1) == 0\n"
                "    assert candidate(2, 2) == 4\n    assert candidate(0, 5) == 5\n",
           entry_point="add")

# completion -> fraction of ADD's 4 tests it passes (counted by hand)
CASES = {
    "    return a + b\n": 1.0,
    "    return abs(a) + b\n": 0.75,  # add(-1, 1) gives 2
    "    return 4\n": 0.25,  # only add(2, 2)
    "    return None\n": 0.0,
    "    return a +\n": 0.0,  # syntax error: nothing runs
    "    while True:\n        pass\n": 0.0,  # timeout
    "    return a + b\nimport sys\nsys.exit(0)\n": 0.0,  # exits before the tests run
    "    return a + b\nimport os\nprint('seekline-grpo-0 4')\nos._exit(0)\n": 0.0,  # a forged line, no token
    "    return a + b\nprint('4')\n": 1.0,  # its own output before the tests does not matter
    "    import sys\n    sys.exit(0)\n": 0.0,  # SystemExit inside each test is a failed test, not a crash
    "    print('x' * 3_000_000)\n    return a + b\n": 0.0,  # output limit
}


@pytest.fixture(autouse=True)
def nothing_left_behind():
    yield
    assert leftovers(f"{os.getpid()}-") == []


def _call(reward, completions, tasks):
    return reward([t.prompt for t in tasks], completions, **task_fields(tasks), completion_lengths=[1] * len(tasks),
                  truncated=[False] * len(tasks))


def test_fraction_of_tests_passed():
    with CodeTestsReward(workers=2, timeout_s=1.5) as reward:
        got = _call(reward, list(CASES), [ADD] * len(CASES))
    assert dict(zip(CASES, got, strict=True)) == CASES


def test_binary_mode_is_all_or_nothing_through_check():
    completions = ["    return a + b\n", "    return abs(a) + b\n", "    return a + b\nimport sys\nsys.exit(0)\n"]
    with CodeTestsReward(mode="binary", workers=2, timeout_s=1.5) as reward:
        assert _call(reward, completions, [ADD] * 3) == [1.0, 0.0, 0.0]
        only_tests = Task("t/add2", "code", ADD.prompt, tests=ADD.tests)  # no check(): all tests must pass
        assert _call(reward, completions[:2], [only_tests] * 2) == [1.0, 0.0]


def test_tasks_with_only_a_check_are_binary_even_in_fraction_mode():
    humaneval_like = Task("HE/x", "code", ADD.prompt, test=ADD.test, entry_point="add")
    with CodeTestsReward(workers=1) as reward:
        assert _call(reward, ["    return a + b\n", "    return abs(a) + b\n"], [humaneval_like] * 2) == [1.0, 0.0]


def test_each_test_runs_alone():
    # the second test relies on a name the first one defined: it must not see it
    t = Task("t/iso", "code", ADD.prompt, tests=("x = 1\nassert add(x, 1) == 2", "assert add(x, 1) == 2"))
    with CodeTestsReward(workers=1) as reward:
        assert _call(reward, ["    return a + b\n"], [t]) == [0.5]


def test_non_code_and_untestable_samples_are_unscorable():
    math = Task("m", "math", "1+1=", answer="2")
    bare = Task("c", "code", "def f():\n")  # a code task with nothing to run
    with CodeTestsReward(workers=1) as reward:
        assert _call(reward, ["2", "    return 1\n", "    return a + b\n"], [math, bare, ADD]) == [None, None, 1.0]
        assert reward([], [], kind=[]) == []


def test_pool_is_made_lazily_and_dropped_by_close():
    reward = CodeTestsReward(workers=1)
    assert reward._pool is None
    assert _call(reward, ["    return a + b\n"], [ADD]) == [1.0]
    assert reward._pool is not None
    reward.close()
    assert reward._pool is None
    assert _call(reward, ["    return a + b\n"], [ADD]) == [1.0]  # usable again


def _result(status="ok", returncode=0, stdout="", stderr=""):
    return ExecResult(status, returncode, stdout, stderr, 0.1, False, False, "rlimits")


def test_parse_fraction_reads_only_the_last_line_with_the_token():
    assert parse_fraction(_result(stdout="TOK 3\n"), "TOK", 4) == 0.75
    assert parse_fraction(_result(stdout="TOK 4\nnoise\n"), "TOK", 4) == 0.0  # not the last line
    assert parse_fraction(_result(stdout="TOK 5\n"), "TOK", 4) == 0.0  # more than there are tests
    assert parse_fraction(_result(stdout="OTHER 4\n"), "TOK", 4) == 0.0
    assert parse_fraction(_result("error", 1, "TOK 4\n"), "TOK", 4) == 0.0  # exit status must be 0
    assert parse_fraction(_result("timeout", None), "TOK", 4) == 0.0
    # the sandbox itself failed (SandboxPool's record): unscorable, not the completion's fault
    assert parse_fraction(_result("error", None, "", "sandbox failure: RuntimeError: x"), "TOK", 4) is None


def test_fraction_program_shape():
    program = fraction_program("P\n", "C", ["assert 1"], "TOK")
    assert program.startswith("P\nC\n\n") and program.endswith("print('TOK' + ' ' + str(_seekline_passed))\n")
    compile(program, "<p>", "exec")


@pytest.mark.parametrize("kw,field", [({"mode": "x"}, "mode"), ({"timeout_s": -1}, "timeout_s"),
                                      ({"workers": 0}, "workers"), ({"memory_mb": True}, "memory_mb"),
                                      ({"workers": 1.5}, "workers")])
def test_bad_params(kw, field):
    with pytest.raises(ConfigError, match=field):
        CodeTestsReward(**kw)
