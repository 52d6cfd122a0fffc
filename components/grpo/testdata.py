"""A tiny model folder for the GRPO tests: a project BPE tokenizer trained on arithmetic lines and a
few small Python functions, and a randomly initialised tiny DeepSeek-V3 exported in HF layout."""
from __future__ import annotations

import os

from components.common.testdata import write_text_examples

CODE = [
    "def add(a, b):\n    \"\"\"Return the sum of a and b.\"\"\"\n    return a + b\n",
    "def is_even(n):\n    \"\"\"Return True if n is even.\"\"\"\n    return n % 2 == 0\n",
    "def reverse(s):\n    \"\"\"Return s reversed.\"\"\"\n    return s[::-1]\n",
    "def total(xs):\n    \"\"\"Return the sum of the list xs.\"\"\"\n    return sum(xs)\n",
]


def arithmetic_lines(max_operand: int = 20) -> list[str]:
    return [f"{a}{op}{b}={eval(f'{a}{op}{b}')}\n" for op in "+-*"  # noqa: S307 - literal digits and operators
            for a in range(max_operand + 1) for b in range(max_operand + 1)]


def grpo_model_dir(root: str, *, vocab_size: int = 600, seq: int = 128, seed: int = 0, layers: int = 2,
                   preset: str = "tiny", overrides: dict | None = None) -> str:
    """-> an HF-layout model folder (config, weights, tokenizer.json + tokenizer_meta.json)."""
    import json

    from components.pretrain.pretrain import export_final
    from components.tokenizer import tokenizer as tkz
    from configs.schema import TokenizerConfig
    from model.config import ModelConfig
    from model.decoder import build_model

    lines = arithmetic_lines()
    texts = ["".join(lines[i:i + 40]) for i in range(0, len(lines), 40)] + CODE * 5
    ex = os.path.join(root, "ex")
    write_text_examples(ex, {"train": texts, "eval": texts[:4]})
    tok = os.path.join(root, "tok")
    tkz.train_from_examples(ex, tok, TokenizerConfig(vocab_size=vocab_size, roundtrip_check_docs=5,
                                                     max_training_bytes=None, min_frequency=1))
    with open(os.path.join(tok, "tokenizer_meta.json"), encoding="utf-8") as f:
        meta = json.load(f)
    base = ModelConfig.load(preset).to_hf_dict()
    base.update(vocab_size=meta["vocab_size"], max_position_embeddings=seq, num_hidden_layers=layers,
                bos_token_id=meta["bos_id"], eos_token_id=meta["eos_id"])
    if base.get("model_type") == "deepseek_v3":
        base.update(rope_scaling=None, num_nextn_predict_layers=0)
    base.update(overrides or {})
    model = build_model(ModelConfig.from_hf_dict(base, source="test"), seed=seed)
    out = os.path.join(root, "base")
    export_final(model, out, tok, {})
    return os.path.join(out, "final")
