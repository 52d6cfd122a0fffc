#!/usr/bin/env python3
"""Record transformers' (and PEFT's) logits for seekline's LoRA exports: tests/fixtures/lora/*.

Runs in the SEPARATE reference venv (torch + transformers, see scripts/make_hf_fixtures.py), never
in the project venv, after seekline has exported the adapted fixtures:

    .venv/bin/python -m model.lora_fixtures /tmp/seekline_lora [NAME ...]
    .venv-ref/bin/python scripts/make_lora_fixtures.py /tmp/seekline_lora

PEFT is optional: when `import peft` works (it is not part of .venv-ref; e.g.
`.venv-ref/bin/pip install --target /tmp/peft_extra --no-deps peft accelerate` and
PYTHONPATH=/tmp/peft_extra), the base fixture is loaded with transformers, the adapter folder with
`PeftModel.from_pretrained`, and those logits are recorded too; otherwise check.json says so.

For each EXPORT_ROOT/<name>/ (adapter/ = PEFT folder whose base_model_name_or_path is the base
fixture, merged/ = save_hf_checkpoint of the merged model) this writes tests/fixtures/lora/<name>/:
  adapter/        a copy of the adapter folder PEFT was checked on
  reference.npz   input_ids (the base fixture's), merged_logits (transformers on merged/),
                  base_logits (transformers on the base fixture), peft_logits (when PEFT put
                  an adapter on exactly the modules the file has; otherwise check.json says why)
  check.json      versions, max |merged - peft|, how far the adapters move the logits, and the
                  sha256 of every merged/ file (model/lora_test.py re-exports and compares);
                  for adapters with routed-expert modules (…mlp.experts.{j}.…, include_experts)
                  also how far the merge moved the routed-expert weights transformers loaded
                  (its fused experts tensors), so the record shows the expert adapters reached it
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys

import numpy as np
import torch
import transformers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HF = os.path.join(ROOT, "tests", "fixtures", "hf")
OUT = os.path.join(ROOT, "tests", "fixtures", "lora")
TOL = 1e-4
PREFIX = "base_model.model."


def _sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _load(path):
    return transformers.AutoModelForCausalLM.from_pretrained(
        path, attn_implementation="eager", dtype=torch.float32).eval()


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=torch.from_numpy(ids).long()).logits.float().numpy()


def _file_modules(adapter_dir):
    from safetensors import safe_open
    with safe_open(os.path.join(adapter_dir, "adapter_model.safetensors"), "np") as f:
        return sorted({k[len(PREFIX):].rsplit(".lora_", 1)[0] for k in f.keys()})


def record(name, exp):
    merged_dir, adapter_dir = os.path.join(exp, "merged"), os.path.join(exp, "adapter")
    with open(os.path.join(adapter_dir, "adapter_config.json")) as f:
        base_dir = os.path.join(ROOT, json.load(f)["base_model_name_or_path"])
    ids = np.load(os.path.join(base_dir, "reference.npz"))["input_ids"]
    merged_model = _load(merged_dir)
    merged = _logits(merged_model, ids)
    base_model = _load(base_dir)
    base = _logits(base_model, ids)
    arrays = dict(input_ids=ids.astype(np.int32), merged_logits=merged.astype(np.float32),
                  base_logits=base.astype(np.float32))
    info = {"base": os.path.relpath(base_dir, ROOT),
            "transformers": transformers.__version__, "torch": torch.__version__,
            "adapter_effect_max_abs": float(np.abs(merged - base).max()),
            "merged_files": sorted(os.listdir(merged_dir)),
            "merged_sha256": {fn: _sha256(os.path.join(merged_dir, fn))
                              for fn in sorted(os.listdir(merged_dir))}}
    experts = [m for m in _file_modules(adapter_dir) if ".mlp.experts." in m]
    if experts:
        base_params = dict(base_model.named_parameters())
        deltas = [float((p - base_params[n]).abs().max()) for n, p in merged_model.named_parameters()
                  if ".mlp.experts." in n]
        info.update(routed_expert_modules=len(experts), routed_expert_tensors=len(deltas),
                    routed_experts_delta_max_abs=max(deltas, default=0.0))
    try:
        import peft
    except ImportError:
        info["peft"] = None
        info["peft_note"] = "peft not importable in the reference venv: merged check only"
    else:
        pm = peft.PeftModel.from_pretrained(base_model, adapter_dir).eval()
        # the nn.Linear modules PEFT put an adapter on (ParamWrapper-wrapped fused experts aside)
        got = sorted(n[len(PREFIX):-len(".lora_A")] for n, m in pm.named_modules()
                     if n.endswith(".lora_A") and ".experts" not in n)
        want = _file_modules(adapter_dir)
        info["peft"] = peft.__version__
        if got == want:
            arrays["peft_logits"] = _logits(pm, ids).astype(np.float32)
            info.update(peft_modules=len(got),
                        merged_vs_peft_max_abs=float(np.abs(merged - arrays["peft_logits"]).max()))
        else:
            info["peft_note"] = (f"PEFT attached adapters to {len(got)} of the file's {len(want)} modules "
                                 f"(missing e.g. {sorted(set(want) - set(got))[:2]}): not comparable")
    d = os.path.join(OUT, name)
    tmp = d + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    shutil.copytree(adapter_dir, os.path.join(tmp, "adapter"))
    np.savez_compressed(os.path.join(tmp, "reference.npz"), **arrays)
    with open(os.path.join(tmp, "check.json"), "w") as f:
        json.dump(info, f, indent=2, sort_keys=True)
        f.write("\n")
    if os.path.isdir(d):       # the old fixture goes only once the new one is complete
        shutil.rmtree(d)
    os.replace(tmp, d)
    print(f"{name}: adapters move logits by up to {info['adapter_effect_max_abs']:.3f}; "
          f"merged vs PEFT {info.get('merged_vs_peft_max_abs', 'n/a')}")
    return info


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("export_root")
    args = ap.parse_args()
    torch.set_num_threads(2)
    bad = []
    names = sorted(n for n in os.listdir(args.export_root)
                   if os.path.isfile(os.path.join(args.export_root, n, "adapter", "adapter_config.json")))
    for name in names:
        info = record(name, os.path.join(args.export_root, name))
        if not info["adapter_effect_max_abs"] > 100 * TOL:
            bad.append(f"{name}: adapters barely change the logits")
        if "routed_expert_modules" in info and not info["routed_experts_delta_max_abs"] > 0:
            bad.append(f"{name}: the merged export's routed experts equal the base's")
        if "merged_vs_peft_max_abs" in info and not info["merged_vs_peft_max_abs"] <= TOL:
            bad.append(f"{name}: merged export and PEFT differ by {info['merged_vs_peft_max_abs']:.2e}")
    if bad or not names:
        sys.exit("LoRA fixture check failed: " + ("; ".join(bad) or "no exports found"))


if __name__ == "__main__":
    main()
