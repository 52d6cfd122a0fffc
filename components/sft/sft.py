"""The SFT phase: chat / instruction data → assistant-only-loss rows → full or LoRA fine-tuning.

Steps (run_sft):
  1. data, built once under OUTPUT/data/ (a resumed run reuses it): the configured JSONL files
     (conversation, instruction or prompt/completion lines; malformed lines are counted with
     file:line), instruction examples made from the corpus (functions with docstrings; the ingest
     eval split stays held out), and optionally cold-start synthetic examples from a teacher,
     mixed by `synthetic.ratio`; rendered with the chat template, loss mask on assistant tokens,
     best-fit-decreasing packed (components/sft/dataset.py);
  2. the held-out assistant-token loss of the starting model ("before");
  3. training through the shared engine (causal-LM task with the loss mask; a micro-batch with no
     assistant target is an error), optionally with LoRA adapters on a frozen base;
  4. "after" loss, adapters saved alone (PEFT layout, OUTPUT/adapter/) and merged, HF export to
     OUTPUT/final/ with the tokenizer and the chat template's name.
"""
from __future__ import annotations

import glob
import json
import os
from typing import Any

import tensorflow as tf

from common.errors import ConfigError, InputDataError
from common.fileio import atomic_write_text
from components.pretrain.pretrain import check_output_dir, export_final
from configs.training import SFTConfig
from training.data import open_packed
from training.lm_task import NO_TARGETS_MESSAGE, CausalLMTask
from training.loop import Trainer, tokens_per_second
from training.strategy import Runtime, make_runtime

DATA_DIR = "data"
ADAPTER_DIR = "adapter"


def expand_data_files(patterns: list[str]) -> list[str]:
    """The configured files/globs, each required to match something (sorted, de-duplicated)."""
    out: list[str] = []
    for pat in patterns:
        hits = sorted(glob.glob(os.path.expanduser(pat), recursive=True))
        hits = [h for h in hits if os.path.isfile(h)]
        if not hits:
            raise ConfigError(f"sft.data_files: {pat!r} matches no file")
        out.extend(h for h in hits if h not in out)
    return out


def corpus_documents(examples_dir: str, split: str) -> list[tuple[str, str]]:
    """(source path, text) of the ingest artifact's documents in one split."""
    from components.tokenizer.tokenizer import iter_split
    return [(path, text) for _, text, path in iter_split(examples_dir, split)]


def build_sft_data(cfg: SFTConfig, examples_dir: str | None, tokenizer_dir: str, out_dir: str, seq_len: int,
                   *, teacher=None) -> dict[str, Any]:
    """Collect, mix, render and pack the SFT examples into out_dir (Split-train / Split-eval)."""
    from components.sft.dataset import build_sft_dataset, split_conversations
    from components.sft.formats import read_sft_files
    from components.sft.instructions import continuations_from_documents, instructions_from_documents

    train, held_out, sources = [], [], {}
    malformed: list[str] = []
    if cfg.data_files:
        files = expand_data_files(cfg.data_files)
        read = read_sft_files(files)
        malformed = list(read.malformed)
        tr, ev = split_conversations(list(read.conversations), cfg.eval_fraction, cfg.trainer.seed)
        train += tr
        held_out += ev
        sources["files"] = {"files": files, "conversations": len(read.conversations),
                            "malformed": len(read.malformed)}
    if cfg.corpus_instructions and examples_dir:
        # Functions whose code fits the rows: ~2 characters of code per token of row leaves room
        # for the description (BPE on code averages 3-4 characters per token).
        limit = dict(max_chars=2 * seq_len, seed=cfg.trainer.seed)
        n_eval = max(cfg.corpus_instructions // 5, 1)
        docs = {split: corpus_documents(examples_dir, split) for split in ("train", "eval")}
        tr = instructions_from_documents(docs["train"], max_examples=cfg.corpus_instructions, **limit)
        ev = instructions_from_documents(docs["eval"], max_examples=n_eval, **limit)
        kind = "corpus_instructions"
        if not tr or not ev:
            # A corpus without documented functions (prose, other languages): "continue this
            # text" examples, which any corpus has, so the phase still runs on a user's corpus.
            tr = continuations_from_documents(docs["train"], max_examples=cfg.corpus_instructions, **limit)
            ev = continuations_from_documents(docs["eval"], max_examples=n_eval, **limit)
            kind = "corpus_continuations"
        train += tr
        held_out += ev
        sources[kind] = {"train": len(tr), "eval": len(ev)}
    if not train:
        raise InputDataError("sft: no training conversations (set sft.data_files or keep "
                             "sft.corpus_instructions > 0 with a corpus that has documented functions)")
    if not held_out:
        raise InputDataError("sft: no held-out conversations to evaluate on")
    if cfg.synthetic.ratio > 0:
        train, sources["synthetic"] = _add_synthetic(cfg, train, held_out, tokenizer_dir, teacher, out_dir)
    report = build_sft_dataset(train, held_out, tokenizer_dir, out_dir, template=cfg.template, seq_len=seq_len,
                               packing=cfg.packing, truncate=cfg.truncate, seed=cfg.trainer.seed,
                               malformed=malformed)
    report["sources"] = sources
    atomic_write_text(os.path.join(out_dir, "sources.json"), json.dumps(sources, indent=1, sort_keys=True))
    return report


def _add_synthetic(cfg: SFTConfig, train: list, held_out: list, tokenizer_dir: str, teacher, out_dir: str):
    from components.sft.chat_template import get_template
    from components.sft.synthetic import SyntheticSpec, generate_synthetic, mix, write_jsonl

    sc = cfg.synthetic
    if sc.teacher:
        import model as model_core
        teacher = model_core.load_hf_checkpoint(sc.teacher)
        tokenizer_dir = sc.teacher if os.path.exists(os.path.join(sc.teacher, "tokenizer.json")) else tokenizer_dir
    if teacher is None:
        raise ConfigError("sft.synthetic.ratio > 0 needs a teacher (sft.synthetic.teacher or the init model)")
    spec = SyntheticSpec(num_examples=sc.num_examples, reasoning_fraction=sc.reasoning_fraction,
                         seeds_per_prompt=sc.seeds_per_prompt,
                         max_new_tokens=sc.max_new_tokens, temperature=sc.temperature, top_p=sc.top_p,
                         seed=sc.seed, batch_size=sc.batch_size)
    template = get_template(cfg.template, tokenizer_dir)
    synthetic, report = generate_synthetic(teacher, template, train, spec=spec, eval_convs=held_out)
    # kept beside the rows so people can read what the teacher wrote (and reuse it as data_files)
    report["file"] = os.path.join(os.path.dirname(os.path.normpath(out_dir)), "synthetic.jsonl")
    write_jsonl(report["file"], synthetic)
    mixed, mix_report = mix(train, synthetic, sc.ratio, sc.seed)
    return mixed, {**report, **mix_report}


def run_sft(cfg: SFTConfig, init_dir: str | None, examples_dir: str | None, tokenizer_dir: str | None,
            output_dir: str, *, runtime: Runtime | None = None, max_steps: int | None = None,
            checkpoint_every: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Fine-tune the HF-layout model in init_dir (or cfg.init) into output_dir; returns the report."""
    import model as model_core

    check_output_dir(output_dir)
    init_dir = cfg.init or init_dir
    if not init_dir:
        raise ConfigError("sft: no model to fine-tune (set sft.init or run after pretraining)")
    if not os.path.exists(os.path.join(init_dir, "config.json")):
        raise InputDataError(f"{init_dir}: not an HF-layout model folder (no config.json)")
    if tokenizer_dir is None or os.path.exists(os.path.join(init_dir, "tokenizer.json")):
        tokenizer_dir = init_dir      # an exported / imported model carries its own tokenizer
    rt = runtime or make_runtime(cfg.trainer.strategy, cfg.trainer.precision)
    model_cfg = model_core.ModelConfig.from_json_file(os.path.join(init_dir, "config.json"))
    seq_len = cfg.seq_len or model_cfg.max_position_embeddings
    if seq_len > model_cfg.max_position_embeddings:
        raise ConfigError(f"sft.seq_len={seq_len} exceeds the model's context ({model_cfg.max_position_embeddings})")
    data_dir = os.path.join(output_dir, DATA_DIR)
    data_report = None
    if rt.is_chief:
        if tf.io.gfile.exists(os.path.join(data_dir, "report.json")):   # a resumed run
            data_report = json.loads(tf.io.gfile.GFile(os.path.join(data_dir, "report.json")).read())
        else:
            teacher = model_core.load_hf_checkpoint(init_dir) if cfg.synthetic.ratio > 0 else None
            data_report = build_sft_data(cfg, examples_dir, tokenizer_dir, data_dir, seq_len, teacher=teacher)
            del teacher
    data = open_packed(data_dir)

    lora_info: dict[str, Any] = {}

    def build():
        m = model_core.load_hf_checkpoint(init_dir)
        if cfg.lora.enabled:
            from model.lora import apply_lora, lora_parameter_counts
            names = apply_lora(m, lora_spec(cfg))
            lora_info.update(adapted_modules=len(names), **lora_parameter_counts(m))
        return m

    tc = cfg.trainer
    if cfg.lora.enabled:
        # The base stays exactly as it was, routing included: no aux-loss-free bias updates.
        tc = tc.model_copy(update={"bias_update_gamma": 0.0})
    task = CausalLMTask(mtp_weight=tc.mtp_weight, aux_loss_alpha=tc.aux_loss_alpha, require_targets=True)
    trainer = Trainer(tc, rt, build, task, output_dir, title="sft" + (" (LoRA)" if cfg.lora.enabled else ""))
    before = trainer.baseline_eval(data)
    try:
        result = trainer.fit(data, max_steps=max_steps, checkpoint_every=checkpoint_every, progress=progress)
    except tf.errors.InvalidArgumentError as e:
        if NO_TARGETS_MESSAGE in str(e):
            raise InputDataError(f"{data_dir}: {NO_TARGETS_MESSAGE}; check the chat template and "
                                 "the assistant turns of the data") from None
        raise
    report: dict[str, Any] = {
        "phase": "sft", "lora": cfg.lora.enabled, "steps": result.steps, "target_steps": tc.steps,
        "resumed_from_step": result.resumed_from, "nonfinite_steps": result.nonfinite_steps,
        "tokens_per_s": tokens_per_second(result.history), "seq_len": data.seq_len, "init": init_dir,
        "data": data_report, "before": before, **result.final_eval}
    if "eval_loss" in result.final_eval and "eval_loss" in before:
        report["eval_loss_improvement"] = before["eval_loss"] - result.final_eval["eval_loss"]
    if lora_info:
        report["lora_parameters"] = lora_info
    if not rt.is_chief:
        return report
    template = (data_report or {}).get("template", cfg.template)
    if cfg.lora.enabled:
        from model.lora import merge_lora, save_adapters
        report["adapter"] = save_adapters(result.model, os.path.join(output_dir, ADAPTER_DIR),
                                          base_model_name_or_path=init_dir)
        merge_lora(result.model)
    report["final"] = export_final(result.model, output_dir, tokenizer_dir, {
        "seekline_phase.json": json.dumps({"phase": "sft", "steps": result.steps, "chat_template": template,
                                           "lora_merged": cfg.lora.enabled})})
    atomic_write_text(os.path.join(output_dir, "config.json"), cfg.model_dump_json(indent=1))
    atomic_write_text(os.path.join(output_dir, "report.json"), json.dumps(report, indent=1, sort_keys=True))
    return report


def lora_spec(cfg: SFTConfig):
    from model.lora import LoraSpec
    lc = cfg.lora
    return LoraSpec(rank=lc.rank, alpha=lc.alpha, dropout=lc.dropout, target_modules=tuple(lc.target_modules),
                    include_experts=lc.include_experts)

