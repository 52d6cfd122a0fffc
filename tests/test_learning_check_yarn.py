"""Learning check of YaRN context extension on the tiny preset (CPU): experiments, several
seeds, the spread recorded.

A tiny model that retrieves a passkey at its trained context L0 is extended to 4·L0. Arms, same
seeds / steps / data on each side:
  before   — the L0 model run at 4·L0 with plain RoPE (no extension),
  yarn     — YaRN (factor 4) + a short continued training at 4·L0,
  plain    — the same continued training at 4·L0 without YaRN (ablation: is it YaRN or the
             fine-tuning that helps?).
The check: passkey accuracy at 4·L0 after YaRN extension is higher than without extension.
The plain-RoPE ablation and YaRN without any training are recorded beside it, not asserted.
Measured (3 seeds, 64 samples each; docs/training.md): before 0.18 ± 0.03, YaRN-extended
0.34 ± 0.08, plain-RoPE-extended 0.34 ± 0.03 — the continued training at 4·L0 is what helps
at this scale; YaRN itself shows no edge over plain RoPE here.

The passkey models start from scratch; the pipeline gives the real corpus (its eval split's
texts are the haystacks) and the tokenizer, so its pretraining is one step here.
"""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from tests.learning_setup import save_results as _save
from tests.learning_setup import spread as _spread
from tests.learning_setup import tiny_pipeline

pytestmark = pytest.mark.slow
SEEDS = (0, 1, 2)
L0 = 64                # passkey base context
BASE_STEPS = 300       # passkey drill at L0
EXT_STEPS = 150        # continued training at 4·L0 (40 steps at lr 3e-3 made it worse: measured)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """The tiny preset's data phases through the real DAG (its pretraining: one step, unused)."""
    return tiny_pipeline(tmp_path_factory.mktemp("learning_yarn"), pretrain_steps=1)


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
