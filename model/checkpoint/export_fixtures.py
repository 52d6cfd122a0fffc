"""Export every HF parity fixture through seekline, for transformers to load back.

    .venv/bin/python -m model.checkpoint.export_fixtures /tmp/seekline_exports
    .venv-ref/bin/python scripts/make_hf_fixtures.py --verify-export /tmp/seekline_exports

The second command (reference venv) loads each export with transformers, compares its logits to
the fixture's reference and records the result in tests/fixtures/hf/<name>/export_check.json,
which model/checkpoint/hf_test.py checks.
"""
from __future__ import annotations

import os
import sys

from model.checkpoint.hf import load_hf_checkpoint, save_hf_checkpoint

# The HF parity fixtures under tests/fixtures/hf (made by scripts/make_hf_fixtures.py).
FIXTURES = ["dsv3_qlora", "dsv3_plain_bf16_sharded", "dsv3_fp8", "dsv2_group_limited", "qwen2_gqa_tied"]


def main(out_root: str) -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    fixtures = os.path.join(os.path.dirname(os.path.dirname(here)), "tests", "fixtures", "hf")
    for name in FIXTURES:
        m = load_hf_checkpoint(os.path.join(fixtures, name))
        out = save_hf_checkpoint(m, os.path.join(out_root, name))
        print(f"{name} -> {out}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m model.checkpoint.export_fixtures OUT_ROOT")
    main(sys.argv[1])
