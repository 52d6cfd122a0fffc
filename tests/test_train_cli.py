"""`seekline train`: SIGKILL + resume is bit-identical; bad input fails before any compute."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from training.testdata import write_packed

SEQ, VOCAB = 64, 256
TRAIN = ["--set", "pretrain.trainer.steps=36", "--set", "pretrain.trainer.micro_batch_size=4",
         "--set", "pretrain.trainer.lr=0.003", "--set", "pretrain.trainer.warmup_steps=4",
         "--set", "pretrain.trainer.checkpoint_every=3", "--set", "pretrain.trainer.log_every=4",
         "--set", "pretrain.trainer.eval_batches=2",
         "--set", "pretrain.model_overrides={rope_scaling: null, num_hidden_layers: 2}"]


def _tokenizer(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "tokenizer_meta.json").write_text(json.dumps({"vocab_size": VOCAB, "bos_id": 1, "eos_id": 2, "pad_id": 0}))
    return d


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    data = write_packed(str(root / "data"), SEQ, VOCAB, train_rows=96, eval_rows=16)
    return Path(data), _tokenizer(root / "tok")


def _cmd(data, tok, out, *extra):
    return [sys.executable, "-m", "pipelines.cli", "train", "pretrain", "--data", str(data), "--tokenizer",
            str(tok), "--output", str(out), "--no-progress", *TRAIN, *extra]


def _env():
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}


def _weights(out: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file
    return load_file(str(out / "final" / "model.safetensors"))


@pytest.mark.slow
def test_sigkill_at_a_random_moment_then_rerun_is_bit_identical(inputs, tmp_path):
    data, tok = inputs
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    subprocess.run(_cmd(data, tok, ref), check=True, env=_env(), capture_output=True, timeout=600)
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    proc = subprocess.Popen(_cmd(data, tok, killed), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while not (killed / "checkpoints" / "checkpoint").exists() and proc.poll() is None:
            assert time.time() < deadline, "no checkpoint within 300 s"
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.5))   # anywhere: mid-step, mid-save, mid-eval, mid-export
        killed_early = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    rerun = subprocess.run(_cmd(data, tok, killed), env=_env(), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    a, b = _weights(ref), _weights(killed)
    assert sorted(a) == sorted(b)
    diff = [k for k in a if not np.array_equal(a[k], b[k])]
    assert not diff, f"kill seed {seed}: {len(diff)} tensors differ, e.g. {diff[:3]}"
    report = json.loads((killed / "report.json").read_text())
    assert report["steps"] == 36
    assert killed_early is False or report["resumed_from_step"] is not None, f"kill seed {seed}"


def _fails(args, expect: str, tmp_path) -> str:
    import io
    from contextlib import redirect_stderr

    from pipelines.cli import main
    buf = io.StringIO()
    with redirect_stderr(buf):
        rc = main(args)
    err = buf.getvalue().strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1, err
    assert expect in err, err
    return err


def test_bad_schedule_is_a_config_error(inputs, tmp_path):
    data, tok = inputs
    base = ["train", "pretrain", "--data", str(data), "--tokenizer", str(tok), "--output", str(tmp_path / "o")]
    _fails([*base, "--set", "pretrain.trainer.warmup_steps=50", "--set", "pretrain.trainer.steps=10"],
           "warmup_steps (50) > steps (10)", tmp_path)
    _fails([*base, "--set", "pretrain.trainer.lr=0"], "pretrain.trainer.lr", tmp_path)
    _fails([*base, "--max-steps", "0"], "--max-steps must be >= 1", tmp_path)
    assert not (tmp_path / "o").exists()  # nothing written for a refused config


def test_unwritable_output_is_one_line(inputs, tmp_path):
    data, tok = inputs
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    _fails(["train", "pretrain", "--data", str(data), "--tokenizer", str(tok), "--output", str(blocker / "out")],
           "not writable", tmp_path)


def test_data_from_another_tokenizer_or_length_fails_before_training(inputs, tmp_path):
    data, _ = inputs
    small_tok = tmp_path / "tok"
    small_tok.mkdir()
    (small_tok / "tokenizer_meta.json").write_text(json.dumps({"vocab_size": 100, "bos_id": 1, "eos_id": 2,
                                                               "pad_id": 0}))
    out = tmp_path / "o"
    _fails(["train", "pretrain", "--data", str(data), "--tokenizer", str(small_tok), "--output", str(out)],
           "outside the model's vocab_size 100", tmp_path)
    assert not (out / "checkpoints").exists()
    # an artifact whose rows are not the length its pack config says (a mixed-up artifact)
    import shutil
    odd = tmp_path / "odd"
    shutil.copytree(data, odd)
    (odd / "config.json").write_text(json.dumps({"seq_len": 2 * SEQ}))
    _fails(["train", "pretrain", "--data", str(odd), "--tokenizer", str(_tokenizer(tmp_path / "t2")),
            "--output", str(out)], f"rows have {SEQ} tokens but the run expects seq_len {2 * SEQ}", tmp_path)
    assert not (out / "checkpoints").exists()


def test_missing_data_dir_is_one_line(inputs, tmp_path):
    _, tok = inputs
    _fails(["train", "pretrain", "--data", str(tmp_path / "nope"), "--tokenizer", str(tok), "--output",
            str(tmp_path / "o")], "data directory not found", tmp_path)


@pytest.mark.slow
def test_resume_with_another_model_config_is_refused(inputs, tmp_path):
    data, tok = inputs
    out = tmp_path / "o"
    from pipelines.cli import main
    assert main(_cmd(data, tok, out, "--max-steps", "3")[3:]) == 0
    before = sorted(p.name for p in (out / "checkpoints").iterdir())
    _fails([*_cmd(data, tok, out)[3:], "--set", "pretrain.model_overrides={rope_scaling: null, num_hidden_layers: 3}"],
           "different model config", tmp_path)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == before


def _examples(root: Path, texts: list[str]) -> Path:
    """An ingest-style examples artifact (Split-train / Split-eval of tf.train.Example docs)."""
    import hashlib

    import tensorflow as tf

    from components.ingest.document import Document, to_example
    for split, part in (("train", texts[: len(texts) * 3 // 4]), ("eval", texts[len(texts) * 3 // 4:])):
        d = root / f"Split-{split}"
        d.mkdir(parents=True, exist_ok=True)
        with tf.io.TFRecordWriter(str(d / "data-00000-of-00001.gz"), options="GZIP") as w:
            for i, t in enumerate(part):
                w.write(to_example(Document(t, f"f{i}.py", "test", hashlib.sha256(t.encode()).hexdigest())))
    return root


@pytest.mark.slow
def test_context_extension_cli_after_pretrain(tmp_path):
    """pretrain → `train context_extension --init` (tokenizer taken from the exported model)."""
    import sysconfig

    from components.tokenizer.tokenizer import meta, save, train
    from configs.schema import TokenizerConfig
    from pipelines.cli import main

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in sorted(stdlib.glob("*.py"))[:24]]
    tcfg = TokenizerConfig(vocab_size=512)
    tok = train(texts, tcfg)
    tok_dir = tmp_path / "tok"
    save(tok, str(tok_dir), meta(tok, tcfg))
    vocab = json.loads((tok_dir / "tokenizer_meta.json").read_text())["vocab_size"]
    data = write_packed(str(tmp_path / "packed"), SEQ, vocab, train_rows=32, eval_rows=8)
    examples = _examples(tmp_path / "examples", texts)
    pt = tmp_path / "pt"
    assert main(["train", "pretrain", "--data", data, "--tokenizer", str(tok_dir), "--output", str(pt),
                 "--no-progress", "--set", "pretrain.trainer.steps=3", "--set", "pretrain.trainer.warmup_steps=1",
                 "--set", "pretrain.trainer.micro_batch_size=2", "--set", "pretrain.trainer.eval_batches=1",
                 "--set", "pretrain.model_overrides={rope_scaling: null, num_hidden_layers: 2}"]) == 0
    ce = tmp_path / "ce"
    sets = ["context_extension.factor=2", "context_extension.trainer.steps=2",
            "context_extension.trainer.warmup_steps=1", "context_extension.trainer.micro_batch_size=1",
            "context_extension.trainer.eval_batches=1", "context_extension.passkey.samples=2",
            "context_extension.passkey.multiples=[1, 2]"]
    assert main(["train", "context_extension", "--init", str(pt), "--data", str(examples), "--output", str(ce),
                 "--no-progress", *[a for kv in sets for a in ("--set", kv)]]) == 0
    report = json.loads((ce / "report.json").read_text())
    assert (report["original_context"], report["extended_context"], report["steps"]) == (SEQ, 2 * SEQ, 2)
    cfg = json.loads((ce / "final" / "config.json").read_text())
    assert cfg["rope_scaling"]["factor"] == 2.0 and cfg["max_position_embeddings"] == 2 * SEQ
    assert (ce / "final" / "tokenizer.json").exists() and (ce / "passkey.png").stat().st_size > 0
    # this small tokenizer needs ~90 tokens for a passkey sample: 1x (64) is skipped, not a crash
    assert "skipped" in report["before"]["1x"] and 0 <= report["after"]["2x"]["accuracy"] <= 1
    # re-running the finished command resumes at the end: nothing is trained again
    assert main(["train", "context_extension", "--init", str(pt), "--data", str(examples), "--output", str(ce),
                 "--no-progress", *[a for kv in sets for a in ("--set", kv)]]) == 0
    assert json.loads((ce / "report.json").read_text())["resumed_from_step"] == 2


GRPO_SETS = ["grpo.families=[arithmetic]", "grpo.rewards=[{name: exact_answer}]", "grpo.num_train_tasks=20",
             "grpo.num_eval_tasks=2", "grpo.eval_samples_per_task=2", "grpo.num_generations=4",
             "grpo.prompts_per_step=2", "grpo.max_prompt_tokens=32", "grpo.max_completion_tokens=8",
             "grpo.beta=0.04", "grpo.trainer.steps=3", "grpo.trainer.micro_batch_size=4",
             "grpo.trainer.warmup_steps=1", "grpo.trainer.checkpoint_every=1"]


@pytest.fixture(scope="module")
def grpo_model(tmp_path_factory):
    from components.grpo.testdata import grpo_model_dir
    return grpo_model_dir(str(tmp_path_factory.mktemp("grpo_model")))


def _grpo_args(init, out, *extra):
    return ["train", "grpo", "--init", str(init), "--output", str(out), "--no-progress",
            *[a for kv in GRPO_SETS for a in ("--set", kv)], *extra]


def test_grpo_cli_refuses_data_and_a_folder_without_a_model(tmp_path):
    _fails(["train", "grpo", "--init", str(tmp_path), "--output", str(tmp_path / "o"), "--data", str(tmp_path)],
           "train grpo takes no --data/--tokenizer", tmp_path)
    _fails(["train", "grpo", "--init", str(tmp_path), "--output", str(tmp_path / "o")],
           f"{tmp_path}: not an HF-layout model folder with its tokenizer (no config.json)", tmp_path)
    _fails(["train", "grpo", "--init", str(tmp_path), "--output", str(tmp_path / "o"), "--set",
            f"grpo.init={tmp_path}"], "both grpo.init", tmp_path)
    assert not (tmp_path / "o" / "checkpoints").exists()


@pytest.mark.slow
def test_grpo_cli_runs_resumes_and_prints_the_reward(grpo_model, tmp_path, capsys):
    """`train grpo --init MODEL`: 2 steps, then the same command resumes to the configured 3."""
    from pipelines.cli import main

    out = tmp_path / "grpo"
    assert main(_grpo_args(grpo_model, out, "--max-steps", "2")) == 0
    assert json.loads((out / "report.json").read_text())["steps"] == 2
    capsys.readouterr()
    assert main(_grpo_args(grpo_model, out)) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert (report["steps"], report["resumed_from_step"], report["phase"]) == (3, 2, "grpo")
    for key in ("eval_reward_mean", "eval_success_rate", "eval_kl_to_reference"):
        assert f"{key}=" in printed, printed
    assert "held-out reward:" in printed and str(out / "final") in printed
    assert json.loads((out / "final" / "seekline_phase.json").read_text())["phase"] == "grpo"
    assert (out / "config.yaml").exists()


def test_distill_rows_of_a_grpo_teacher_come_from_the_sft_model_it_started_from(tmp_path):
    from common.errors import UserError
    from pipelines.train_cli import _teacher_rows

    sft, grpo = tmp_path / "sft", tmp_path / "grpo"
    (sft / "data").mkdir(parents=True)
    (sft / "final").mkdir()
    (grpo / "final").mkdir(parents=True)
    assert _teacher_rows(str(sft / "final")) == str(sft / "data")
    (grpo / "report.json").write_text(json.dumps({"phase": "grpo", "init": str(sft / "final")}))
    assert _teacher_rows(str(grpo / "final")) == str(sft / "data")
    (grpo / "report.json").write_text(json.dumps({"phase": "grpo", "init": str(tmp_path / "nowhere" / "final")}))
    with pytest.raises(UserError, match="no SFT rows"):
        _teacher_rows(str(grpo / "final"))
