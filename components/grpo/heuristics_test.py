"""The heuristics on hand-written texts; every expected number is counted by hand from the
word lists and formulas in heuristics.py's docstring."""

import pytest

from components.grpo.heuristics import (
    FACTORIES,
    count_phrases,
    harmlessness_score,
    helpfulness_score,
    honesty_score,
    language_consistency_score,
    reasoning_quality_score,
    script_of,
    script_words,
)

PROMPT = "Explain how binary search works"
HELPFUL = ("Binary search works on a sorted list: compare the target with the middle element, then keep "
           "searching the half that can still contain it until the target is found.")


def test_count_phrases_whole_words_only():
    assert count_phrases("I may go. Maybe not. MAY!", ["may"]) == 2  # not inside "maybe"
    assert count_phrases("It is 100% done", ["100%"]) == 1
    assert count_phrases("I\u2019m not sure", ["i'm not sure"]) == 1  # curly apostrophe


def test_helpfulness_refusal_vs_answer():
    assert helpfulness_score(PROMPT, "I'm sorry, but I can't help with that.") == 0.0
    assert helpfulness_score(PROMPT, "As an AI, I cannot do this.") == 0.0
    assert helpfulness_score(PROMPT, "") == 0.0
    # 29 words ≥ 20 → substance 1; prompt content words {explain, binary, search, works}: 3 used → 0.75
    assert helpfulness_score(PROMPT, HELPFUL) == 0.5 * 1.0 + 0.5 * 0.75
    # 2 words → substance 2/20; uses "binary", "search" → relevance 2/4
    assert helpfulness_score(PROMPT, "binary search") == pytest.approx(0.5 * 0.1 + 0.5 * 0.5)
    assert helpfulness_score("", "binary search", min_words=2) == 1.0  # no content words: relevance 1


def test_harmlessness_hostile_content():
    assert harmlessness_score(HELPFUL) == 1.0
    assert harmlessness_score("That is a stupid question.") == 0.5
    assert harmlessness_score("You idiot, shut up.") == 0.0
    assert harmlessness_score("Kill the process with SIGTERM.") == 1.0  # "kill" alone is not on the list


def test_honesty_hedging_and_overclaiming():
    assert honesty_score("The capital of France is Paris.") == 0.5
    assert honesty_score("It is probably 5.") == 0.75
    assert honesty_score("I think it is probably 5, but I could be wrong.") == 1.0  # 3 hedges, capped at 2
    assert honesty_score("This definitely works, 100% guaranteed.") == 0.0
    assert honesty_score("It might work, but trust me.") == 0.5  # one of each


def test_language_consistency_mixed_language():
    assert language_consistency_score("Explain recursion", "Recursion is when a function calls itself.") == 1.0
    # 8 Latin words, 4 Han characters (each counts as a word in unspaced scripts)
    mixed = "Recursion is when a function calls itself, 递归 means 递归"
    assert language_consistency_score("Explain recursion", mixed) == 8 / 12
    assert language_consistency_score("解释递归", "递归是函数调用自身") == 1.0
    assert language_consistency_score("Объясни рекурсию", "Рекурсия is recursion") == 1 / 3
    assert language_consistency_score("3+4=", "7") is None  # nothing to judge
    assert language_consistency_score("Explain", "1 + 2") is None
    assert language_consistency_score("3+4=", "sieben", script="latin") == 1.0


def test_scripts():
    assert [script_of(c) for c in "aЖλ中あア한1"] == ["LATIN", "CYRILLIC", "GREEK", "CJK", "CJK", "CJK", "HANGUL", None]
    assert script_words("naïve café") == ["LATIN", "LATIN"]
    assert script_words("नमस्ते") == ["DEVANAGARI"]  # the vowel signs continue the word


def test_reasoning_quality_step_by_step():
    steps = ("First, add 2 and 3 to get 5. Then multiply by 4, because the question asks for the product. "
             "Therefore the answer is 20.")
    # steps {first, then} = 2 → 0.5·2/3; a reason (because) 0.25; a conclusion (therefore) 0.25
    assert reasoning_quality_score(steps) == pytest.approx(0.5 * 2 / 3 + 0.5)
    numbered = "1. Read the input.\n2. Sort it.\n3. Print the middle.\nSo the answer is the median."
    assert reasoning_quality_score(numbered) == 0.75  # 3 numbered steps, a conclusion, no reason
    assert reasoning_quality_score("20") == 0.0


def test_factories_make_reward_functions():
    prompts, completions = [PROMPT, PROMPT], [HELPFUL, "You idiot, shut up."]
    assert FACTORIES["harmlessness"]()(prompts, completions, kind=["x", "x"]) == [1.0, 0.0]
    assert FACTORIES["helpfulness"](min_words=10)(prompts, completions)[0] == 0.875
    assert FACTORIES["language_consistency"](script="cyrillic")(["x"], ["мир"]) == [1.0]
    for bad in ({"script": "latin-1"}, {"script": 3}):
        with pytest.raises(ValueError, match="script"):
            FACTORIES["language_consistency"](**bad)
