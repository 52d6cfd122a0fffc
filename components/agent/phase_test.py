"""The agent-trajectory phase: trajectories → quality report → rows, resume, the success floor, and
a remote teacher behind a flaky loopback endpoint going through the same path."""
import json
import os

import pytest

from common.errors import UserError
from components.agent.fake_endpoint import FakeChatEndpoint, Reply
from components.agent.phase import (
    DATA_DIR,
    QUALITY_NAME,
    TRAJECTORIES_FILE,
    make_teacher,
    run_agent_trajectories,
)
from components.agent.testdata import TIPS, ScriptedTeacher
from components.grpo.tasks import arithmetic_tasks, coding_tasks
from configs.training import AgentConfig, AgentTeacherConfig


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from components.grpo.testdata import grpo_model_dir

    return grpo_model_dir(str(tmp_path_factory.mktemp("m")), layers=1, seq=512)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    for name, text in TIPS:
        (d / name).write_text(text + "\n", encoding="utf-8")
    return str(d)


def _cfg(**kw):
    return AgentConfig(**{"coding": 2, "arithmetic": 3, "max_steps": 4, "seq_len": 512, "eval_fraction": 0.3, **kw})


def _tasks():
    return arithmetic_tasks(3, seed=0) + coding_tasks(2, seed=0)


def test_trajectories_report_and_rows_then_resume(tmp_path, model_dir, corpus):
    out = str(tmp_path / "agent")
    teacher = ScriptedTeacher(_tasks())
    rep = run_agent_trajectories(_cfg(), model_dir, corpus, out, teacher=teacher)
    q = rep["quality"]
    # 3 arithmetic (two single-digit: finish at once; one python, finish) + 2 coding on a string / list
    # (retrieve, python, finish), every one verified
    assert (q["trajectories"], q["successful"], q["tool_errors"], q["format_errors"]) == (5, 5, 0, 0)
    assert q["per_tool_calls"] == {"finish": 5, "python": 3, "retrieve": 2}
    assert rep["tools"] == ["python", "retrieve", "finish"] and rep["generated"] == 5
    d = rep["dataset"]
    assert d["train"]["rows"] + d["eval"]["rows"] == 5 and d["eval"]["rows"] >= 1
    assert d["train"]["tool_name_tokens"] > 0 and d["train"]["json_tokens"] > 0
    for f in (TRAJECTORIES_FILE, f"{QUALITY_NAME}.json", f"{QUALITY_NAME}.png", "report.json",
              os.path.join(DATA_DIR, "config.json")):
        assert os.path.exists(os.path.join(out, f)), f
    cfg = json.loads(open(os.path.join(out, DATA_DIR, "config.json")).read())
    assert {"reason_mask", "action_mask", "tool_name_ids", "mask_valid_json_tokens"} <= set(cfg["features"])
    # a re-run keeps every trajectory and generates none
    before = open(os.path.join(out, TRAJECTORIES_FILE), "rb").read()
    again = run_agent_trajectories(_cfg(), model_dir, corpus, out, teacher=teacher)
    assert (again["generated"], again["resumed_skipped"]) == (0, 5)
    assert open(os.path.join(out, TRAJECTORIES_FILE), "rb").read() == before


class _Garbage:
    name = "garbage"

    def complete(self, messages, **kw):
        return "no idea"


def test_success_floor_fails_after_writing_the_report(tmp_path, model_dir):
    out = str(tmp_path / "agent")
    with pytest.raises(UserError, match=r"success rate 0\.0% \(0/5\) is below agent.min_success_rate=50%"):
        run_agent_trajectories(_cfg(min_success_rate=0.5, max_steps=1), model_dir, None, out, teacher=_Garbage())
    assert json.load(open(os.path.join(out, f"{QUALITY_NAME}.json")))["format_errors"] == 5
    assert not os.path.exists(os.path.join(out, DATA_DIR))


def test_only_successful_trajectories_train_unless_asked(tmp_path, model_dir):
    from common.errors import InputDataError

    with pytest.raises(InputDataError, match="agent train split has no rows"):
        run_agent_trajectories(_cfg(max_steps=1), model_dir, None, str(tmp_path / "a"), teacher=_Garbage())
    rep = run_agent_trajectories(_cfg(max_steps=1, require_success=False), model_dir, None, str(tmp_path / "b"),
                                 teacher=_Garbage())
    assert rep["dataset"]["train"]["rows"] + rep["dataset"]["eval"]["rows"] == 5


def test_remote_teacher_through_a_flaky_endpoint(tmp_path, model_dir, monkeypatch):
    scripted = ScriptedTeacher(_tasks())

    def respond(body):
        return scripted.complete(body["messages"], max_tokens=body.get("max_tokens", 512))

    script = [Reply("status", status=429, retry_after="0"), Reply("status", status=500), Reply("malformed")]
    with FakeChatEndpoint(script, responder=respond) as ep:
        monkeypatch.setenv("TEACHER_KEY", "k")
        cfg = _cfg(retrieval=False, teacher=AgentTeacherConfig(base_url=ep.base_url, model="r1", api_key_env="TEACHER_KEY"))
        teacher = make_teacher(cfg, model_dir)
        teacher.backoff_base_s = 0.0            # the retries themselves are what this checks, not their waits
        rep = run_agent_trajectories(cfg, model_dir, None, str(tmp_path / "a"), teacher=teacher)
    # coding tasks without the retrieve tool: the scripted teacher asks for it anyway → a tool error
    q = rep["quality"]
    assert q["trajectories"] == 5 and q["teacher_errors"] == 0
    assert rep["teacher_stats"]["retries"] == 3 and rep["teacher_stats"]["errors"]["rate_limited"] == 1
    assert rep["teacher"] == "r1"


def test_make_teacher_picks_the_in_process_model_without_an_endpoint(model_dir):
    from components.agent.teacher import ModelTeacher

    t = make_teacher(AgentConfig(), model_dir)
    assert isinstance(t, ModelTeacher) and t.name.startswith("local:")
    with pytest.raises(ValueError, match="give both base_url and model"):
        AgentTeacherConfig(base_url="http://x/v1")
    with pytest.raises(ValueError, match="at least 2 tasks"):
        AgentConfig(coding=1, arithmetic=0)
