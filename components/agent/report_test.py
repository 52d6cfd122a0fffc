import json

from components.agent.report import summarize, write_report


def _rec(steps, *, success, finished=True, verified=True, format_errors=0, tool_errors=0, error=None):
    return {"steps": steps, "success": success, "finished": finished, "verified": verified,
            "format_errors": format_errors, "tool_errors": tool_errors, "teacher": "t", "error": error}


def _step(name=None, error=None):
    return {"thought": "", "action": {"name": name, "arguments": {}} if name else None,
            "observation": None, "error": error}


RECORDS = [
    _rec([_step("python"), _step("finish")], success=True),
    _rec([_step("python", "python: exit status 1"), _step("python"), _step("finish")], success=False,
         tool_errors=1),
    _rec([_step(None, "no Action"), _step("finish")], success=False, verified=False, format_errors=1),
    _rec([_step("retrieve")], success=False, finished=False, verified=None, error="teacher: HTTP 500"),
]


def test_summary_numbers_by_hand():
    s = summarize(RECORDS)
    # 8 replies; 7 parsed tool calls (python 3, finish 3, retrieve 1), 1 failed; 1 format error
    assert (s["trajectories"], s["successful"], s["success_rate"]) == (4, 1, 0.25)
    assert s["meets_target"] is False and s["success_target"] == 0.9
    assert (s["tool_calls"], s["tool_errors"], s["tool_error_rate"]) == (7, 1, 1 / 7)
    assert (s["format_errors"], s["format_error_rate"]) == (1, 1 / 8)
    assert s["steps_histogram"] == {"1": 1, "2": 2, "3": 1} and s["mean_steps"] == 2.0
    assert s["per_tool_calls"] == {"finish": 3, "python": 3, "retrieve": 1}
    assert s["per_tool_errors"] == {"finish": 0, "python": 1, "retrieve": 0}
    assert s["verified"] == {"passed": 2, "failed": 1, "unchecked": 1}
    assert (s["finished"], s["teacher_errors"]) == (3, 1)


def test_empty_set_and_files(tmp_path):
    s = summarize([])
    assert s["success_rate"] is None and s["tool_error_rate"] is None and not s["meets_target"]
    written = write_report(RECORDS, str(tmp_path / "r"))
    assert json.loads((tmp_path / "r" / "agent_quality.json").read_text()) == written
    assert (tmp_path / "r" / "agent_quality.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
