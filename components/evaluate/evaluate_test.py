"""run_evaluate on tiny random models over real HumanEval problems; the blessing rules as a pure function."""
import json
import math

import pytest

from components.evaluate.evaluate import bless, run_evaluate, settings
from configs.training import BlessingConfig, EvaluateConfig


def _export(root, name, tok_dir, meta, phase: dict, seed: int) -> str:
    from components.pretrain.pretrain import export_final
    from model.config import ModelConfig
    from model.decoder import build_model

    hf = ModelConfig.load("tiny").to_hf_dict()
    hf.update(vocab_size=meta["vocab_size"], max_position_embeddings=160, rope_scaling=None, num_hidden_layers=1,
              first_k_dense_replace=1, num_nextn_predict_layers=0, bos_token_id=meta["bos_id"],
              eos_token_id=meta["eos_id"])
    model = build_model(ModelConfig.from_hf_dict(hf, source="test"), seed=seed)
    return export_final(model, str(root / name), tok_dir, {"seekline_phase.json": json.dumps(phase)})


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    from components.sft.testdata import seekline_tokenizer_dir
    from components.tokenizer.tokenizer import load_meta

    root = tmp_path_factory.mktemp("ev")
    tok_dir = seekline_tokenizer_dir(str(root))
    meta = load_meta(tok_dir)
    teacher = _export(root, "sft", tok_dir, meta, {"phase": "sft", "chat_template": "seekline"}, seed=1)
    student = _export(root, "student", tok_dir, meta, {"phase": "distill"}, seed=2)
    cfg = EvaluateConfig(max_problems=3, n_samples=2, k=[1, 2], max_new_tokens=16, batch_size=6, workers=2,
                         blessing=BlessingConfig(min_pass_at_1=0.5, require_no_worse_than_baseline=True))
    baseline = {"candidate": {"pass@1": 0.0, "pass@2": 0.0, "model": "earlier", "settings": settings(cfg)}}
    out = root / "out"
    summary = run_evaluate(cfg, student, str(out), teacher_dir=teacher, baseline_summary=baseline)
    return cfg, summary, out


def _closed_form(n: int, c: int, k: int) -> float:
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)  # Chen et al.'s definition


def test_outputs_and_pass_at_k_from_the_per_sample_results(evaluated):
    cfg, summary, out = evaluated
    assert summary["problems"] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    for name in ("summary.json", "report.png", "report.html"):
        assert (out / name).stat().st_size > 0
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    for role in ("candidate", "teacher"):
        samples = [json.loads(x) for x in (out / role / "samples.jsonl").read_text().splitlines()]
        results = [json.loads(x) for x in (out / role / "results.jsonl").read_text().splitlines()]
        per = [json.loads(x) for x in (out / role / "per_problem.jsonl").read_text().splitlines()]
        assert [s["task_id"] for s in samples] == [t for t in summary["problems"] for _ in range(2)]
        assert len(results) == 6 and all(r["result"] for r in results)
        for k in (1, 2):
            counts = [(sum(r["task_id"] == t for r in results), sum(r["task_id"] == t and r["passed"] for r in results))
                      for t in summary["problems"]]
            want = sum(_closed_form(n, c, k) for n, c in counts) / len(counts)
            assert summary[role][f"pass@{k}"] == pytest.approx(want)
            assert [p[f"pass@{k}"] for p in per] == pytest.approx([_closed_form(n, c, k) for n, c in counts])
        assert summary[role]["problems_attempted"] == 3 and summary[role]["samples"] == 6
    # both are asked through the chat template: the student inherits its teacher's
    assert summary["teacher"]["prompt_mode"] == summary["candidate"]["prompt_mode"] == "chat"
    assert summary["candidate"]["generation"]["prompts_truncated"] == 3  # HumanEval prompts > 160 - 16 tokens
    assert "HumanEval/0" in (out / "report.html").read_text()


def test_blessing_and_teacher_comparison(evaluated):
    cfg, summary, _ = evaluated
    b = summary["blessing"]
    p1 = summary["candidate"]["pass@1"]
    assert p1 < 0.5  # random weights do not solve HumanEval
    assert b["blessed"] is False
    by_rule = {r["rule"]: r for r in b["rules"]}
    assert by_rule["min_pass_at_1"]["passed"] is False and "< min_pass_at_1 0.5000" in by_rule["min_pass_at_1"]["reason"]
    assert by_rule["no_worse_than_baseline"]["passed"] is True  # baseline pass@1 0.0 (same settings)
    assert summary["baseline"]["model"] == "earlier"
    assert summary["comparison"]["student_pass@1"] == p1
    assert summary["comparison"]["teacher_pass@1"] == summary["teacher"]["pass@1"]
    # the same summaries under a floor of 0 are blessed
    assert bless(summary["candidate"], BlessingConfig(min_pass_at_1=0.0), teacher=summary["teacher"])["blessed"]


def test_bless_rules_on_hand_made_summaries():
    rules = BlessingConfig(min_pass_at_1=0.2, min_student_fraction_of_teacher=0.85,
                           require_no_worse_than_baseline=True)
    ok = bless({"pass@1": 0.45}, rules, teacher={"pass@1": 0.5}, baseline={"pass@1": 0.45})
    assert ok["blessed"] and [r["rule"] for r in ok["rules"]] == [
        "min_pass_at_1", "min_student_fraction_of_teacher", "no_worse_than_baseline"]
    low_frac = bless({"pass@1": 0.4}, rules, teacher={"pass@1": 0.5})  # 80% of the teacher
    assert not low_frac["blessed"]
    assert [r["passed"] for r in low_frac["rules"]] == [True, False, True]
    assert "80.0% of the teacher's 0.5000" in low_frac["rules"][1]["reason"]
    worse = bless({"pass@1": 0.44}, rules, teacher={"pass@1": 0.5}, baseline={"pass@1": 0.45})
    assert [r["passed"] for r in worse["rules"]] == [True, True, False]
    floor = bless({"pass@1": 0.1}, rules)
    assert [r["passed"] for r in floor["rules"]] == [False, True, True] and not floor["blessed"]
    # a teacher at 0 makes the fraction rule inapplicable, not failing
    zero = bless({"pass@1": 0.0}, BlessingConfig(), teacher={"pass@1": 0.0})
    assert zero["blessed"] and "rule not applied" in zero["rules"][1]["reason"]
    off = bless({"pass@1": 0.0}, BlessingConfig(min_student_fraction_of_teacher=None), teacher={"pass@1": 0.9})
    assert off["blessed"] and [r["rule"] for r in off["rules"]] == ["min_pass_at_1"]


def test_a_baseline_made_with_other_settings_is_not_compared():
    rules = BlessingConfig(require_no_worse_than_baseline=True)
    r = bless({"pass@1": 0.1}, rules, baseline_note="the baseline's summary was made with other evaluation settings")
    assert r["blessed"] and "other evaluation settings: rule not applied" in r["rules"][-1]["reason"]


def test_task_ids_repeated_across_task_files_are_an_error(tmp_path):
    from common.errors import InputDataError
    from components.evaluate.evaluate import load_problems

    row = {"task_id": "x/0", "prompt": "def f():\n", "test": "def check(c):\n    pass\n", "entry_point": "f"}
    for name in ("a.jsonl", "b.jsonl"):
        (tmp_path / name).write_text(json.dumps(row) + "\n")
    with pytest.raises(InputDataError, match=r"b.jsonl: field 'task_id': 'x/0' is also in an earlier task file"):
        load_problems(EvaluateConfig(tasks=[str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")]))
