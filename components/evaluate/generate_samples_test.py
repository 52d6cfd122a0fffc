"""Sampling n completions per problem with a tiny random model and a trained project tokenizer."""
import json

import pytest

from components.evaluate.generate_samples import (
    HUMAN_EVAL_STOP,
    extract_code,
    generate_samples,
    resolve_prompt_mode,
    truncate_at_stop,
)
from components.evaluate.problems import Problem

PROBLEMS = {
    "t/0": Problem("t/0", 'def add(a, b):\n    """Return the sum of a and b."""\n', "def check(c):\n    assert c(1, 2) == 3\n", "add"),
    "t/1": Problem("t/1", 'def rev(xs):\n    """Reverse a list."""\n', "def check(c):\n    assert c([1, 2]) == [2, 1]\n", "rev"),
    "t/2": Problem("t/2", "def sq(x):\n" + "    # " + "weather in Oslo " * 60 + "\n", "def check(c):\n    assert c(3) == 9\n", "sq"),
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from components.sft.testdata import seekline_tokenizer_dir
    from components.tokenizer.tokenizer import load, load_meta
    from model.config import ModelConfig
    from model.decoder import build_model

    root = tmp_path_factory.mktemp("gen")
    tok_dir = seekline_tokenizer_dir(str(root))
    meta = load_meta(tok_dir)
    hf = ModelConfig.load("tiny").to_hf_dict()
    hf.update(vocab_size=meta["vocab_size"], max_position_embeddings=128, rope_scaling=None, num_hidden_layers=1,
              first_k_dense_replace=1, num_nextn_predict_layers=0, bos_token_id=meta["bos_id"],
              eos_token_id=meta["eos_id"])
    model = build_model(ModelConfig.from_hf_dict(hf, source="test"), seed=0)
    return {"model": model, "tok": load(tok_dir), "tok_dir": tok_dir, "meta": meta}


def _run(world, **kw):
    args = dict(n=3, temperature=1.0, top_p=1.0, max_new_tokens=24, seed=5, batch_size=4, mode="completion",
                bos_id=world["meta"]["bos_id"], stop_ids=(world["meta"]["eos_id"],))
    args.update(kw)
    return generate_samples(world["model"], world["tok"], PROBLEMS, **args)


def test_n_samples_per_problem_deterministic_per_seed_and_cut_at_stops(world):
    samples, stats = _run(world)
    assert [s["task_id"] for s in samples] == ["t/0"] * 3 + ["t/1"] * 3 + ["t/2"] * 3
    assert all(set(s) == {"task_id", "completion"} and isinstance(s["completion"], str) for s in samples)
    assert stats.rows == 9 and stats.generate_calls == 3  # ceil(9 / batch_size 4)
    assert not any(stop in s["completion"] for s in samples for stop in HUMAN_EVAL_STOP)
    again, _ = _run(world)
    assert again == samples
    other, _ = _run(world, seed=6)
    assert other != samples
    # a random model at temperature 1 does not repeat itself across the n samples of one prompt
    assert len({s["completion"] for s in samples[:3]}) > 1
    # t/2's prompt (~hundreds of tokens) does not fit 128 - 24: its end is kept
    assert stats.prompts_truncated == 1


def test_greedy_samples_are_identical_within_a_problem(world):
    samples, _ = _run(world, temperature=0.0, n=2)
    assert samples[0] == samples[1] and samples[2] == samples[3]


def test_chat_mode_uses_the_template_and_extracts_code(world):
    from components.sft.chat_template import get_template

    template = get_template("seekline", world["tok_dir"])
    samples, stats = _run(world, mode="chat", template=template, n=1, bos_id=None)
    assert len(samples) == 3
    # a random model writes no fenced block: the raw answer is the completion
    assert stats.no_code_block == 3


def test_truncate_at_stop_takes_the_earliest_stop():
    text = "    return a + b\n\n\ndef other():\n    pass\n# trailing\n"
    assert truncate_at_stop(text) == "    return a + b\n\n"
    assert truncate_at_stop("    return 1\nprint(f())") == "    return 1"
    assert truncate_at_stop("    return 1") == "    return 1"
    assert truncate_at_stop("    x = 1\n    # inner comments are indented and kept\n") == \
        "    x = 1\n    # inner comments are indented and kept\n"


def test_extract_code_takes_the_first_python_block():
    answer = "Here it is:\n```python\ndef add(a, b):\n    return a + b\n```\nand\n```python\nx = 2\n```"
    assert extract_code(answer) == ("\ndef add(a, b):\n    return a + b\n", True)
    assert extract_code("```\nreturn 1\n```") == ("\nreturn 1\n", True)
    assert extract_code("    return a + b") == ("    return a + b", False)


def test_prompt_mode_follows_the_phase_file(tmp_path):
    sft, student, base = tmp_path / "sft", tmp_path / "student", tmp_path / "base"
    for d in (sft, student, base):
        d.mkdir()
    (sft / "seekline_phase.json").write_text(json.dumps({"phase": "sft", "chat_template": "seekline"}))
    (student / "seekline_phase.json").write_text(json.dumps({"phase": "distill"}))
    assert resolve_prompt_mode("auto", str(sft)) == ("chat", "seekline")
    assert resolve_prompt_mode("auto", str(base)) == ("completion", None)
    assert resolve_prompt_mode("auto", str(student)) == ("completion", None)
    assert resolve_prompt_mode("auto", str(student), inherit_template="seekline") == ("chat", "seekline")
    assert resolve_prompt_mode("completion", str(sft)) == ("completion", None)
    assert resolve_prompt_mode("chat", str(base)) == ("chat", "auto")
