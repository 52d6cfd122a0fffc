"""SFT and distillation phases end to end on a tiny model (CPU, a few steps each).

A real BPE tokenizer (seekline's special tokens) trained on a stdlib slice, instruction examples made
from that code, a tiny DeepSeek-V3 base model exported in HF layout; then SFT (full and LoRA),
resume, distillation (online and offline teacher) and the bad-input errors.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from common.errors import ConfigError, InputDataError
from components.common.testdata import write_text_examples
from components.ingest.sources import list_corpus_files
from configs.schema import IngestConfig, TokenizerConfig, load_config

SEQ = 128
SFT_SETS = ["sft.seq_len=128", "sft.corpus_instructions=60", "sft.trainer.steps=12", "sft.trainer.micro_batch_size=4",
            "sft.trainer.lr=0.003", "sft.trainer.warmup_steps=2", "sft.trainer.checkpoint_every=6",
            "sft.trainer.log_every=3", "sft.trainer.eval_batches=4"]
DISTILL_SETS = ["distill.trainer.steps=10", "distill.trainer.micro_batch_size=4", "distill.trainer.lr=0.003",
                "distill.trainer.warmup_steps=2", "distill.trainer.checkpoint_every=5", "distill.trainer.log_every=5",
                "distill.trainer.eval_batches=4"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from components.pretrain.pretrain import export_final
    from components.tokenizer import tokenizer as tkz
    from model.config import ModelConfig
    from model.decoder import build_model

    root = tmp_path_factory.mktemp("sft")
    files = list_corpus_files(IngestConfig(max_files=60, max_file_bytes=60_000))
    texts = [open(f.uri, encoding="utf-8").read() for f in files if f.size < 60_000]
    write_text_examples(str(root / "ex"), {"train": texts[:-12], "eval": texts[-12:]})
    tkz.train_from_examples(str(root / "ex"), str(root / "tok"),
                            TokenizerConfig(vocab_size=800, roundtrip_check_docs=10, max_training_bytes=None))
    meta = json.loads((root / "tok" / "tokenizer_meta.json").read_text())
    base = ModelConfig.load("tiny").to_hf_dict()
    # a longer context than the SFT rows: the synthetic-data teacher prompts need room
    base.update(vocab_size=meta["vocab_size"], max_position_embeddings=4 * SEQ, rope_scaling=None,
                bos_token_id=meta["bos_id"], eos_token_id=meta["eos_id"])
    model = build_model(ModelConfig.from_hf_dict(base, source="test"), seed=0)
    export_final(model, str(root / "base"), str(root / "tok"), {})
    return {"root": root, "ex": str(root / "ex"), "tok": str(root / "tok"), "base": str(root / "base" / "final")}


def _cfg(*sets):
    return load_config("tiny", [*SFT_SETS, *DISTILL_SETS, *sets])


@pytest.fixture(scope="module")
def sft_full(world):
    """Full SFT, stopped at step 6 then resumed to the end (the run the distill tests use as teacher)."""
    from components.sft.sft import run_sft

    out = str(world["root"] / "sft")
    cfg = _cfg().sft
    first = run_sft(cfg, world["base"], world["ex"], world["tok"], out, max_steps=6, progress=False)
    second = run_sft(cfg, world["base"], world["ex"], world["tok"], out, progress=False)
    return out, first, second


def test_sft_lowers_heldout_assistant_loss_resumes_and_exports(world, sft_full):
    from model.checkpoint.hf import load_hf_checkpoint
    from training.data import open_packed

    out, first, second = sft_full
    assert first["steps"] == 6 and second["steps"] == 12 and second["resumed_from_step"] == 6
    # the baseline is the starting weights', measured once (the resumed run reads it back)
    assert second["before"] == first["before"]
    assert second["eval_loss"] < second["before"]["eval_loss"] - 0.5, (second["before"], second["eval_loss"])
    data = second["data"]
    assert data["train"]["examples"] >= 20 and data["train"]["assistant_tokens"] > 0
    assert data["eval"]["examples"] > 0 and data["template"] == "seekline"
    rows = open_packed(os.path.join(out, "data"))
    assert rows.seq_len == SEQ
    m = load_hf_checkpoint(os.path.join(out, "final"))
    assert m.cfg.vocab_size == 800
    phase = json.loads(Path(out, "final", "seekline_phase.json").read_text())
    assert phase["phase"] == "sft" and phase["chat_template"] == "seekline"
    assert Path(out, "final", "tokenizer.json").exists() and Path(out, "loss_curve.png").exists()


def test_sft_rows_carry_assistant_only_targets(world, sft_full):
    """Every train row's loss_mask marks only tokens inside assistant turns (decoded back)."""
    import tensorflow as tf
    from tokenizers import Tokenizer

    out, _, _ = sft_full
    tok = Tokenizer.from_file(os.path.join(world["tok"], "tokenizer.json"))
    path = sorted(Path(out, "data", "Split-train").iterdir())[0]
    ex = tf.train.Example.FromString(next(iter(tf.data.TFRecordDataset(str(path), compression_type="GZIP"))).numpy())
    f = {k: np.array(v.int64_list.value) for k, v in ex.features.feature.items()}
    ids, mask, seg = f["input_ids"], f["loss_mask"], f["segment_ids"]
    assert mask.sum() > 0 and set(np.unique(mask)) <= {0, 1}
    assistant = tok.token_to_id("<|assistant|>")
    user = tok.token_to_id("<|user|>")
    for s in np.unique(seg[seg > 0]):
        doc_ids, doc_mask = ids[seg == s], mask[seg == s]
        # the user turn (and the role headers) never count; the assistant turn after its header does
        a = int(np.where(doc_ids == assistant)[0][0])
        assert doc_mask[: a + 1].sum() == 0 and doc_mask[a + 1:].sum() > 0
        assert user in doc_ids[:a]


def test_lora_sft_trains_adapters_only_and_merges(world):
    from safetensors.numpy import load_file

    from components.sft.sft import run_sft

    out = str(world["root"] / "lora")
    cfg = _cfg("sft.lora.enabled=true", "sft.lora.rank=4").sft
    rep = run_sft(cfg, world["base"], world["ex"], world["tok"], out, progress=False)
    counts = rep["lora_parameters"]
    assert 0 < counts["trainable"] < 0.1 * counts["total"], counts
    assert rep["eval_loss"] < rep["before"]["eval_loss"]
    assert Path(out, "adapter", "adapter_config.json").exists()
    assert Path(out, "adapter", "adapter_model.safetensors").exists()
    base = load_file(os.path.join(world["base"], "model.safetensors"))
    merged = load_file(os.path.join(out, "final", "model.safetensors"))
    assert sorted(base) == sorted(merged)       # a plain model: no adapter tensors in the export
    changed = {k for k in base if not np.array_equal(base[k], merged[k])}
    assert changed and all(".self_attn." in k for k in changed), sorted(changed)[:5]


def test_sft_bad_input_is_one_clear_error(world, tmp_path):
    from components.sft.sft import run_sft

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\nnot json\n')
    cfg = _cfg(f"sft.data_files=[{bad}]", "sft.corpus_instructions=0").sft
    with pytest.raises(InputDataError, match="bad.jsonl"):
        run_sft(cfg, world["base"], world["ex"], world["tok"], str(tmp_path / "o1"), progress=False)
    cfg = _cfg(f"sft.data_files=[{tmp_path}/nothing-*.jsonl]").sft
    with pytest.raises(ConfigError, match="matches no file"):
        run_sft(cfg, world["base"], world["ex"], world["tok"], str(tmp_path / "o2"), progress=False)
    cfg = _cfg("sft.template=chatml").sft      # the seekline tokenizer has no <|im_start|>
    with pytest.raises(ConfigError, match="im_start"):
        run_sft(cfg, world["base"], world["ex"], world["tok"], str(tmp_path / "o3"), progress=False)


def test_distill_online_moves_the_student_towards_the_teacher(world, sft_full):
    from components.distill.distill import run_distill

    sft_out, _, _ = sft_full
    out = str(world["root"] / "distill")
    rep = run_distill(_cfg().distill, os.path.join(sft_out, "final"), os.path.join(sft_out, "data"), None, out,
                      progress=False)
    assert rep["steps"] == 10
    assert rep["eval_kl_to_teacher"] < rep["before"]["eval_kl_to_teacher"], rep
    teacher = json.loads(Path(sft_out, "final", "config.json").read_text())
    student = json.loads(Path(out, "final", "config.json").read_text())
    assert student["num_hidden_layers"] == 2 < teacher["num_hidden_layers"]
    assert student["vocab_size"] == teacher["vocab_size"]
    assert json.loads(Path(out, "final", "seekline_phase.json").read_text())["chat_template"] == "seekline"


def test_distill_offline_topk_and_vocab_mismatch(world, sft_full, tmp_path):
    from components.distill.distill import run_distill

    sft_out, _, _ = sft_full
    cfg = _cfg("distill.teacher_logits=offline", "distill.teacher_topk=16", "distill.trainer.steps=4").distill
    rep = run_distill(cfg, os.path.join(sft_out, "final"), os.path.join(sft_out, "data"), None,
                      str(tmp_path / "off"), progress=False)
    assert rep["steps"] == 4 and Path(tmp_path, "off", "teacher_data", "config.json").exists()
    assert np.isfinite(rep["eval_kl_to_teacher"])
    cfg = _cfg("distill.student_overrides={vocab_size: 512}").distill
    with pytest.raises(ConfigError, match="vocab"):
        run_distill(cfg, os.path.join(sft_out, "final"), os.path.join(sft_out, "data"), None,
                    str(tmp_path / "mm"), progress=False)


def test_train_cli_runs_sft_then_distill(world, tmp_path):
    from pipelines.cli import main

    sets = [a for kv in [*SFT_SETS, *DISTILL_SETS, "sft.trainer.steps=3", "distill.trainer.steps=3"]
            for a in ("--set", kv)]
    sft = tmp_path / "sft"
    assert main(["train", "sft", "--init", str(Path(world["base"]).parent), "--data", world["ex"],
                 "--output", str(sft), "--no-progress", *sets]) == 0
    assert json.loads((sft / "report.json").read_text())["steps"] == 3
    st = tmp_path / "student"
    # --init is the teacher; its SFT rows (TEACHER/data) are the default data
    assert main(["train", "distill", "--init", str(sft), "--output", str(st), "--no-progress", *sets]) == 0
    rep = json.loads((st / "report.json").read_text())
    assert rep["steps"] == 3 and rep["data"] == str(sft / "data")
    shutil.rmtree(st)


def test_sft_with_synthetic_cold_start_data_reports_what_the_teacher_gave(world, tmp_path):
    """The teacher (here the random-init base) writes through the chat template; its output goes
    through the filters and the mix; everything it produced is accounted for in the report."""
    from components.sft.formats import read_sft_files
    from components.sft.sft import run_sft

    cfg = _cfg("sft.synthetic.ratio=0.5", "sft.synthetic.num_examples=4", "sft.synthetic.max_new_tokens=12",
               "sft.synthetic.batch_size=4", "sft.synthetic.seeds_per_prompt=1",
               "sft.trainer.steps=2").sft
    rep = run_sft(cfg, world["base"], world["ex"], world["tok"], str(tmp_path / "syn"), progress=False)
    syn = rep["data"]["sources"]["synthetic"] if "sources" in rep["data"] else \
        json.loads((tmp_path / "syn" / "data" / "sources.json").read_text())["synthetic"]
    assert syn["requested"] == 4 and syn["kept"] + syn["shortfall"] == 4
    assert syn["answers_generated"] + syn["instructions_generated"] > 0 and syn["teacher_calls"] > 0
    assert syn["ratio_requested"] == 0.5 and syn["synthetic_used"] == min(syn["kept"], syn["synthetic_wanted"])
    assert syn["real_used"] == rep["data"]["train"]["conversations"] - syn["synthetic_used"]
    path = tmp_path / "syn" / "synthetic.jsonl"
    assert path.exists() and syn["file"] == str(path)
    if syn["kept"]:
        assert len(read_sft_files([str(path)]).conversations) == syn["kept"]


def test_lora_sft_of_an_imported_qwen_checkpoint_uses_chatml(tmp_path):
    """An HF-layout Qwen2 folder with a ChatML tokenizer.json and no seekline metadata (as a hub
    download is): the template is picked from the tokenizer, only assistant tokens train."""
    from components.pretrain.pretrain import export_final
    from components.sft.sft import run_sft
    from components.sft.testdata import TEXTS, chatml_tokenizer_dir
    from model.config import ModelConfig
    from model.decoder import build_model

    tok_dir = chatml_tokenizer_dir(str(tmp_path), vocab_size=400)
    cfg = ModelConfig.load("tiny-qwen2").replace(vocab_size=400, max_position_embeddings=128)
    final = export_final(build_model(cfg, seed=0), str(tmp_path / "qwen"), None, {})
    shutil.copy(os.path.join(tok_dir, "tokenizer.json"), os.path.join(final, "tokenizer.json"))
    chats = tmp_path / "chats.jsonl"
    with open(chats, "w") as f:
        for i, t in enumerate(TEXTS * 3):     # 60 distinct requests over 5 answers: held-out
            f.write(json.dumps({"messages": [{"role": "user", "content": f"Request {i}: line {i % 5}."},
                                             {"role": "assistant", "content": t.strip()}]}) + "\n")
    sft = _cfg(f"sft.data_files=[{chats}]", "sft.corpus_instructions=0", "sft.lora.enabled=true",
               "sft.lora.target_modules=[attention, mlp]", "sft.trainer.steps=12", "sft.trainer.lr=0.01",
               "sft.eval_fraction=0.2").sft
    rep = run_sft(sft, final, None, None, str(tmp_path / "out"), progress=False)
    assert rep["data"]["template"] == "chatml" and rep["steps"] == 12
    assert rep["eval_loss"] < rep["before"]["eval_loss"]
    adapter = json.loads((tmp_path / "out" / "adapter" / "adapter_config.json").read_text())
    assert set(adapter["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                              "down_proj"}
    phase = json.loads((tmp_path / "out" / "final" / "seekline_phase.json").read_text())
    assert phase["chat_template"] == "chatml" and phase["lora_merged"] is True
