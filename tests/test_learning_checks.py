"""Learning checks on the tiny preset (CPU): experiments, several seeds, the spread recorded.

1. Pretraining: held-out loss after the tiny preset's pretraining is clearly below the eval
   split's unigram entropy (the best context-free model fitted on the eval split itself).
2. YaRN context extension: a tiny model that retrieves a passkey at its trained context L0 is
   extended to 4·L0. Arms, same seeds / steps / data on each side:
     before   — the L0 model run at 4·L0 with plain RoPE (no extension),
     yarn     — YaRN (factor 4) + a short continued training at 4·L0,
     plain    — the same continued training at 4·L0 without YaRN (ablation: is it YaRN or the
                fine-tuning that helps?).
   The check: passkey accuracy at 4·L0 after YaRN extension is higher than without extension.
   The plain-RoPE ablation and YaRN without any training are recorded beside it, not asserted.
   Measured (3 seeds, 64 samples each; docs/training.md): before 0.18 ± 0.03, YaRN-extended
   0.34 ± 0.08, plain-RoPE-extended 0.34 ± 0.03 — the continued training at 4·L0 is what helps
   at this scale; YaRN itself shows no edge over plain RoPE here.

3. SFT: held-out assistant-token loss after SFT of the pretrained tiny model is below the
   pretrained model's (every seed); LoRA SFT (rank-8 adapters on the attention projections and
   the output head, < 10% of the parameters trainable) reaches most (> 50%) of full SFT's gain
   for the same steps, seeds and learning rate.
4. Distillation: a 2-layer student trained with KD (α = 0.5, T = 2) on the SFT teacher's
   logits ends with a lower held-out KL to the teacher than the same student trained on hard
   labels only (same steps, seeds, data).

The data is the real pipeline's (the tiny preset's data phases on its stdlib slice); numbers go
to OUTPUT/learning_checks.json and are printed (pytest -s shows them).
"""
from __future__ import annotations

import json
import os
import shutil
import statistics

import numpy as np
import pytest

from configs.schema import load_config
from pipelines.artifacts import latest_execution_artifacts
from pipelines.cli import main

pytestmark = pytest.mark.slow
SEEDS = (0, 1, 2)
PRETRAIN_STEPS = 80
L0 = 64                # passkey base context
BASE_STEPS = 300       # passkey drill at L0
EXT_STEPS = 150        # continued training at 4·L0 (40 steps at lr 3e-3 made it worse: measured)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """The tiny preset's data phases + pretraining (seed 0) through the real DAG (evaluate and
    export of the pretrained model are left out: no check here reads them)."""
    root = tmp_path_factory.mktemp("learning")
    out = root / "out"
    sets = [f"pipeline.output_dir={out}", "context_extension.enabled=false", "sft.enabled=false",
            "evaluate.enabled=false",
            f"pretrain.trainer.steps={PRETRAIN_STEPS}", "pretrain.trainer.seed=0"]
    assert main(["run", *[a for kv in sets for a in ("--set", kv)]]) == 0
    arts = latest_execution_artifacts(out / "metadata.sqlite", "seekline-tiny", "pack")
    pt = latest_execution_artifacts(out / "metadata.sqlite", "seekline-tiny", "pretrain")
    return {"root": root, "packed": arts["outputs"]["packed"], "tokenizer": arts["inputs"]["tokenizer"],
            "examples": arts["inputs"]["examples"], "pretrain0": pt["outputs"]["model"],
            "results": {}}


def _spread(xs):
    return {"values": [round(x, 4) for x in xs], "mean": round(statistics.mean(xs), 4),
            "std": round(statistics.pstdev(xs), 4), "min": round(min(xs), 4), "max": round(max(xs), 4)}


def _save(pipeline):
    path = pipeline["root"] / "learning_checks.json"
    path.write_text(json.dumps(pipeline["results"], indent=1))
    print(json.dumps(pipeline["results"], indent=1))


def test_pretraining_beats_the_unigram_baseline(pipeline):
    from components.pretrain.pretrain import run_pretrain

    reports = [json.loads(open(os.path.join(pipeline["pretrain0"], "report.json")).read())]
    for seed in SEEDS[1:]:
        cfg = load_config("tiny", [f"pretrain.trainer.steps={PRETRAIN_STEPS}", f"pretrain.trainer.seed={seed}"])
        reports.append(run_pretrain(cfg.pretrain, pipeline["packed"], pipeline["tokenizer"],
                                    str(pipeline["root"] / f"pretrain{seed}"), progress=False))
    h = reports[0]["eval_unigram_entropy"]
    losses = [r["eval_loss"] for r in reports]
    pipeline["results"]["pretrain"] = {"steps": PRETRAIN_STEPS, "eval_unigram_entropy": round(h, 4),
                                       "eval_loss": _spread(losses),
                                       "gap_nats": _spread([h - x for x in losses])}
    _save(pipeline)
    assert all(r["eval_unigram_entropy"] == h for r in reports)  # same eval split on every side
    # "clearly below": every seed at least 0.25 nats under the baseline
    assert max(losses) < h - 0.25, (losses, h)


def _passkey_cfg(seed: int, *, steps: int, micro_batch: int, lr: float):
    from configs.training import ContextExtensionConfig, PasskeyConfig, TrainerConfig
    return ContextExtensionConfig(
        factor=4.0, passkey_train_fraction=1.0, passkey_answer_only_loss=True,
        trainer=TrainerConfig(steps=steps, micro_batch_size=micro_batch, lr=lr,
                              warmup_steps=min(20, steps // 4), checkpoint_every=max(steps, 1),
                              log_every=50, eval_batches=1, seed=seed, mtp_weight=0.0),
        passkey=PasskeyConfig(samples=64, digits=3, multiples=[1.0, 4.0], seed=1000 + seed))


def _base_model(pipeline, seed: int) -> str:
    """A tiny model drilled on passkey retrieval at L0 (answer-only loss): HF folder."""
    from components.context_extension.extend import build_long_rows
    from components.pretrain.pretrain import export_final, model_config_for, tokenizer_info, train_lm
    from configs.training import PretrainConfig
    from training.data import open_packed

    out = pipeline["root"] / f"base{seed}"
    cfg = _passkey_cfg(seed, steps=BASE_STEPS, micro_batch=32, lr=3e-3)
    build_long_rows(pipeline["examples"], pipeline["tokenizer"], str(out / "data"), L0, cfg, seed)
    tok = tokenizer_info(pipeline["tokenizer"])
    mcfg = model_config_for(PretrainConfig(), tok["vocab_size"], L0, tok["bos_id"], tok["eos_id"])
    _, result = train_lm(cfg.trainer, mcfg, open_packed(str(out / "data")), str(out), runtime=None,
                         max_steps=None, checkpoint_every=None, progress=False, title="passkey base")
    return export_final(result.model, str(out), pipeline["tokenizer"], {})


def test_yarn_extension_retrieves_at_4x_better_than_no_extension(pipeline):
    import model as model_core
    from components.context_extension.extend import (
        DATA_DIR,
        extended_config,
        passkey_table,
        run_context_extension,
    )
    from components.context_extension.passkey import PasskeyBuilder
    from components.tokenizer.tokenizer import iter_split
    from components.tokenizer.tokenizer import load as load_tokenizer

    rows = {k: [] for k in ("base_1x", "before_4x", "yarn_zero_shot_4x", "yarn_4x", "plain_4x", "yarn_1x",
                            "plain_1x")}
    builder = PasskeyBuilder(load_tokenizer(pipeline["tokenizer"]),
                             [t for _, t, _ in iter_split(pipeline["examples"], "eval")], 1)
    for seed in SEEDS:
        base = _base_model(pipeline, seed)
        cfg = _passkey_cfg(seed, steps=EXT_STEPS, micro_batch=16, lr=1e-3)
        yarn_dir, plain_dir = pipeline["root"] / f"yarn{seed}", pipeline["root"] / f"plain{seed}"
        yarn = run_context_extension(cfg, base, pipeline["examples"], pipeline["tokenizer"], str(yarn_dir),
                                     progress=False)
        # The two arms differ only in rope_scaling. Their long training rows and their 'before'
        # table (the base weights under plain RoPE on the same samples) are functions of (base,
        # cfg) alone, so the plain arm is handed the yarn arm's instead of recomputing them: the
        # component's own resume path reuses a present data/ folder and passkey_before.json.
        # (Recomputing them only re-tested that one evaluation of one file is deterministic.)
        shutil.copytree(yarn_dir / DATA_DIR, plain_dir / DATA_DIR)
        shutil.copyfile(yarn_dir / "passkey_before.json", plain_dir / "passkey_before.json")
        plain = run_context_extension(cfg, base, pipeline["examples"], pipeline["tokenizer"], str(plain_dir),
                                      progress=False, yarn=False)
        # same base, same rows, same 'before' on both sides
        assert yarn["before"] == plain["before"] and yarn["data"] == plain["data"]
        assert json.loads((plain_dir / "config.json").read_text()) == json.loads((yarn_dir / "config.json").read_text())
        # YaRN with no training at all, on the same 4x samples as the other arms (passkey_table
        # seeds each length's samples by passkey.seed + length); only its 4x row is reported.
        ext_cfg, _, _ = extended_config(model_core.ModelConfig.from_json_file(os.path.join(base, "config.json")), cfg)
        cfg4 = cfg.model_copy(update={"passkey": cfg.passkey.model_copy(update={"multiples": [4.0]})})
        zero = passkey_table(model_core.load_hf_checkpoint(base, config=ext_cfg), builder, L0, 4 * L0, cfg4)
        rows["yarn_zero_shot_4x"].append(zero["4x"]["accuracy"])
        rows["base_1x"].append(yarn["before"]["1x"]["accuracy"])
        rows["before_4x"].append(yarn["before"]["4x"]["accuracy"])
        rows["yarn_4x"].append(yarn["after"]["4x"]["accuracy"])
        rows["yarn_1x"].append(yarn["after"]["1x"]["accuracy"])
        rows["plain_4x"].append(plain["after"]["4x"]["accuracy"])
        rows["plain_1x"].append(plain["after"]["1x"]["accuracy"])
    pipeline["results"]["passkey"] = {
        "L0": L0, "extended": 4 * L0, "base_steps": BASE_STEPS, "extension_steps": EXT_STEPS,
        "samples_per_length": 64, "digits": 3, **{k: _spread(v) for k, v in rows.items()}}
    _save(pipeline)
    assert np.mean(rows["base_1x"]) > 0.5  # the base model can do the task at its own context
    assert np.mean(rows["yarn_4x"]) > np.mean(rows["before_4x"]) + 0.1, rows
    assert sum(y > b for y, b in zip(rows["yarn_4x"], rows["before_4x"], strict=True)) >= 2, rows


SFT_STEPS = 60
DISTILL_STEPS = 80


def _sft_cfg(seed: int, *sets: str):
    return load_config("tiny", [f"sft.trainer.seed={seed}", f"sft.trainer.steps={SFT_STEPS}",
                                "sft.trainer.checkpoint_every=1000", *sets]).sft


def _sft(pipeline, seed: int, lora: bool) -> dict:
    from components.sft.sft import run_sft

    name = f"{'lora' if lora else 'sft'}{seed}"
    out = pipeline["root"] / name
    if (out / "report.json").exists():
        return json.loads((out / "report.json").read_text())
    # Same steps, seeds and learning rate (the tiny preset's 3e-3) on both sides. The adapters
    # include the output head: 2/3 of this tiny model's weights are embedding + head, and
    # most of full SFT's gain here is in the head (measured: training only the embedding + head
    # gains 0.81 nats, only the blocks 0.39, of full SFT's 1.05 at lr 1e-3).
    sets = ["sft.lora.enabled=true", "sft.lora.rank=8", "sft.lora.target_modules=[attention, lm_head]"] if lora else []
    full_data = pipeline["root"] / f"sft{seed}" / "data"
    if lora and (full_data / "report.json").exists():
        # The SFT rows depend on the seed and the data settings, not on LoRA: the LoRA arm reuses
        # the full arm's rows (run_sft's resume path) instead of rebuilding the same ones. Both
        # arms still evaluate their own starting point ('before', compared in the test).
        shutil.copytree(full_data, out / "data")
    return run_sft(_sft_cfg(seed, *sets), os.path.join(pipeline["pretrain0"], "final"), pipeline["examples"],
                   pipeline["tokenizer"], str(out), progress=False)


def test_sft_lowers_heldout_assistant_loss_and_lora_keeps_most_of_the_gain(pipeline):
    rows = {k: [] for k in ("before", "full", "lora", "full_gain", "lora_gain", "lora_fraction_of_gain")}
    trainable = None
    for seed in SEEDS:
        full, lora = _sft(pipeline, seed, False), _sft(pipeline, seed, True)
        assert full["before"]["eval_loss"] == lora["before"]["eval_loss"]   # same data and start
        before = full["before"]["eval_loss"]
        rows["before"].append(before)
        rows["full"].append(full["eval_loss"])
        rows["lora"].append(lora["eval_loss"])
        rows["full_gain"].append(before - full["eval_loss"])
        rows["lora_gain"].append(before - lora["eval_loss"])
        rows["lora_fraction_of_gain"].append((before - lora["eval_loss"]) / (before - full["eval_loss"]))
        counts = lora["lora_parameters"]
        trainable = counts["trainable"] / counts["total"]
    pipeline["results"]["sft"] = {"steps": SFT_STEPS, "eval_examples": full["data"]["eval"]["examples"],
                                  "lora_trainable_fraction": round(trainable, 4),
                                  **{k: _spread(v) for k, v in rows.items()}}
    _save(pipeline)
    assert min(rows["full_gain"]) > 0.1, rows
    assert trainable < 0.10
    assert np.mean(rows["lora_fraction_of_gain"]) > 0.5, rows


def test_kd_gives_a_lower_heldout_kl_to_the_teacher_than_ce_only(pipeline):
    from components.distill.distill import run_distill

    teacher = pipeline["root"] / "sft0"
    _sft(pipeline, 0, False)
    rows = {k: [] for k in ("kd", "ce", "kd_ce", "ce_ce", "before")}
    for seed in SEEDS:
        for arm in ("kd", "ce"):
            cfg = load_config("tiny", [f"distill.loss={arm}", f"distill.trainer.seed={seed}",
                                       f"distill.trainer.steps={DISTILL_STEPS}",
                                       "distill.trainer.checkpoint_every=1000"]).distill
            rep = run_distill(cfg, str(teacher / "final"), str(teacher / "data"), None,
                              str(pipeline["root"] / f"distill_{arm}{seed}"), progress=False)
            rows[arm].append(rep["eval_kl_to_teacher"])
            rows[f"{arm}_ce"].append(rep["eval_ce"])
        rows["before"].append(rep["before"]["eval_kl_to_teacher"])
    pipeline["results"]["distill"] = {"steps": DISTILL_STEPS, "student": "tiny, 2 layers, no MTP",
                                      "kd": "alpha 0.5, T 2", **{k: _spread(v) for k, v in rows.items()}}
    _save(pipeline)
    assert np.mean(rows["kd"]) < np.mean(rows["ce"]), rows
    assert sum(k < c for k, c in zip(rows["kd"], rows["ce"], strict=True)) >= 2, rows
