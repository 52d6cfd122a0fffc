#!/usr/bin/env python3
"""Make the tiny HF reference fixtures for seekline's model-core parity tests.

Runs in the SEPARATE reference venv (Python 3.11 + torch CPU + transformers >= 5.6), never in the
project venv:

    python3.11 -m venv .venv-ref && .venv-ref/bin/pip install torch==2.13.0 transformers safetensors
    .venv-ref/bin/python scripts/make_hf_fixtures.py                 # (re)write tests/fixtures/hf/*
    .venv-ref/bin/python scripts/make_hf_fixtures.py --verify-export EXPORT_ROOT
        # load every EXPORT_ROOT/<fixture>/ (written by seekline's save_hf_checkpoint, see
        # model/checkpoint/export_fixtures.py) with transformers and compare its logits with the
        # fixture's reference; writes tests/fixtures/hf/<fixture>/export_check.json

Each fixture dir holds config.json + weights (as transformers writes them, sometimes re-encoded:
bf16, sharded, FP8) + reference.npz with input ids and fp32 eager-attention logits. Models are
random (no download); e_score_correction_bias is set to random non-zero values first. Weights
are rounded to their stored dtype before the reference is computed, so the reference is exact for
what is on disk.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys

import numpy as np
import torch
import transformers
from safetensors.torch import load_file, save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "hf")

DSV3_BASE = dict(
    vocab_size=256, hidden_size=48, intermediate_size=64, moe_intermediate_size=16,
    num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4,
    n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=3, first_k_dense_replace=1,
    routed_scaling_factor=2.5, norm_topk_prob=True, kv_lora_rank=16,
    qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=12, max_position_embeddings=512,
    rms_norm_eps=1e-6, rope_interleave=True, tie_word_embeddings=False, bos_token_id=0,
    eos_token_id=1, num_nextn_predict_layers=1,
)

FIXTURES = {
    # q-LoRA, YaRN (mscale == mscale_all_dim), n_group 4 / topk_group 2, single fp32 file,
    # plus a synthetic MTP layer (model.layers.3.*) so the importer's MTP keys are exercised.
    "dsv3_qlora": dict(
        kind="deepseek_v3", dtype="float32", shard=None, mtp=True,
        config=dict(DSV3_BASE, hidden_size=32, q_lora_rank=24, n_group=4, topk_group=2,
                    rope_scaling=dict(type="yarn", rope_type="yarn", factor=4.0,
                                      original_max_position_embeddings=128, beta_fast=32,
                                      beta_slow=1, mscale=1.0, mscale_all_dim=1.0),
                    rope_theta=10000.0)),
    # plain q_proj, YaRN with mscale != mscale_all_dim (cos/sin amplitude != 1), n_group 2,
    # bf16 weights, sharded safetensors + index json.
    "dsv3_plain_bf16_sharded": dict(
        kind="deepseek_v3", dtype="bfloat16", shard="60KB", mtp=False,
        config=dict(DSV3_BASE, q_lora_rank=None, n_group=2, topk_group=1, num_experts_per_tok=2,
                    rope_scaling=dict(type="yarn", rope_type="yarn", factor=8.0,
                                      original_max_position_embeddings=64, beta_fast=32,
                                      beta_slow=1, mscale=1.0, mscale_all_dim=0.8),
                    rope_theta=50000.0)),
    # FP8 e4m3 weights with weight_scale_inv, block size 16x16 (quantization_config).
    "dsv3_fp8": dict(
        kind="deepseek_v3", dtype="fp8", shard=None, mtp=False,
        config=dict(DSV3_BASE, q_lora_rank=24, n_group=4, topk_group=2,
                    rope_scaling=dict(type="yarn", rope_type="yarn", factor=4.0,
                                      original_max_position_embeddings=128, beta_fast=32,
                                      beta_slow=1, mscale=1.0, mscale_all_dim=1.0),
                    rope_theta=10000.0)),
    # DeepSeek-V2 routing: softmax scores, group_limited_greedy (max per group), no bias,
    # 2 shared experts, V2-Lite-style YaRN mscale 0.707.
    "dsv2_group_limited": dict(
        kind="deepseek_v2", dtype="float32", shard=None, mtp=False,
        config=dict({k: v for k, v in DSV3_BASE.items()
                     if k not in ("rope_interleave", "num_nextn_predict_layers", "norm_topk_prob")},
                    q_lora_rank=None, n_group=2, topk_group=1, num_experts_per_tok=2,
                    topk_method="group_limited_greedy", routed_scaling_factor=2.0,
                    n_shared_experts=2,
                    rope_scaling=dict(type="yarn", rope_type="yarn", factor=40.0,
                                      original_max_position_embeddings=64, beta_fast=32,
                                      beta_slow=1, mscale=0.707, mscale_all_dim=0.707),
                    rope_theta=10000.0)),
    # Qwen2: GQA (4 q heads / 2 kv heads), q/k/v bias, tied embeddings.
    "qwen2_gqa_tied": dict(
        kind="qwen2", dtype="float32", shard=None, mtp=False,
        config=dict(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                    rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=True,
                    bos_token_id=0, eos_token_id=1, use_sliding_window=False)),
}

FP8_BLOCK = (16, 16)
B, T = 2, 10


def _build(kind, cfg):
    if kind == "deepseek_v3":
        conf = transformers.DeepseekV3Config(**cfg)
        model_cls = transformers.DeepseekV3ForCausalLM
    elif kind == "deepseek_v2":
        conf = transformers.DeepseekV2Config(**cfg)
        model_cls = transformers.DeepseekV2ForCausalLM
    else:
        conf = transformers.Qwen2Config(**cfg)
        model_cls = transformers.Qwen2ForCausalLM
    conf._attn_implementation = "eager"
    return model_cls(conf).eval()


def _quantize_fp8(w: torch.Tensor, block=FP8_BLOCK):
    """Block-wise e4m3 quantisation: scale_inv[i, j] = amax(block) / 448."""
    out_f, in_f = w.shape
    bo, bi = block
    so, si = math.ceil(out_f / bo), math.ceil(in_f / bi)
    scale_inv = torch.zeros(so, si, dtype=torch.float32)
    q = torch.zeros_like(w, dtype=torch.float8_e4m3fn)
    deq = torch.zeros_like(w)
    for i in range(so):
        for j in range(si):
            blk = w[i * bo:(i + 1) * bo, j * bi:(j + 1) * bi]
            s = blk.abs().max().clamp(min=1e-12) / 448.0
            qb = (blk / s).to(torch.float8_e4m3fn)
            q[i * bo:(i + 1) * bo, j * bi:(j + 1) * bi] = qb
            deq[i * bo:(i + 1) * bo, j * bi:(j + 1) * bi] = qb.to(torch.float32) * s
            scale_inv[i, j] = s
    return q, scale_inv, deq


def _synthetic_mtp(cfg, sd, gen):
    """model.layers.{L}.* tensors for one MTP module (random; only the key layout matters)."""
    n_layers = cfg["num_hidden_layers"]
    src = f"model.layers.{n_layers - 1}."   # an MoE block: copy its key/shape layout
    out = {}
    for k, v in sd.items():
        if k.startswith(src):
            out[f"model.layers.{n_layers}." + k[len(src):]] = torch.randn(v.shape, generator=gen) * 0.02
    d = cfg["hidden_size"]
    out[f"model.layers.{n_layers}.embed_tokens.weight"] = sd["model.embed_tokens.weight"].clone()
    out[f"model.layers.{n_layers}.shared_head.head.weight"] = sd["lm_head.weight"].clone()
    out[f"model.layers.{n_layers}.enorm.weight"] = 1 + 0.1 * torch.randn(d, generator=gen)
    out[f"model.layers.{n_layers}.hnorm.weight"] = 1 + 0.1 * torch.randn(d, generator=gen)
    out[f"model.layers.{n_layers}.shared_head.norm.weight"] = 1 + 0.1 * torch.randn(d, generator=gen)
    out[f"model.layers.{n_layers}.eh_proj.weight"] = torch.randn(d, 2 * d, generator=gen) * 0.02
    return out


def _inputs(gen, vocab):
    ids = torch.randint(2, vocab, (B, T), generator=gen)
    # Left-padded batch: row 0 full, row 1 has 3 pad slots (id 0) in front.
    pad_ids = ids.clone()
    mask = torch.ones(B, T, dtype=torch.long)
    pad_ids[1, :3] = 0
    mask[1, :3] = 0
    return ids, pad_ids, mask


def make(name, spec, seed):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = _build(spec["kind"], spec["config"])
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.dim() == 1 and "norm" in n:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))  # non-trivial norm weights
            elif p.dim() == 1:  # biases
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.08 * torch.randn(p.shape, generator=gen))
        for n, b in model.named_buffers():
            if n.endswith("e_score_correction_bias"):
                b.copy_(0.3 * torch.randn(b.shape, generator=gen))
    d = os.path.join(OUT, name)
    tmp = d + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    sd = load_file(os.path.join(tmp, "model.safetensors"))
    config = json.load(open(os.path.join(tmp, "config.json")))

    if spec["dtype"] == "bfloat16":
        sd = {k: v.to(torch.bfloat16) if v.is_floating_point() and "e_score" not in k else v
              for k, v in sd.items()}
    elif spec["dtype"] == "fp8":
        new = {}
        for k, v in sd.items():
            if k.startswith("model.layers.") and "_proj" in k and k.endswith(".weight") and v.dim() == 2:
                q, s, _ = _quantize_fp8(v)
                new[k] = q
                new[k[:-len("weight")] + "weight_scale_inv"] = s
            else:
                new[k] = v
        sd = new
        config["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3",
                                         "activation_scheme": "dynamic",
                                         "weight_block_size": list(FP8_BLOCK)}
    if spec["mtp"]:
        sd.update(_synthetic_mtp(spec["config"], sd, gen))

    # Reload what is on disk (upcast) into the reference model so it sees the stored values.
    ref_sd = {}
    for k, v in sd.items():
        if k.endswith("weight_scale_inv"):
            continue
        if v.dtype == torch.float8_e4m3fn:
            s = sd[k[:-len("weight")] + "weight_scale_inv"]
            s_full = s.repeat_interleave(FP8_BLOCK[0], 0)[:v.shape[0]]
            s_full = s_full.repeat_interleave(FP8_BLOCK[1], 1)[:, :v.shape[1]]
            ref_sd[k] = v.to(torch.float32) * s_full
        else:
            ref_sd[k] = v.to(torch.float32)
    # Loading through from_pretrained applies transformers' own key conversion (per-expert keys
    # -> fused in-memory experts), which is what a user of transformers would get.
    shutil.rmtree(tmp)
    os.makedirs(tmp)
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump({k: v for k, v in config.items() if k != "quantization_config"}, f, indent=2)
    save_file({k: v.contiguous() for k, v in ref_sd.items()}, os.path.join(tmp, "model.safetensors"),
              metadata={"format": "pt"})
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp, attn_implementation="eager",
                                                            dtype=torch.float32).eval()
    _check_loaded(ref, ref_sd)
    shutil.rmtree(tmp)

    ids, pad_ids, mask = _inputs(gen, spec["config"]["vocab_size"])
    with torch.no_grad():
        logits = ref(input_ids=ids).logits.float().numpy()
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        logits_pad = ref(input_ids=pad_ids, attention_mask=mask, position_ids=pos).logits.float().numpy()

    # Write the fixture dir atomically-ish: everything to tmp, then rename.
    os.makedirs(tmp)
    arrays = dict(input_ids=ids.numpy().astype(np.int32), logits=logits.astype(np.float32),
                  padded_input_ids=pad_ids.numpy().astype(np.int32),
                  attention_mask=mask.numpy().astype(np.int32),
                  padded_logits=logits_pad.astype(np.float32))
    _write_weights(tmp, sd, spec["shard"])
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    if spec["mtp"]:
        arrays["mtp_logits"] = _mtp_reference(tmp, ids)
    np.savez_compressed(os.path.join(tmp, "reference.npz"), **arrays)
    with open(os.path.join(tmp, "SOURCE.txt"), "w") as f:
        f.write(f"made by scripts/make_hf_fixtures.py (seed {seed}) with transformers "
                f"{transformers.__version__}, torch {torch.__version__}; reference logits: "
                "fp32, attn_implementation=eager, weights = the stored values upcast to fp32.\n")
    if os.path.isdir(d):   # the old fixture goes only once the new one is complete
        shutil.rmtree(d)
    os.replace(tmp, d)
    size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
    print(f"{name}: {size / 1024:.0f} KiB, {len(sd)} tensors")
    assert size < 1_000_000, f"{name} fixture too large: {size}"


def _mtp_reference(ckpt_dir, ids):
    """MTP depth-1 logits from transformers' MtpModel: position i combines the main model's final
    (normed) hidden state h_i with Emb(t_{i+1}) and predicts t_{i+2}. Returns (B, T-1, V).

    transformers feeds the MTP block position ids shifted by one (those of t_{i+1}); RoPE only
    sees relative offsets, so that is the same attention as seekline's unshifted positions."""
    from transformers.modeling_layers import MtpModel
    main = transformers.AutoModelForCausalLM.from_pretrained(ckpt_dir, attn_implementation="eager",
                                                             dtype=torch.float32).eval()
    n = main.config.num_hidden_layers
    # The class only whitelists DeepSeek-V3's real MTP index (61); point it at our tiny one.
    main._keys_to_ignore_on_load_unexpected = [rf"model\.layers\.{n}.*"]
    mtp = MtpModel.from_pretrained(main).eval()
    with torch.no_grad():
        h = main.model(input_ids=ids).last_hidden_state
        pos = torch.arange(1, ids.shape[1])[None].repeat(ids.shape[0], 1)
        hm = mtp.forward_layer(0, h[:, :-1], position_ids=pos, mtp_cache=None, input_ids=ids[:, 1:])
        return mtp._project_to_logits(hm).float().numpy().astype(np.float32)


def _check_loaded(ref, ref_sd):
    """Make sure from_pretrained really used our values (no silently re-initialised tensor)."""
    msd = ref.state_dict()
    emb = msd["model.embed_tokens.weight"]
    assert torch.equal(emb, ref_sd["model.embed_tokens.weight"])
    for k, v in msd.items():
        if k.endswith("e_score_correction_bias"):
            assert torch.equal(v, ref_sd[k]), k


def _write_weights(d, sd, shard):
    sd = {k: v.contiguous() for k, v in sd.items()}
    if shard is None:
        save_file(sd, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
        return
    limit = int(shard.rstrip("KB")) * 1024
    shards, cur, cur_size = [], {}, 0
    for k in sorted(sd):
        nbytes = sd[k].numel() * sd[k].element_size()
        if cur and cur_size + nbytes > limit:
            shards.append(cur)
            cur, cur_size = {}, 0
        cur[k] = sd[k]
        cur_size += nbytes
    shards.append(cur)
    weight_map, total = {}, 0
    for i, part in enumerate(shards):
        fn = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(part, os.path.join(d, fn), metadata={"format": "pt"})
        for k, v in part.items():
            weight_map[k] = fn
            total += v.numel() * v.element_size()
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)


def _sha256(path):
    import hashlib

    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def verify_export(export_root):
    """transformers loads each seekline export and reproduces the fixture's reference logits."""
    results = {}
    for name in sorted(os.listdir(export_root)):
        exp = os.path.join(export_root, name)
        fx = os.path.join(OUT, name)
        if not os.path.isdir(exp) or not os.path.isdir(fx):
            continue
        ref = np.load(os.path.join(fx, "reference.npz"))
        model = transformers.AutoModelForCausalLM.from_pretrained(
            exp, attn_implementation="eager", dtype=torch.float32).eval()
        with torch.no_grad():
            got = model(input_ids=torch.from_numpy(ref["input_ids"]).long()).logits.numpy()
        err = float(np.abs(got - ref["logits"]).max())
        info = {"export_loaded_by": f"transformers {transformers.__version__}",
                "model_class": type(model).__name__, "max_abs_err_vs_reference": err,
                "exported_files": sorted(os.listdir(exp)),
                # what exactly was checked: hf_test.py re-exports with today's code and compares
                "exported_sha256": {fn: _sha256(os.path.join(exp, fn)) for fn in sorted(os.listdir(exp))}}
        if "mtp_logits" in ref.files:
            # the exported MTP layer (model.layers.{L}.*) through transformers' MtpModel
            mtp = _mtp_reference(exp, torch.from_numpy(ref["input_ids"]).long())
            info["mtp_max_abs_err_vs_reference"] = float(np.abs(mtp - ref["mtp_logits"]).max())
            err = max(err, info["mtp_max_abs_err_vs_reference"])
        with open(os.path.join(fx, "export_check.json"), "w") as f:
            json.dump(info, f, indent=2)
        results[name] = err
        print(f"{name}: transformers({type(model).__name__}) on seekline export: max abs err {err:.2e}")
    bad = {k: v for k, v in results.items() if not v <= 1e-4}
    if bad or not results:
        sys.exit(f"export verification failed: {bad or 'no exports found'}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--verify-export", metavar="EXPORT_ROOT")
    ap.add_argument("--only", nargs="*")
    args = ap.parse_args()
    torch.set_num_threads(2)
    if args.verify_export:
        verify_export(args.verify_export)
        return
    os.makedirs(OUT, exist_ok=True)
    for i, (name, spec) in enumerate(FIXTURES.items()):
        if args.only and name not in args.only:
            continue
        make(name, spec, seed=1234 + i)


if __name__ == "__main__":
    main()
