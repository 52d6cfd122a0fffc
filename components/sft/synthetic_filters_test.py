"""Quality filters and dedup on hand-written texts, each with its hand-decided keep/drop."""

import pytest

from components.common.errors import ConfigError
from components.sft.synthetic_filters import (
    Deduper,
    NearDupIndex,
    check_answer,
    check_instruction,
    clean_instruction,
    copy_fraction,
    python_blocks_parse,
    repeated_ngram_fraction,
    split_think,
    text_fraction,
)
from components.sft.synthetic_spec import SyntheticSpec

SPEC = SyntheticSpec(min_chars=5, max_chars=200, min_instruction_chars=10, max_instruction_chars=120,
                     repeat_ngram=3, max_repeat_ngram_fraction=0.3, min_text_fraction=0.9,
                     max_copy_fraction=0.8, near_dup_threshold=0.8)
CONTROLS = ("<|user|>", "<|assistant|>", "<|end_of_turn|>")
INSTR = "Write a function that reverses a string."


def test_repeated_ngram_fraction_by_hand():
    # trigrams: (the cat sat)(cat sat the)(sat the cat) x2 + (the cat sat): 7, 3 distinct -> 4/7
    assert repeated_ngram_fraction("The cat sat, the cat sat; the cat sat.", 3) == pytest.approx(4 / 7)
    assert repeated_ngram_fraction("a b c d", 3) == 0.0
    assert repeated_ngram_fraction("one two", 3) == 0.0     # fewer words than n


def test_text_fraction_by_hand():
    assert text_fraction("ab\x00\x01") == 0.5
    assert text_fraction("h\u00e9llo\n\tworld") == 1.0
    assert text_fraction("a\ufffd") == 0.5                  # what undecodable bytes become
    assert text_fraction("") == 0.0


def test_copy_fraction_by_hand():
    assert copy_fraction(INSTR, INSTR, 3) == 1.0
    # 14 words -> 12 distinct trigrams; 5 of them are the instruction's
    # (write a function)(a function that)(function that reverses)(that reverses a)(reverses a string)
    answer = "Sure. Write a function that reverses a string: def f(s): return s[::-1]"
    assert copy_fraction(answer, INSTR, 3) == pytest.approx(5 / 12)
    assert copy_fraction("Hello there", "hello, THERE", 3) == 1.0   # short: equal words
    assert copy_fraction("yes", "Is 7 prime? Answer yes or no.", 3) == 0.0


def test_python_blocks():
    assert python_blocks_parse("no code at all")
    assert python_blocks_parse("Here:\n```python\ndef f(s):\n    return s[::-1]\n```\ndone")
    assert not python_blocks_parse("```python\ndef f(:\n    pass\n```")
    assert not python_blocks_parse("```python\nx = 1\n")                 # never closed
    assert python_blocks_parse("```js\nfunction (\n```")                 # not python: not parsed
    assert python_blocks_parse("```\nnot python (\n```")
    assert not python_blocks_parse("```text\nok (\n```\nthen\n```py\nx = (\n```")
    assert python_blocks_parse("```python\ns = '\\d'\n```")              # SyntaxWarning only


def test_clean_instruction():
    assert clean_instruction("  6. Sort a list of words by length.\n") == "Sort a list of words by length."
    assert clean_instruction("3) Add two numbers.") == "Add two numbers."
    assert clean_instruction("- Explain recursion.") == "Explain recursion."
    assert clean_instruction("2.5 is a float; explain why.") == "2.5 is a float; explain why."
    assert clean_instruction("10 ways to sort") == "10 ways to sort"


def test_split_think():
    assert split_think("<think>add them</think>42") == ("add them", "42")
    assert split_think("  <think>\nadd\n</think>\n\n 42 ") == ("add", "42")
    assert split_think("<think> </think>42") is None                    # empty thought
    assert split_think("<think>add</think>  ") is None                  # empty answer
    assert split_think("<think>a</think>b</think>") is None
    assert split_think("so <think>a</think>b") is None                  # text before <think>
    assert split_think("<think>a b c") is None


@pytest.mark.parametrize("text,finish,want", [
    ("Explain how a hash map handles collisions.", "stop", None),
    ("   ", "stop", "empty"),
    ("Explain how a hash map handles collisions.", "length", "truncated"),
    ("Sort it.", "stop", "too_short"),                                   # 8 < 10 chars
    ("Explain " + "x" * 120, "stop", "too_long"),
    ("\x00\x01\x02\x03 hash map question", "stop", "non_text"),          # 4/22 non-printable
    ("?!?!?!?!?!?!?!", "stop", "non_text"),                               # no letter or digit
    ("Explain hash maps.<|user|>And more", "stop", "control_tokens"),
    ("explain this explain this explain this explain this", "stop", "repetition"),
    ("<think>Explain hash maps please</think>", "stop", "unexpected_think"),
])
def test_check_instruction(text, finish, want):
    assert check_instruction(text, finish, SPEC, CONTROLS) == want


GOOD_CODE = "Use slicing:\n```python\ndef rev(s):\n    return s[::-1]\n```"


@pytest.mark.parametrize("answer,reasoning,finish,want", [
    (GOOD_CODE, False, "stop", None),
    ("<think>Slicing with a negative step walks backwards.</think>\n" + GOOD_CODE, True, "stop", None),
    ("", False, "stop", "empty"),
    (GOOD_CODE, False, "length", "truncated"),
    ("Ok.", False, "stop", "too_short"),
    ("word " * 50, False, "stop", "too_long"),                           # 249 > 200 chars
    ("\ufffd\ufffd\ufffd s[::-1]", False, "stop", "non_text"),
    ("s[::-1]<|end_of_turn|><|user|>thanks", False, "stop", "control_tokens"),
    ("reverse it now " * 6, False, "stop", "repetition"),
    ("Just use slicing.", True, "stop", "bad_think_format"),             # no think block
    ("<think>slicing</think>", True, "stop", "bad_think_format"),        # no final answer
    ("<think>slicing</think> s[::-1]", False, "stop", "unexpected_think"),
    ("Write a function that reverses a string.", False, "stop", "copies_instruction"),
    ("<think>It asks to reverse.</think>Write a function that reverses a string", True, "stop",
     "copies_instruction"),
    ("Here:\n```python\ndef rev(s)\n    return s[::-1]\n```", False, "stop", "code_syntax"),
    ("Here:\n```python\ndef rev(s):\n    return s[::-1]\n", False, "stop", "code_syntax"),
])
def test_check_answer(answer, reasoning, finish, want):
    assert check_answer(INSTR, answer, reasoning, finish, SPEC, CONTROLS) == want


def test_truncated_answers_kept_when_allowed():
    spec = SyntheticSpec(min_chars=5, max_chars=200, allow_truncated=True)
    assert check_answer(INSTR, GOOD_CODE, False, "length", spec) is None


BASE = ("the committee met on tuesday to review the annual budget and decided to fund two new "
        "parks one library and a bicycle lane along the river before the end of the year")  # 32 words


def test_near_dup_index_exact_near_and_distinct():
    idx = NearDupIndex(SPEC)
    idx.add(BASE)
    assert idx.find(BASE.upper().replace(" ", "  ") + "!") == "exact"   # case/space/punct only
    # last word changed: 30 trigrams each, 29 shared -> Jaccard 29/31 = 0.94 >= 0.8
    assert idx.find(BASE.rsplit(" ", 1)[0] + " decade") == "near"
    # first 15 words kept, the rest replaced: 30 and 28 trigrams, 13 shared -> Jaccard 13/45 = 0.29
    other = " ".join(BASE.split()[:15]) + " but postponed every vote until the mayor returns from a long trip abroad next spring"
    assert idx.find(other) is None
    assert idx.find("completely unrelated words about sorting algorithms in python") is None


def test_deduper_eval_wins_and_whole_example_check():
    d = Deduper(SPEC)
    q = "What is the capital of France and why did it become the capital city?"
    d.add_instruction("real", q)
    d.add_instruction("eval", q)
    assert d.check(q) == "dup_eval_exact"                     # decontamination before real
    d.add_example("real", "Name a prime number.\n" + BASE)
    # a new instruction, but the whole example nearly copies a real one
    assert d.check("Give a prime number.") is None
    assert d.check("Give a prime number.", "Give a prime number.\n" + BASE) == "dup_real_near"
    assert d.check(full_text="Give a prime number.\n" + BASE) == "dup_real_near"
    assert d.check(full_text=q) is None                       # instructions are a separate index
    d.add_instruction("synthetic", "Sort a list of numbers in Python without using sorted().")
    assert d.check("sort a list of numbers in python, without using sorted") == "dup_synthetic_exact"


def test_spec_validation_names_the_field():
    with pytest.raises(ConfigError, match="'top_p'"):
        SyntheticSpec(top_p=0.0)
    with pytest.raises(ConfigError, match="'min_chars'"):
        SyntheticSpec(min_chars=10, max_chars=5)
    with pytest.raises(ConfigError, match="'lsh_bands'"):
        SyntheticSpec(num_perm=128, lsh_bands=7)
