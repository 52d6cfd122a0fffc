import math
from fractions import Fraction

import numpy as np
import pytest

from common.errors import ConfigError
from components.grpo.rewards import (
    REGISTRY,
    RewardScores,
    RewardSpec,
    answers_match,
    build_rewards,
    extract_answer,
    parse_number,
    register,
)


def _fn(name, **params):
    return REGISTRY[name](**params)


# ---- exact_answer ----

@pytest.mark.parametrize("completion,want", [
    ("85\n", "85"),
    ("-3\nmore text 7", "-3"),
    ("The answer is 12.", "12"),
    ("\n  42 apples\n", "42"),
    ("3/4\n", "3/4"),
    ("\u22125\n", "-5"),  # unicode minus
    ("<think>2+2 is 4, not 5</think><answer> 4 </answer>", "4"),
    ("<answer>1</answer> wait <answer>2</answer>", "2"),  # the last one
    ("so \\boxed{\\frac{1}{2}} hmm \\boxed{7}", "7"),
    ("x \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),  # balanced braces
    ("no number here\n12", None),  # only the first line is looked at
    ("", None),
])
def test_extract_answer(completion, want):
    assert extract_answer(completion) == want


@pytest.mark.parametrize("text,want", [("85", Fraction(85)), ("-3", Fraction(-3)), ("0.5", Fraction(1, 2)),
                                       ("3/4", Fraction(3, 4)), ("1,000", Fraction(1000)), ("$12$", Fraction(12)),
                                       ("7.", Fraction(7)), ("1e3", Fraction(1000)), ("x", None), ("1/0", None),
                                       ("inf", None), ("1,00", None)])
def test_parse_number(text, want):
    assert parse_number(text) == want


def test_answers_match():
    assert answers_match("0.75", "3/4") and answers_match("+4", "4") and answers_match("4.0", "4")
    assert not answers_match("0.33", "1/3") and not answers_match("5", "4")
    assert answers_match("  Paris. ", "paris") and not answers_match("Paris", "London")


def test_exact_answer_reward():
    fn = _fn("exact_answer")
    got = fn(["2+2="] * 5, ["4\n", "5\n", "four", "<answer>4</answer>", "4"],
             kind=["math", "math", "math", "math", "code"], answer=["4", "4", "4", "4", None],
             completion_lengths=[1] * 5, truncated=[False] * 5)
    assert got == [1.0, 0.0, 0.0, 1.0, None]  # no number → 0.0 (scorable); a code task → None


# ---- format ----

def test_format_reward():
    fn = _fn("format")
    completions = [
        "<think>a\nb</think><answer>3</answer>",
        "  <think> x </think>\n\n<answer>3</answer>\n",
        "<think>x</think><answer>3</answer> trailing",
        "<answer>3</answer>",
        "<think>x</think>",
        "preamble <think>x</think><answer>3</answer>",
    ]
    assert fn([""] * 6, completions) == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    custom = _fn("format", pattern=r"Answer: \d+")
    assert custom(["", ""], ["Answer: 12", "Answer: 12!"]) == [1.0, 0.0]


# ---- length and truncated ----

def test_length_soft_overlong_hand_computed():
    # L_max = 10, L_cache = 4: free up to 6; 7 → (6 − 7)/4; 8 → −2/4; 10 → −4/4; beyond → −1
    fn = _fn("length", max_tokens=10, cache_tokens=4)
    lengths = [0, 6, 7, 8, 10, 11, 50]
    assert fn([""] * 7, [""] * 7, completion_lengths=lengths) == [0.0, 0.0, -0.25, -0.5, -1.0, -1.0, -1.0]


def test_length_linear_and_missing_field():
    fn = _fn("length", max_tokens=8, mode="linear")
    assert fn(["", ""], ["", ""], completion_lengths=[2, 8]) == [-0.25, -1.0]
    with pytest.raises(TypeError, match="completion_lengths"):
        fn([""], [""])


def test_truncated_reward():
    assert _fn("truncated")(["", ""], ["", ""], truncated=[True, False]) == [-1.0, 0.0]
    assert _fn("truncated", value=-0.5)([""], [""], truncated=[True]) == [-0.5]


# ---- registry and build_rewards ----

def test_the_registry_has_every_reward_of_the_issue():
    assert set(REGISTRY) >= {"code_tests", "exact_answer", "format", "length", "truncated", "helpfulness",
                             "harmlessness", "honesty", "language_consistency", "reasoning_quality"}
    with pytest.raises(ValueError, match="already registered"):
        register("format")(lambda: None)


def test_build_rewards_from_specs_and_dicts():
    rs = build_rewards([RewardSpec("exact_answer", 2.0), {"name": "length", "params": {"max_tokens": 4, "cache_tokens": 2}}])
    assert rs.names == ["exact_answer", "length"] and rs.weights == [2.0, 1.0]


@pytest.mark.parametrize("specs,message", [
    ([{"name": "nope"}], r"rewards\[0\]\.name: unknown reward function 'nope'; known: .*code_tests.*exact_answer"),
    ([{"name": "format"}, {"name": "format"}], r"rewards\[1\]\.name: 'format' is listed twice"),
    ([{"name": "format", "weight": float("nan")}], r"rewards\[0\]\.weight: must be a finite number"),
    ([{"name": "format", "weight": "1"}], r"rewards\[0\]\.weight"),
    ([{"name": "format", "wieght": 1}], r"rewards\[0\]: expected keys name, weight\?, params\?"),
    ([{"name": "format", "params": {"pattern": "("}}], r"rewards\[0\] \(format\)\.params: pattern: not a valid"),
    ([{"name": "exact_answer", "params": {"x": 1}}], r"rewards\[0\] \(exact_answer\)\.params: .*unexpected keyword"),
    ([{"name": "length"}], r"rewards\[0\] \(length\)\.params: .*max_tokens"),
    ([{"name": "length", "params": {"max_tokens": 4, "cache_tokens": 4}}], r"cache_tokens: mode soft_overlong"),
    ([{"name": "length", "params": {"max_tokens": 4, "mode": "cubic"}}], r"mode: must be one of"),
    ([{"name": "code_tests", "params": {"mode": "partial"}}], r"code_tests\.mode: must be one of fraction, binary"),
    ([{"name": "code_tests", "params": {"timeout_s": 0}}], r"code_tests\.timeout_s"),
    ([{"name": "helpfulness", "params": {"min_words": 0}}], r"min_words"),
    ([{"name": "truncated", "params": {"value": "x"}}], r"value: must be a finite number"),
    ([], r"at least one"),
])
def test_build_rewards_bad_config(specs, message):
    with pytest.raises(ConfigError, match=message):
        build_rewards(specs)


# ---- scoring ----

@pytest.fixture
def custom_rewards():
    """Registers test-only reward functions (fixed values, broken ones) and removes them after."""
    added = {
        "t_const": lambda: (lambda prompts, completions, **_: [1.0, 0.5, None, 0.0]),
        "t_other": lambda: (lambda prompts, completions, **_: [None, 2.0, None, 4.0]),
        "t_raises": lambda: (lambda prompts, completions, **_: 1 / 0),
        "t_short": lambda: (lambda prompts, completions, **_: [1.0]),
        "t_bad_values": lambda: (lambda prompts, completions, **_: [math.nan, "1", math.inf, True]),
        "t_array": lambda: (lambda prompts, completions, **_: np.array([1.0, 2.0, 3.0, 4.0])),
        "t_fields": lambda: (lambda prompts, completions, *, kind, truncated, **_:
                             [float(k == "math" and not t) for k, t in zip(kind, truncated, strict=True)]),
    }
    for name, factory in added.items():
        register(name)(factory)
    yield
    for name in added:
        del REGISTRY[name]


FIELDS = {"kind": ["math", "math", "code", "math"], "truncated": [False, True, False, False],
          "completion_lengths": [1, 2, 3, 4]}


def _score(specs):
    return build_rewards(specs).score(["p"] * 4, ["a", "b", "c", "d"], FIELDS)


def test_weighted_total_skips_unscored_functions(custom_rewards):
    s = _score([{"name": "t_const", "weight": 2.0}, {"name": "t_other", "weight": -0.5}])
    np.testing.assert_array_equal(s.per_function["t_const"], [1.0, 0.5, np.nan, 0.0])
    # 2·1 ; 2·0.5 − 0.5·2 ; nobody scored ; 2·0 − 0.5·4
    np.testing.assert_array_equal(s.total, [2.0, 0.0, np.nan, -2.0])
    assert s.errors == []
    summary = s.summary()
    assert summary["t_const"] == {"mean": 0.5, "std": pytest.approx(math.sqrt(1 / 6)), "scored": 3, "errors": 0}
    assert summary["t_other"] == {"mean": 3.0, "std": 1.0, "scored": 2, "errors": 0}
    assert summary["total"]["mean"] == 0.0 and summary["total"]["scored"] == 3


def test_fields_reach_the_functions(custom_rewards):
    s = _score([{"name": "t_fields"}])
    np.testing.assert_array_equal(s.total, [1.0, 0.0, 0.0, 1.0])


def test_broken_functions_are_recorded_never_raised(custom_rewards):
    s = _score([{"name": "t_const"}, {"name": "t_raises"}, {"name": "t_short"}, {"name": "t_bad_values"},
                {"name": "t_array"}])
    assert np.isnan(s.per_function["t_raises"]).all() and np.isnan(s.per_function["t_short"]).all()
    assert np.isnan(s.per_function["t_bad_values"]).all()
    np.testing.assert_array_equal(s.per_function["t_array"], [1.0, 2.0, 3.0, 4.0])  # numpy results are fine
    np.testing.assert_array_equal(s.total, [2.0, 2.5, 3.0, 4.0])  # the broken ones add nothing
    assert s.errors[0] == {"function": "t_raises", "index": None, "error": "ZeroDivisionError: division by zero"}
    assert s.errors[1] == {"function": "t_short", "index": None,
                           "error": "ValueError: returned 1 values for 4 completions"}
    assert [(e["function"], e["index"]) for e in s.errors[2:]] == [("t_bad_values", i) for i in range(4)]
    assert "got nan" in s.errors[2]["error"] and "got '1'" in s.errors[3]["error"]
    assert s.summary()["t_bad_values"] == {"mean": None, "std": None, "scored": 0, "errors": 4}
    assert s.summary()["total"]["errors"] == 6


def test_all_unscorable_gives_nan_total_not_zero():
    rs = build_rewards([{"name": "exact_answer"}])
    s = rs.score(["x"], ["1"], {"kind": ["code"], "answer": [None]})
    assert math.isnan(s.total[0]) and s.summary()["total"] == {"mean": None, "std": None, "scored": 0, "errors": 0}


def test_misaligned_columns_are_a_caller_error():
    rs = build_rewards([{"name": "format"}])
    with pytest.raises(ValueError, match="2 completions but 1 prompts"):
        rs.score(["p"], ["a", "b"], {})
    with pytest.raises(ValueError, match="field lengths {'kind': 1}"):
        rs.score(["p", "q"], ["a", "b"], {"kind": ["math"]})


def test_scores_is_a_plain_record():
    s = RewardScores({"f": np.array([1.0])}, np.array([1.0]), [])
    assert s.summary() == {"f": {"mean": 1.0, "std": 0.0, "scored": 1, "errors": 0},
                           "total": {"mean": 1.0, "std": 0.0, "scored": 1, "errors": 0}}
