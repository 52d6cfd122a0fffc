"""`seekline plan`: the command line around planning/plan.py."""
import json

from pipelines.cli import EXIT_USER_ERROR, main


def test_plan_json_for_the_v3_preset(capsys):
    assert main(["plan", "deepseek-v3-671b", "--nodes", "32", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert round(out["params"]["total"] / 1e9) == 671
    assert round(out["params"]["activated"] / 1e9) == 37
    assert out["kv_cache"]["values/token/layer"] == 576
    assert out["profile"]["nodes"] == 32 and out["profile"]["gpu_memory_gb"] == 80
    assert out["parallelism"]["kind"] == "expert"


def test_plan_table_and_flags(capsys):
    assert main(["plan", "qwen2.5-0.5b", "--gpu", "h200", "--seq-len", "2048", "--micro-batch", "2",
                 "--gpus-per-node", "4"]) == 0
    out = capsys.readouterr().out
    assert "4 H200 (141 GB" in out and "seq_len 2048" in out and "micro-batch 2" in out
    assert "verdict:" in out and "plain data parallelism" in out


def test_plan_from_the_pipeline_config(capsys):
    """No MODEL: the config's pretrain.model sized by its tokenizer and packed rows."""
    assert main(["plan", "-c", "cluster", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"].startswith("small (pretrain.model of cluster)")
    assert out["profile"]["seq_len"] == 4096 and out["profile"]["micro_batch"] == 8
    assert out["profile"]["gpus_per_node"] == 8


def test_plan_bad_input_is_one_line(capsys):
    assert main(["plan", "deepseek-v3-671b", "--nodes", "0"]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.startswith("seekline: error: --nodes") and err.count("\n") == 1
    assert main(["plan", "no-such-model"]) == EXIT_USER_ERROR
    assert "no-such-model" in capsys.readouterr().err
    assert main(["plan", "qwen2.5-0.5b", "--mfu", "2"]) == EXIT_USER_ERROR
    assert "--mfu" in capsys.readouterr().err
