"""The LoRA parity fixtures: adapted HF fixture models, exported for transformers / PEFT to check.

    .venv/bin/python -m model.lora_fixtures /tmp/seekline_lora [NAME ...]
    .venv-ref/bin/python scripts/make_lora_fixtures.py /tmp/seekline_lora

The first command (project venv) loads each base fixture (tests/fixtures/hf/<base>), attaches
adapters with deterministic non-zero weights (`adapted_fixture_model`), saves them as a PEFT
folder (<out>/<name>/adapter, whose base_model_name_or_path names the base fixture) and the
merged model with save_hf_checkpoint (<out>/<name>/merged).
The second (reference venv) loads the merged export with transformers, and the base fixture +
adapter folder with PEFT, and records their logits and the export's hashes in
tests/fixtures/lora/<name>/, which model/lora_test.py checks. Naming fixtures exports only those
(so the others' recorded files stay as they are).
"""
from __future__ import annotations

import os
import sys

import numpy as np

from model.lora import (
    LoraSpec,
    apply_lora,
    lora_modules,
    lora_spec,
    merge_lora,
    save_adapters,
    set_adapter_values,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HF_FIXTURES = os.path.join(REPO, "tests", "fixtures", "hf")
LORA_FIXTURES = os.path.join(REPO, "tests", "fixtures", "lora")

# fixture -> (base fixture under tests/fixtures/hf, spec, adapter seed).
#   dsv3_qlora: DeepSeek-V3 with q-LoRA MLA + MoE, every adaptable module (attention, the dense
#     layer's MLP, the shared experts). PEFT cannot check it: PEFT 0.21 on transformers 5 maps
#     gate_proj/up_proj/down_proj targets of MoE models onto the fused routed experts (its v4 -> v5
#     adapter migration), so the dense and shared-expert MLP adapters would not be loaded.
#   dsv3_qlora_attn: the same base, attention modules only, which PEFT loads as written.
#   qwen2_gqa_tied: Qwen2 GQA (biased q/k/v, tied head), a subset with MLP, rsLoRA scaling.
#   dsv3_experts: the dsv3_qlora base with include_experts: every MLP projection, the routed
#     experts' too (8 experts × gate/up/down in layers 1-2, stacked adapters inside MoE), plus
#     o_proj. Checked against transformers on the merged export (PEFT cannot load it, as above).
FIXTURES = {
    "dsv3_qlora": ("dsv3_qlora", LoraSpec(rank=4, alpha=8.0), 11),
    "dsv3_qlora_attn": ("dsv3_qlora", LoraSpec(rank=2, alpha=4.0, target_modules=(
        "q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj")), 13),
    "qwen2_gqa_tied": ("qwen2_gqa_tied", LoraSpec(rank=4, alpha=6.0, use_rslora=True,
                                                  target_modules=("q_proj", "k_proj", "v_proj", "o_proj",
                                                                  "gate_proj", "down_proj")), 12),
    "dsv3_experts": ("dsv3_qlora", LoraSpec(rank=3, alpha=6.0, include_experts=True,
                                            target_modules=("mlp", "o_proj")), 14),
}
B_STD = 0.05   # lora_B entries ~ N(0, B_STD²): logits move by O(0.1–1), well above the 1e-4 tolerance


def set_fixture_adapters(model, seed: int) -> None:
    """Deterministic adapter weights: A (in, r) ~ U(±1/√in) (PEFT's init range), B (r, out) ~
    N(0, B_STD²), drawn as float32 from numpy's default_rng(seed) module by module in checkpoint
    order (each routed expert is a module of its own)."""
    rng = np.random.default_rng(seed)
    r = lora_spec(model).rank
    values = {}
    for name, mod in lora_modules(model).items():
        bound = 1.0 / np.sqrt(mod.in_features)
        a = rng.uniform(-bound, bound, (mod.in_features, r)).astype(np.float32)
        values[name] = (a, (B_STD * rng.standard_normal((r, mod.out_features))).astype(np.float32))
    set_adapter_values(model, values)


def adapted_fixture_model(name: str):
    """Fixture `name`'s base model loaded, with its spec's adapters set by `set_fixture_adapters`."""
    from model.checkpoint.hf import load_hf_checkpoint
    base, spec, seed = FIXTURES[name]
    model = load_hf_checkpoint(os.path.join(HF_FIXTURES, base))
    apply_lora(model, spec)
    set_fixture_adapters(model, seed)
    return model


def export(name: str, out_dir: str) -> None:
    """<out_dir>/adapter (PEFT folder) and <out_dir>/merged (save_hf_checkpoint of the merge)."""
    from model.checkpoint.hf import save_hf_checkpoint
    model = adapted_fixture_model(name)
    save_adapters(model, os.path.join(out_dir, "adapter"),
                  base_model_name_or_path=f"tests/fixtures/hf/{FIXTURES[name][0]}")
    merge_lora(model)
    save_hf_checkpoint(model, os.path.join(out_dir, "merged"))


def main(out_root: str, names: list[str] | None = None) -> None:
    unknown = sorted(set(names or ()) - set(FIXTURES))
    if unknown:
        sys.exit(f"unknown fixture(s) {unknown}; known: {sorted(FIXTURES)}")
    for name in names or FIXTURES:
        export(name, os.path.join(out_root, name))
        print(f"{name} -> {os.path.join(out_root, name)}")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python -m model.lora_fixtures OUT_ROOT [NAME ...]")
    main(sys.argv[1], sys.argv[2:])
