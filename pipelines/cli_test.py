"""CLI wiring that needs no pipeline run (the end-to-end CLI tests are in tests/)."""

import json
from pathlib import Path

import pytest

from pipelines.cli import build_parser, main


def test_every_command_parses_with_help(capsys):
    for argv in (["run"], ["compile"], ["deploy"], ["schedule"], ["runs"], ["model", "params"], ["model", "import"]):
        with pytest.raises(SystemExit) as e:
            build_parser().parse_args([*argv, "--help"])
        assert e.value.code == 0
        assert "usage: seekline" in capsys.readouterr().out


def test_model_params_prints_the_official_671b_count(capsys):
    # 671,026,404,352: transformers' count of DeepSeek-V3 without MTP (shared/reference).
    assert main(["model", "params", "deepseek-v3-671b"]) == 0
    assert "671,026,404,352" in capsys.readouterr().out


def test_model_params_reads_a_config_json(tmp_path, capsys):
    # Qwen2-0.5B shape with tied embeddings: 494,032,768 parameters (the published count).
    cfg = {
        "model_type": "qwen2", "vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864,
        "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
        "max_position_embeddings": 32768, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
        "tie_word_embeddings": True, "hidden_act": "silu",
    }
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert main(["model", "params", str(tmp_path / "config.json")]) == 0
    assert "494,032,768" in capsys.readouterr().out


def test_model_input_errors_are_one_line(tmp_path, capsys):
    assert main(["model", "params", str(tmp_path / "missing.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("seekline: error:") and "missing.json" in err
    assert main(["model", "import", str(tmp_path), str(tmp_path / "out")]) == 2
    assert "seekline: error:" in capsys.readouterr().err


def test_model_import_of_an_fp8_checkpoint_keeps_transformers_logits(tmp_path, capsys):
    # The fixture's reference logits come from transformers on the same (dequantised) weights.
    import numpy as np

    import model

    fixture = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "hf" / "dsv3_fp8"
    out = tmp_path / "imported"
    assert main(["model", "import", str(fixture), str(out), "--dtype", "float32"]) == 0
    assert json.loads((out / "seekline.json").read_text())["dtype"] == "float32"
    ref = np.load(fixture / "reference.npz")
    logits = model.load_hf_checkpoint(str(out))(ref["input_ids"]).numpy()
    assert np.abs(logits - ref["logits"]).max() < 1e-4
