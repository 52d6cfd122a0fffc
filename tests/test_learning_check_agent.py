"""Learning check of agent distillation (issue 11): a student trained with SAD + process-step
supervision acts better on held-out tasks than one trained with plain SFT on the same
trajectories, for the same steps and seeds.

Setup (tiny, CPU):
  - trajectories: the scripted expert teacher (components/agent/testdata.ScriptedTeacher) solves
    150 arithmetic and 60 coding training tasks through the real agent loop, sandbox, BM25
    retrieval and verifier — single-digit math: finish at once, other math: python → finish; code
    on a string or list: retrieve → python → finish, other code: python → finish (so the first
    tool depends on details of the task); held out: 30 arithmetic + 20 coding tasks of the
    disjoint eval splits;
  - a BPE tokenizer trained on the training trajectories; rows with the span and process-step
    masks (components/agent/dataset.py, successful trajectories only);
  - the KL teacher: a 3-layer model trained on the rows with plain CE (300 steps);
  - two arms × 6 seeds, 2-layer students from scratch, 150 steps each, same data order per seed:
      sft  plain SFT — CE on every teacher-written token (process supervision off)
      sad  SAD + process-step supervision + the validity term: span-weighted KL to the teacher
           (λ_r = 0.25, λ_a = 1, α = 1) + 10 · tool-name CE + 0.3 · JSON-argument CE over the SAD
           weight (normalize="span"), plus training/agent_validity.py's sequence-level term
           (weight 4: from mid-run on, the student writes Action lines at the rows' Action
           positions — greedy + 3 samples — rewarded when parse_reply reads an executable tool
           call); the same optimiser steps;
  - measured (components/agent/action_eval.py): at every Action of the held-out trajectories the
    student writes the action line from the teacher's context — tool_name_accuracy and
    valid_json_rate (a registry tool, an object of arguments: what the loop could execute).
Asserted: the tool-name gain is larger than either arm's seed spread; the valid-JSON mean is
higher than plain SFT's, and SAD is higher on more seeds than it is lower (paired: same data order
per seed; ties count for neither). Six seeds, because the valid-JSON effect is smaller than the
seed-to-seed spread of a single arm: with three, one unlucky seed decides the paired test. The
seed's default weights (λ = 1, 0.7 / 0.3, no validity term) win on tool choice but LOWER the
valid-JSON rate here — docs/agent.md, "Learning check", has every variant measured.
"""
import json
import os

import numpy as np
import pytest

pytestmark = pytest.mark.slow

SEEDS = (0, 1, 2, 3, 4, 5)
STEPS = 150
TEACHER_STEPS = 300
SEQ_LEN = 320
STUDENT = {"rope_scaling": None, "num_hidden_layers": 2, "num_nextn_predict_layers": 0}
METRICS = ("tool_name_accuracy", "valid_json_rate")


def _trajectories(root):
    from components.agent.loop import generate_trajectories, read_records
    from components.agent.testdata import TIPS, ScriptedTeacher
    from components.agent.tools import build_tools
    from components.grpo.tasks import arithmetic_tasks, coding_tasks

    train = arithmetic_tasks(150, seed=0, split="train") + coding_tasks(60, seed=0, split="train")
    held = arithmetic_tasks(30, seed=0, split="eval") + coding_tasks(20, seed=0, split="eval")
    assert not {t.task_id for t in train} & {t.task_id for t in held}
    teacher, tools = ScriptedTeacher(train + held), build_tools(list(TIPS))
    paths = {}
    for name, tasks in (("train", train), ("heldout", held)):
        paths[name] = os.path.join(root, f"{name}.jsonl")
        summary = generate_trajectories(teacher, tasks, paths[name], tools=tools, max_steps=4)
        assert summary["success_rate"] == 1.0, summary          # the expert solves every task
    return paths["train"], read_records(paths["heldout"])[0]


def _tokenizer(root, train_jsonl):
    from components.agent.dataset import default_prompt
    from components.agent.loop import read_records
    from components.common.testdata import write_text_examples
    from components.tokenizer import tokenizer as tkz
    from configs.schema import TokenizerConfig

    texts = [default_prompt(r) + r["text"] for r in read_records(train_jsonl)[0]]
    write_text_examples(os.path.join(root, "ex"), {"train": texts, "eval": texts[:4]})
    tok = os.path.join(root, "tok")
    tkz.train_from_examples(os.path.join(root, "ex"), tok, TokenizerConfig(
        vocab_size=1024, roundtrip_check_docs=5, max_training_bytes=None, min_frequency=2))
    return tok


def _vocab_model(root, tok):
    """A random model folder with the vocabulary: run_distill reads the vocab / special ids from
    its 'teacher' when it trains the KL teacher itself (loss=ce, no teacher term)."""
    from components.pretrain.pretrain import export_final
    from model.config import ModelConfig
    from model.decoder import build_model

    meta = json.load(open(os.path.join(tok, "tokenizer_meta.json")))
    hf = ModelConfig.load("tiny").to_hf_dict()
    hf.update(vocab_size=meta["vocab_size"], bos_token_id=meta["bos_id"], eos_token_id=meta["eos_id"],
              rope_scaling=None, num_nextn_predict_layers=0, max_position_embeddings=SEQ_LEN)
    out = os.path.join(root, "vocab_model")
    export_final(build_model(ModelConfig.from_hf_dict(hf, source="test"), seed=0), out, tok, {})
    return os.path.join(out, "final"), meta["pad_id"]


def _process(enabled: bool):
    """The `sad` arm's process supervision (module docstring); off for plain SFT."""
    from configs.training import ActionValidityConfig, ProcessSupervisionConfig

    if not enabled:
        return ProcessSupervisionConfig(enabled=False)
    return ProcessSupervisionConfig(enabled=True, lambda_reason=0.25, tool_weight=10.0, normalize="span",
                                    validity=ActionValidityConfig(weight=4.0))


def _train(out, rows, tok, teacher_dir, *, loss, process, steps, seed, overrides=STUDENT):
    """One run_distill; process=True is the `sad` arm's objective (α = 1)."""
    from components.distill.distill import run_distill
    from configs.training import DistillConfig, TrainerConfig

    cfg = DistillConfig(
        student_model="tiny", student_overrides=overrides, loss=loss, temperature=1.0, alpha=1.0,
        process_supervision=_process(process),
        trainer=TrainerConfig(steps=steps, micro_batch_size=8, lr=3e-3, warmup_steps=steps // 10, weight_decay=0.0,
                              mtp_weight=0.0, bias_update_gamma=0.0, checkpoint_every=steps, log_every=steps // 3,
                              eval_batches=4, seed=seed))
    return run_distill(cfg, teacher_dir, rows, tok, out, progress=False)


def test_sad_and_process_supervision_beat_plain_sft_on_tool_choice_and_valid_json(tmp_path):
    from components.agent.action_eval import evaluate_actions
    from components.agent.dataset import build_agent_dataset_files
    from components.tokenizer.tokenizer import load
    from model.checkpoint.hf import load_hf_checkpoint

    root = str(tmp_path)
    train_jsonl, held = _trajectories(root)
    tok_dir = _tokenizer(root, train_jsonl)
    rows = os.path.join(root, "rows")
    rep = build_agent_dataset_files(train_jsonl, rows, tokenizer_path=tok_dir, seq_len=SEQ_LEN, eval_fraction=0.1,
                                    require_success=True)
    assert rep["train"]["truncated"] == 0 and rep["train"]["tool_name_tokens"] > 0
    vocab_dir, pad_id = _vocab_model(root, tok_dir)
    tokenizer = load(os.path.join(tok_dir, "tokenizer.json"))

    def act(model_dir):
        return evaluate_actions(load_hf_checkpoint(model_dir), tokenizer, held, max_new_tokens=120, batch_size=128,
                                pad_id=pad_id)

    _train(os.path.join(root, "teacher"), rows, tok_dir, vocab_dir, loss="ce", process=False,
           steps=TEACHER_STEPS, seed=0, overrides={"rope_scaling": None, "num_nextn_predict_layers": 0})
    teacher_dir = os.path.join(root, "teacher", "final")
    teacher = act(teacher_dir)
    print("teacher", {k: teacher[k] for k in ("probes", *METRICS)})
    assert teacher["probes"] >= 90

    scores = {"sft": [], "sad": []}
    for seed in SEEDS:
        for arm, loss, process in (("sft", "ce", False), ("sad", "kd", True)):
            out = os.path.join(root, f"{arm}_{seed}")
            report = _train(out, rows, tok_dir, teacher_dir, loss=loss, process=process, steps=STEPS, seed=seed)
            assert report["loss"] == ("agent" if process else "ce") and report["steps"] == STEPS
            s = act(os.path.join(out, "final"))
            scores[arm].append(s)
            print(arm, seed, {k: round(s[k], 3) for k in METRICS}, s["per_tool_accuracy"])
    summary = {}
    for arm, runs in scores.items():
        for k in METRICS:
            v = np.array([r[k] for r in runs])
            summary[(arm, k)] = (v.mean(), v.std(ddof=1))
            print(f"{arm} {k}: {v.mean():.3f} ± {v.std(ddof=1):.3f} (seeds {list(np.round(v, 3))})")
    (sad, sad_sd), (sft, sft_sd) = summary[("sad", "tool_name_accuracy")], summary[("sft", "tool_name_accuracy")]
    # the tool-choice gain is larger than the seed-to-seed spread of either arm
    assert sad - sft > max(sad_sd, sft_sd), summary
    # valid JSON: a higher mean, and higher on more seeds than lower (same data order per seed)
    assert summary[("sad", "valid_json_rate")][0] > summary[("sft", "valid_json_rate")][0], summary
    pairs = list(zip(scores["sad"], scores["sft"], strict=True))
    wins = sum(a["valid_json_rate"] > b["valid_json_rate"] for a, b in pairs)
    losses = sum(a["valid_json_rate"] < b["valid_json_rate"] for a, b in pairs)
    assert wins > losses, (wins, losses, summary)
