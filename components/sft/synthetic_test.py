"""Synthetic SFT data: prompts, mixing by hand-computed counts, JSONL, and the generation plumbing
with a real tiny seekline model (random weights) behind the seekline chat template and a
tokenizer trained here with the project's special tokens."""

import gzip
import json

import numpy as np
import pytest

from common.errors import InputDataError
from components.sft import prompts
from components.sft.chat_template import get_template
from components.sft.formats import Conversation, Message, read_sft_file
from components.sft.synthetic import (
    SOURCE_INSTRUCTION,
    SOURCE_REASONING,
    SyntheticSpec,
    control_tokens,
    generate_synthetic,
    mix,
    write_jsonl,
)
from components.sft.synthetic_filters import check_answer, check_instruction, clean_instruction
from components.tokenizer import tokenizer as tkz
from configs.schema import TokenizerConfig
from model.config import ModelConfig
from model.decoder import build_model
from model.generation import GenerationConfig, generate

SEEDS = ["Write a Python function that returns the largest of three numbers.",
         "Explain the difference between a list and a tuple in Python.",
         "Summarise the causes of the French revolution in three sentences.",
         "Give an example of a recursive function and explain how it ends.",
         "How do I read a CSV file with the standard library?"]
REAL = [Conversation((Message("user", s), Message("assistant", f"Answer {i}: it depends.")), f"real.jsonl:{i + 1}")
        for i, s in enumerate(SEEDS)]


def _conv(tag: str) -> Conversation:
    return Conversation((Message("user", f"q {tag}"), Message("assistant", f"a {tag}")), tag)


# ----------------------------------------------------------------------------- prompts

def test_instruction_prompt_lists_the_seeds_numbered():
    msgs = prompts.instruction_messages(["Sort a list.", "  Add two numbers. "])
    assert [m.role for m in msgs] == ["system", "user"]
    assert msgs[1].content == (
        "Here are some example tasks:\n\n1. Sort a list.\n2. Add two numbers.\n\n"
        "Write one new task that is different from all of these but in the same spirit. "
        "Reply with the task only, without numbering, answer or commentary.")
    assert prompts.reasoning_messages("Q")[1] == Message("user", "Q")
    assert "<think> ... </think>" in prompts.reasoning_messages("Q")[0].content
    with pytest.raises(ValueError):
        prompts.instruction_messages([])


# ----------------------------------------------------------------------------- mixing

def test_mix_counts_by_hand():
    real = [_conv(f"r{i}") for i in range(6)]
    syn = [_conv(f"s{i}") for i in range(10)]
    # ratio 0.25 with 6 real: 0.25 * 6 / 0.75 = 2 synthetic -> 2 / 8 = 0.25
    out, rep = mix(real, syn, 0.25, seed=1)
    assert len(out) == 8 and sum(c.source.startswith("s") for c in out) == 2
    assert {c.source for c in out} >= {f"r{i}" for i in range(6)}
    assert rep["synthetic_wanted"] == 2 and rep["synthetic_used"] == 2 and rep["ratio_achieved"] == 0.25
    # ratio 0.4 with 6 real: 0.4 * 6 / 0.6 = 4 -> 4 / 10
    out, rep = mix(real, syn, 0.4, seed=1)
    assert (len(out), rep["synthetic_used"], rep["ratio_achieved"]) == (10, 4, 0.4)
    # ratio 0.2 with 10 real: 0.2 * 10 / 0.8 = 2.5 -> rounds half up to 3; 3 / 13
    out, rep = mix([_conv(f"r{i}") for i in range(10)], syn, 0.2, seed=1)
    assert rep["synthetic_used"] == 3 and rep["ratio_achieved"] == pytest.approx(3 / 13)


def test_mix_too_few_synthetic_uses_all_and_reports_the_achieved_ratio():
    real = [_conv(f"r{i}") for i in range(6)]
    syn = [_conv(f"s{i}") for i in range(3)]
    out, rep = mix(real, syn, 0.5, seed=0)          # wants 6, has 3: nothing repeated
    assert sorted(c.source for c in out) == sorted([f"r{i}" for i in range(6)] + ["s0", "s1", "s2"])
    assert rep["synthetic_wanted"] == 6 and rep["synthetic_used"] == 3
    assert rep["ratio_achieved"] == pytest.approx(3 / 9)


def test_mix_ends_and_determinism():
    real = [_conv(f"r{i}") for i in range(5)]
    syn = [_conv(f"s{i}") for i in range(4)]
    out, rep = mix(real, syn, 0.0, seed=3)
    assert sorted(c.source for c in out) == [f"r{i}" for i in range(5)] and rep["ratio_achieved"] == 0.0
    out, rep = mix(real, syn, 1.0, seed=3)
    assert sorted(c.source for c in out) == [f"s{i}" for i in range(4)] and rep["ratio_achieved"] == 1.0
    a, _ = mix(real, syn, 0.3, seed=7)
    assert a == mix(real, syn, 0.3, seed=7)[0]                       # same seed, same list
    assert [c.source for c in a] != [c.source for c in mix(real, syn, 0.3, seed=8)[0]]
    with pytest.raises(ValueError, match="ratio"):
        mix(real, syn, 1.5, seed=0)


def test_write_jsonl_reads_back(tmp_path):
    convs = [Conversation((Message("user", "Why?"), Message("assistant", "<think>hm</think>Because \u00e9.")),
                          SOURCE_REASONING), _conv("x")]
    for name in ("synthetic.jsonl", "synthetic.jsonl.gz"):
        path = str(tmp_path / name)
        assert write_jsonl(path, convs) == 2
        back, counts, bad = read_sft_file(path)
        assert [c.messages for c in back] == [c.messages for c in convs] and not bad
        opener = gzip.open if name.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as f:
            assert [json.loads(line)["source"] for line in f] == [SOURCE_REASONING, "x"]


# ----------------------------------------------------------------------------- generation

@pytest.fixture(scope="module")
def template():
    texts = SEEDS + [prompts.INSTRUCTION_SYSTEM, prompts.INSTRUCTION_USER, prompts.ANSWER_SYSTEM,
                     prompts.REASONING_SYSTEM]
    tok = tkz.train(texts * 3, TokenizerConfig(vocab_size=400, min_frequency=1))
    return get_template("seekline", tok)


@pytest.fixture(scope="module")
def teacher(template):
    cfg = ModelConfig.from_preset("tiny").replace(vocab_size=template.tokenizer.get_vocab_size())
    return build_model(cfg, seed=0)


# Filters loose enough that random-weight text can pass (truncation, byte soup, repeats allowed);
# the control-token, think-format, copy and dedup rules still apply.
LAX = SyntheticSpec(num_examples=4, reasoning_fraction=0.5, max_new_tokens=8, max_instruction_tokens=8,
                    temperature=1.0, top_p=1.0, seed=5, batch_size=4, max_attempts_factor=3,
                    min_chars=1, min_instruction_chars=1, allow_truncated=True,
                    max_repeat_ngram_fraction=1.0, min_text_fraction=0.0, max_copy_fraction=1.0)


def _check_accounting(rep):
    """Every prompt and every output is accounted for by exactly one outcome."""
    di, de = rep["dropped_instructions"], rep["dropped_examples"]
    assert rep["instruction_prompts"] == rep["instructions_generated"] + di.get("prompt_too_long", 0)
    accepted = rep["instructions_generated"] - sum(v for k, v in di.items() if k != "prompt_too_long")
    assert accepted == rep["unused_instructions"] + rep["answers_generated"] + de.get("prompt_too_long", 0)
    assert rep["answers_generated"] == rep["kept"] + sum(v for k, v in de.items() if k != "prompt_too_long")
    assert rep["kept"] == sum(rep["kept_by_kind"].values()) and rep["shortfall"] == rep["requested"] - rep["kept"]


def test_generation_plumbing_counts_filters_and_determinism(teacher, template):
    convs, rep = generate_synthetic(teacher, template, REAL, spec=LAX)
    _check_accounting(rep)
    assert rep["quota_by_kind"] == {"instruction": 2, "reasoning": 2}
    assert rep["instruction_prompts"] <= 3 * 4 and rep["teacher_calls"] >= 2
    assert 0 < rep["kept"] <= 4
    for kind in ("instruction", "reasoning"):
        assert rep["kept_by_kind"][kind] <= 2
    controls = control_tokens(template.tokenizer)
    assert "<|user|>" in controls and "<think>" not in controls
    for c in convs:                                   # what is kept passed the filters
        user, answer = c.messages[0].content, c.messages[1].content
        assert [m.role for m in c.messages] == ["user", "assistant"]
        assert c.source in (SOURCE_INSTRUCTION, SOURCE_REASONING)
        reasoning = c.source == SOURCE_REASONING
        assert check_instruction(user, "stop", LAX, controls) is None
        assert check_answer(user, answer, reasoning, "stop", LAX, controls) is None
        assert answer.startswith("<think>") == reasoning    # the forced opening
        template.encode(c)                                  # and encodes for SFT
    assert len({c.messages[0].content for c in convs}) == len(convs)
    again, rep2 = generate_synthetic(teacher, template, REAL, spec=LAX)
    assert again == convs and rep2 == rep
    other, _ = generate_synthetic(teacher, template, REAL, spec=SyntheticSpec(**{**rep["spec"], "seed": 6}))
    assert [c.messages for c in other] != [c.messages for c in convs]


def test_default_filters_drop_random_text_with_reasons(teacher, template):
    spec = SyntheticSpec(num_examples=2, max_new_tokens=8, max_instruction_tokens=8, temperature=1.0,
                         top_p=1.0, batch_size=4, max_attempts_factor=2, seed=1)
    convs, rep = generate_synthetic(teacher, template, REAL, spec=spec)
    _check_accounting(rep)
    assert convs == [] and rep["shortfall"] == 2 and rep["instruction_prompts"] == 4
    # 8 random tokens: cut at max_new_tokens (truncated) unless a stop token came first
    assert rep["dropped_instructions"].get("truncated", 0) > 0
    assert sum(rep["dropped_instructions"].values()) == 4


def _greedy_without_specials(teacher, template, seed_text):
    """Zero the head columns of every special token (their logit is then 0 while about half of
    the others are positive, so greedy never picks one) and return the greedy instruction for the
    one-seed prompt, decoded, plus the saved kernel to restore."""
    head = teacher.lm_head.kernel
    saved = head.numpy()
    specials = list(template.tokenizer.get_added_tokens_decoder())
    k = saved.copy()
    k[:, specials] = 0.0
    head.assign(k)
    ids = template.encode_prompt(prompts.instruction_messages([seed_text]))
    res = generate(teacher, [ids], GenerationConfig(max_new_tokens=8))
    return res.sequences[0], saved


GREEDY = SyntheticSpec(**{**LAX.__dict__, "temperature": 0.0, "num_examples": 2, "batch_size": 2,
                          "max_attempts_factor": 1, "seeds_per_prompt": 1})


def test_identical_prompts_are_deduplicated_and_eval_copies_dropped(teacher, template):
    """One seed + greedy decoding: every instruction prompt is the same, so is every output."""
    real = REAL[:1]
    first, saved = _greedy_without_specials(teacher, template, SEEDS[0])
    try:
        text = clean_instruction(template.tokenizer.decode(first, skip_special_tokens=False))
        assert check_instruction(text, "length", GREEDY) is None      # a usable instruction
        _, rep = generate_synthetic(teacher, template, real, spec=GREEDY)
        assert rep["instructions_generated"] == 2
        assert rep["dropped_instructions"] == {"dup_synthetic_exact": 1}
        # the same instruction in the eval data: decontaminated before anything is answered
        evals = [Conversation((Message("user", text), Message("assistant", "x")), "eval:1")]
        convs, rep = generate_synthetic(teacher, template, real, spec=GREEDY, eval_convs=evals)
        assert convs == [] and rep["dropped_instructions"] == {"dup_eval_exact": 2}
        assert rep["answers_generated"] == 0
    finally:
        teacher.lm_head.kernel.assign(saved)


def test_generation_stops_at_the_template_stop_ids(teacher, template):
    """Swap the head columns of the greedy first token and <|end_of_turn|>: the teacher now ends
    its turn at once. Stopped there, the instruction is empty; had the stop id not been passed,
    the text would hold '<|end_of_turn|>' (dropped as control_tokens, not as empty)."""
    first, saved = _greedy_without_specials(teacher, template, SEEDS[0])
    try:
        stop = template.tokenizer.token_to_id("<|end_of_turn|>")
        assert stop in template.stop_ids
        k = teacher.lm_head.kernel.numpy()
        k[:, [first[0], stop]] = k[:, [stop, first[0]]]
        teacher.lm_head.kernel.assign(k)
        convs, rep = generate_synthetic(teacher, template, REAL[:1], spec=GREEDY)
        assert convs == [] and rep["dropped_instructions"] == {"empty": 2}
    finally:
        teacher.lm_head.kernel.assign(saved)


def test_no_usable_seed_instruction_is_a_clear_error(teacher, template):
    empty_user = [Conversation((Message("user", "  "), Message("assistant", "ok")), "real.jsonl:1")]
    with pytest.raises(InputDataError, match="seed instruction"):
        generate_synthetic(teacher, template, empty_user, spec=LAX)


def test_reasoning_quota_rounds_half_up():
    from components.sft.synthetic import _assign_kinds, _quota
    assert _quota(SyntheticSpec(num_examples=5, reasoning_fraction=0.5)) == {"instruction": 2, "reasoning": 3}
    assert _quota(SyntheticSpec(num_examples=4, reasoning_fraction=0.0)) == {"instruction": 4, "reasoning": 0}
    # larger remaining need first, ties to plain; None once both are covered
    assert _assign_kinds(4, {"instruction": 1, "reasoning": 2}) == ["reasoning", "instruction", "reasoning", None]
    assert np.array_equal(_assign_kinds(2, {"instruction": 0, "reasoning": 0}), [None, None])
