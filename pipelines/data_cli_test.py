"""`seekline data trajectories | segment | agent-dataset` end to end, in process through
pipelines.cli.main: a scripted loopback chat endpoint as the teacher, the real sandboxed python tool,
the real segmenter and tokenizer."""
from __future__ import annotations

import json
import os

import pytest

from components.agent.fake_endpoint import FakeChatEndpoint, Reply
from components.grpo.tasks import arithmetic_tasks
from components.sft.testdata import chatml_tokenizer_dir
from pipelines.cli import EXIT_USER_ERROR, main

PROCESS_FEATURES = {"tool_name_ids", "tool_name_mask", "gold_json_text_ids", "mask_valid_json_tokens",
                    "tool_result_fields", "integration_mask"}  # the issue-11 contract names


def _action(name, **arguments):
    return json.dumps({"name": name, "arguments": arguments})


def _script(tasks):
    """python (print the expression) then finish (the answer), per task, in the order the loop asks."""
    out = []
    for t in tasks:
        expr = t.prompt.rstrip("=")
        out += [Reply(content=f"Thought: compute it\nAction: {_action('python', code=f'print({expr})')}"),
                Reply(content=f"Thought: got it\nAction: {_action('finish', answer=t.answer)}")]
    return out


def _lines(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def test_trajectories_from_an_endpoint_then_resume(tmp_path, capsys):
    tasks = arithmetic_tasks(2, seed=0)  # what --arithmetic 2 --seed 0 loads
    out = str(tmp_path / "traj" / "t.jsonl")
    argv = ["data", "trajectories", "--teacher-model", "fake", "--api-key-env", "none", "--arithmetic", "2",
            "--seed", "0", "--out", out, "--max-steps", "4", "--rpm", "6000"]
    with FakeChatEndpoint(_script(tasks), default=Reply(content="no more script")) as ep:
        assert main([*argv, "--teacher-url", ep.base_url]) == 0
        assert len(ep.requests) == 4
        first = capsys.readouterr().out
        records = _lines(out)
        assert [r["task_id"] for r in records] == [t.task_id for t in tasks]
        for r, t in zip(records, tasks, strict=True):
            assert (r["finished"], r["verified"], r["success"], r["final_answer"]) == (True, True, True, t.answer)
            assert r["steps"][0]["observation"] == f"{t.answer}\n[exit status 0]"  # the sandbox ran the code
            assert f"\nObservation: {t.answer}\n[exit status 0]\nThought: got it\n" in r["text"]
            assert r["teacher"] == "fake" and (r["format_errors"], r["tool_errors"]) == (0, 0)
        report = json.loads(open(out + ".report.json").read())
        assert (report["trajectories"], report["success_rate"], report["tool_calls"], report["tool_error_rate"]) \
            == (2, 1.0, 4, 0.0)
        assert report["per_tool_calls"] == {"finish": 2, "python": 2} and report["steps_histogram"] == {"2": 2}
        assert open(out + ".report.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"
        assert "2 generated, 0 already in the file" in first
        assert "success rate: 100.0% (2/2), meets the 90% target" in first
        assert "tool error rate: 0.0% (0/4 calls)" in first
        # the same command again: everything is in the file, the teacher is not asked
        before = open(out, "rb").read()
        assert main([*argv, "--teacher-url", ep.base_url]) == 0
        assert len(ep.requests) == 4 and open(out, "rb").read() == before
        assert "0 generated, 2 already in the file" in capsys.readouterr().out


@pytest.mark.parametrize("extra, message", [
    ([], "no teacher"),
    (["--teacher-url", "http://127.0.0.1:9/v1"], "--teacher-model is missing"),
    (["--teacher-model", "m", "--teacher-model-dir", "x"], "not both"),
    (["--teacher-url", "127.0.0.1:9", "--teacher-model", "m"], "expected an http(s)://"),
    (["--teacher-url", "http://127.0.0.1:9/v1", "--teacher-model", "m", "--api-key-env", "SEEKLINE_NO_SUCH_VAR"],
     "SEEKLINE_NO_SUCH_VAR"),
])
def test_trajectories_teacher_flag_errors(tmp_path, capsys, extra, message):
    out = tmp_path / "t.jsonl"
    assert main(["data", "trajectories", "--arithmetic", "1", "--out", str(out), *extra]) == EXIT_USER_ERROR
    err = capsys.readouterr().err.strip()
    assert err.startswith("seekline: error:") and message in err and "\n" not in err
    assert not out.exists()


def test_trajectories_needs_tasks(tmp_path, capsys):
    assert main(["data", "trajectories", "--teacher-model-dir", str(tmp_path), "--out",
                 str(tmp_path / "t.jsonl")]) == EXIT_USER_ERROR
    assert "no tasks" in capsys.readouterr().err


def _trajectory(answer: str, expr: str) -> str:
    return (f"Thought: compute {expr}\nAction: {_action('python', code=f'print({expr})')}\n"
            f"Observation: {answer}\n[exit status 0]\n"
            f"Thought: the result is {answer}\nAction: {_action('finish', answer=answer)}\n")


def test_segment_writes_spans_and_names_malformed_lines(tmp_path, capsys):
    text = _trajectory("7", "3+4")
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"id": "a", "text": text}) + "\n" + '{"id": "b", "text": \n'
                   + json.dumps({"id": "c", "text": text, "extra": 1}) + "\n")
    dst = tmp_path / "out.jsonl"
    assert main(["data", "segment", str(src), str(dst)]) == 0
    out, err = capsys.readouterr()
    rows = _lines(dst)
    assert [r["id"] for r in rows] == ["a", "c"] and rows[1]["extra"] == 1
    # the contract's spans, located by hand in the text: label keywords and their blanks excluded
    step1_json = _action("python", code="print(3+4)")
    step2_json = _action("finish", answer="7")
    def at(s, after=0):
        i = text.index(s, after)
        return [i, i + len(s)]
    expected = [at("compute 3+4") + ["REASON"], at(step1_json) + ["ACT"], at("7\n[exit status 0]") + ["OBSERVATION"],
                at("the result is 7") + ["REASON"], at(step2_json) + ["ACT"]]
    assert rows[0]["spans"] == expected and rows[1]["spans"] == expected
    assert f"{src}:2:" in err
    assert "records: 2 segmented, 1 malformed lines left out" in out
    assert "spans: REASON 4, ACT 4, OBSERVATION 2" in out


def test_segment_errors_are_one_line(tmp_path, capsys):
    assert main(["data", "segment", str(tmp_path / "missing.jsonl"), str(tmp_path / "o.jsonl")]) == EXIT_USER_ERROR
    assert "missing.jsonl" in capsys.readouterr().err
    f = tmp_path / "same.jsonl"
    f.write_text("{}\n")
    assert main(["data", "segment", str(f), str(f)]) == EXIT_USER_ERROR
    assert "must differ" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return chatml_tokenizer_dir(str(tmp_path_factory.mktemp("tok")))


@pytest.mark.parametrize("process", [True, False])
def test_agent_dataset_features_follow_the_flag(tmp_path, capsys, tokenizer, process):
    src = tmp_path / "traj.jsonl"
    rows = [{"id": f"r{i}", "task_id": f"arith/{e}", "text": _trajectory(a, e), "success": True}
            for i, (e, a) in enumerate([("3+4", "7"), ("2*5", "10"), ("9-1", "8"), ("6+6", "12")])]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    seg = tmp_path / "seg.jsonl"
    assert main(["data", "segment", str(src), str(seg)]) == 0
    out_dir = tmp_path / "ds"
    argv = ["data", "agent-dataset", str(seg), str(out_dir), "--tokenizer-path", tokenizer, "--seq-len", "256",
            "--eval-fraction", "0.5"]
    assert main(argv + ([] if process else ["--no-process-supervision"])) == 0
    printed = capsys.readouterr().out
    config = json.loads((out_dir / "config.json").read_text())
    report = json.loads((out_dir / "report.json").read_text())
    features = set(config["features"])
    assert {"input_ids", "loss_mask", "reason_mask", "action_mask"} <= features
    assert (PROCESS_FEATURES <= features) if process else not (PROCESS_FEATURES & features)
    assert config["seq_len"] == 256 and config["process_supervision"] is process
    assert report["train"]["rows"] + report["eval"]["rows"] == 4
    assert min(report["train"]["rows"], report["eval"]["rows"]) >= 1
    assert os.listdir(out_dir / "Split-train") and os.listdir(out_dir / "Split-eval")
    assert f"process supervision: {'on' if process else 'off'}" in printed


def test_agent_dataset_flag_errors(tmp_path, capsys, tokenizer):
    src = tmp_path / "traj.jsonl"
    src.write_text(json.dumps({"id": "a", "text": _trajectory("7", "3+4")}) + "\n")
    for extra, message in ((["--tokenizer-path", str(tmp_path), "--seq-len", "64"], "--tokenizer-path"),
                           (["--tokenizer-path", tokenizer, "--seq-len", "1"], "--seq-len must be >= 2"),
                           (["--tokenizer-path", tokenizer, "--seq-len", "64", "--eval-fraction", "1"],
                            "--eval-fraction")):
        assert main(["data", "agent-dataset", str(src), str(tmp_path / "ds"), *extra]) == EXIT_USER_ERROR
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err
    assert not (tmp_path / "ds").exists()
