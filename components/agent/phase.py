"""The agent-trajectory phase of the pipeline: teacher → trajectories → quality report → token rows.

run_agent_trajectories(cfg, teacher_dir, corpus_dir, output_dir):
  1. the teacher: cfg.teacher's OpenAI-compatible endpoint, else the pipeline's own model
     (teacher_dir, HF layout) in process;
  2. tasks (HumanEval / procedural coding / arithmetic, training splits) solved by the agent loop
     with the python sandbox, finish and — with cfg.retrieval and a corpus — BM25 retrieval over
     the ingested corpus, appended to OUTPUT/trajectories.jsonl one fsynced line at a time (a
     re-run resumes: finished trajectories are kept, a torn last line is regenerated);
  3. the quality report OUTPUT/agent_quality.json / .png (success, tool / format error rates,
     steps); below cfg.min_success_rate the phase fails after writing it;
  4. the rows: segmented, tokenized with the pipeline model's tokenizer (the student shares its
     vocabulary; tool ids are the full registry's, whichever tools this run had) into OUTPUT/data (components/agent/dataset.py: span + process-step masks);
  5. OUTPUT/report.json: all of the above plus the teacher's request statistics.
"""
from __future__ import annotations

import os
from typing import Any

from common.errors import UserError
from common.fileio import atomic_write_text
from configs.training import AgentConfig

TRAJECTORIES_FILE = "trajectories.jsonl"
DATA_DIR = "data"
QUALITY_NAME = "agent_quality"


def make_teacher(cfg: AgentConfig, teacher_dir: str):
    """The configured endpoint, else the pipeline model in teacher_dir run in process."""
    from components.agent.teacher import ModelTeacher, OpenAITeacher

    t = cfg.teacher
    if t.base_url is None:
        return ModelTeacher(teacher_dir, prompt_mode="auto")
    return OpenAITeacher(t.base_url, t.model, api_key_env=t.api_key_env, timeout_s=t.timeout_s,
                         max_retries=t.max_retries, requests_per_minute=t.requests_per_minute,
                         tokens_per_minute=t.tokens_per_minute)


def run_agent_trajectories(cfg: AgentConfig, teacher_dir: str, corpus_dir: str | None, output_dir: str, *,
                           teacher=None, humaneval_path: str | None = None) -> dict[str, Any]:
    """Generate (or resume) the trajectories and build the agent rows; returns the phase report.
    `teacher` overrides the configured one (tests, custom teachers)."""
    import json

    from components.agent.dataset import build_agent_dataset_files
    from components.agent.loop import generate_trajectories, load_tasks, read_records
    from components.agent.report import write_report
    from components.agent.tools import build_tools, load_corpus

    os.makedirs(output_dir, exist_ok=True)
    corpus = load_corpus(corpus_dir) if cfg.retrieval and corpus_dir else None
    tools = build_tools(corpus)
    tasks = load_tasks(humaneval=cfg.humaneval, coding=cfg.coding, arithmetic=cfg.arithmetic, seed=cfg.seed,
                       humaneval_path=humaneval_path)
    teacher = teacher if teacher is not None else make_teacher(cfg, teacher_dir)
    path = os.path.join(output_dir, TRAJECTORIES_FILE)
    run = generate_trajectories(teacher, tasks, path, samples_per_task=cfg.samples_per_task, tools=tools,
                                max_steps=cfg.max_steps, max_tokens=cfg.max_tokens, temperature=cfg.temperature,
                                seed=cfg.seed)
    records, _ = read_records(path)
    quality = write_report(records, output_dir, QUALITY_NAME)
    report: dict[str, Any] = {
        "phase": "agent_trajectories", "teacher": getattr(teacher, "name", type(teacher).__name__),
        "tasks": len(tasks), "tools": list(tools), "generated": run["generated"], "resumed_skipped": run["skipped"],
        "torn_lines_dropped": run["torn_lines_dropped"], "quality": quality,
        "teacher_stats": getattr(teacher, "stats", None)}
    rate = quality["success_rate"] or 0.0
    if rate < cfg.min_success_rate:
        atomic_write_text(os.path.join(output_dir, "report.json"), json.dumps(report, indent=1, sort_keys=True))
        raise UserError(f"agent teacher {report['teacher']}: success rate {rate:.1%} "
                        f"({quality['successful']}/{quality['trajectories']}) is below "
                        f"agent.min_success_rate={cfg.min_success_rate:.0%}; see {output_dir}/{QUALITY_NAME}.json")
    report["dataset"] = build_agent_dataset_files(
        path, os.path.join(output_dir, DATA_DIR), tokenizer_path=os.path.join(teacher_dir, "tokenizer.json"),
        seq_len=cfg.seq_len, process_supervision=cfg.process_supervision,
        eval_fraction=cfg.eval_fraction, seed=cfg.seed, require_success=cfg.require_success,
        format_targets=cfg.format_targets)
    atomic_write_text(os.path.join(output_dir, "report.json"), json.dumps(report, indent=1, sort_keys=True))
    return report
