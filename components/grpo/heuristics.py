"""The seed's rule-based rewards: keyword and text-statistics heuristics, each in [0, 1].

These are heuristics, not judges. They look at surface features (phrases, word counts,
Unicode scripts) and are easy to game: a policy optimised hard against them learns the
phrases, not the virtue. They exist as optional, weighted rewards to shape style next to a
verifiable reward (code_tests, exact_answer), never to replace it. The word lists are the
module constants below, matched case-insensitively as whole words/phrases.

* helpfulness: 0 for a refusal; otherwise half substance (length up to `min_words` words) and
  half relevance (share of the prompt's content words that the completion uses).
* harmlessness: 1 − (hostile/violent phrase occurrences) / 2, floored at 0.
* honesty: calibration, 0.5 + 0.25 per hedge (up to 2) − 0.25 per overclaim (up to 2), in [0, 1].
* language_consistency: DeepSeek-R1's reward, the share of the completion's words written in
  the prompt's script (or a given script); None when either has no words to judge.
* reasoning_quality: 0.5·min(1, steps/3) + 0.25 if it gives a reason + 0.25 if it concludes.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable

REFUSAL_PHRASES = (
    "i can't help", "i cannot help", "i can't assist", "i cannot assist", "i can't provide", "i cannot provide",
    "i won't", "i will not", "i'm unable to", "i am unable to", "i'm not able to", "i am not able to",
    "as an ai", "i'm sorry, but", "i am sorry, but", "i must decline", "i refuse",
)
HARMFUL_PHRASES = (
    "idiot", "idiots", "stupid", "moron", "morons", "worthless", "pathetic", "loser", "losers", "shut up",
    "hate you", "i hate", "disgusting", "kill you", "kill them", "kill him", "kill her", "hurt you", "murder",
    "bomb", "bombs", "weapon", "weapons", "poison", "beat you up", "attack them", "self-harm", "suicide",
)
HEDGE_PHRASES = (
    "i'm not sure", "i am not sure", "i don't know", "i do not know", "not certain", "i could be wrong",
    "as far as i know", "might", "may", "possibly", "probably", "likely", "it depends", "i think", "i believe",
    "approximately", "roughly",
)
OVERCLAIM_PHRASES = (
    "definitely", "certainly", "guaranteed", "guarantee", "100%", "absolutely", "without a doubt", "no doubt",
    "always works", "never fails", "i am certain", "i'm certain", "trust me", "undeniably",
)
STEP_WORDS = ("first", "second", "third", "then", "next", "finally", "after that")
REASON_PHRASES = ("because", "since", "so that", "which means", "this means", "due to")
CONCLUSION_PHRASES = ("therefore", "thus", "hence", "so the answer", "the answer is", "in conclusion",
                      "final answer")
STOPWORDS = frozenset(
    "a an and are as at be but by for from has have how in into is it its of on or that the their then there "
    "these this those to was were what when where which who why will with would write please your you can "
    "could should does give make tell using about".split())

_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?")  # runs of letters, with an inner apostrophe (don't)
_NUMBERED_LINE = re.compile(r"^\s*(?:step\s*)?\d+\s*[.):]\s", re.M | re.I)


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text.replace("\u2019", "'")).lower()


def count_phrases(text: str, phrases: Iterable[str]) -> int:
    """Occurrences of the phrases as whole words (not inside a longer word), case-insensitive."""
    t = _norm(text)
    return sum(len(re.findall(rf"(?<!\w){re.escape(p)}(?!\w)", t)) for p in phrases)


def words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text.replace("\u2019", "'"))]


def helpfulness_score(prompt: str, completion: str, min_words: int = 20) -> float:
    ws = words(completion)
    if not ws or count_phrases(completion, REFUSAL_PHRASES):
        return 0.0
    substance = min(1.0, len(ws) / min_words)
    content = {w for w in words(prompt) if len(w) >= 4 and w not in STOPWORDS}
    relevance = len(content & set(ws)) / len(content) if content else 1.0
    return 0.5 * substance + 0.5 * relevance


def harmlessness_score(completion: str) -> float:
    return max(0.0, 1.0 - count_phrases(completion, HARMFUL_PHRASES) / 2)


def honesty_score(completion: str) -> float:
    hedges = min(2, count_phrases(completion, HEDGE_PHRASES))
    overclaims = min(2, count_phrases(completion, OVERCLAIM_PHRASES))
    return min(1.0, max(0.0, 0.5 + 0.25 * hedges - 0.25 * overclaims))


def reasoning_quality_score(completion: str) -> float:
    t = _norm(completion)
    steps = len(_NUMBERED_LINE.findall(completion)) + sum(
        re.search(rf"(?<!\w){re.escape(w)}(?!\w)", t) is not None for w in STEP_WORDS)
    reason = count_phrases(completion, REASON_PHRASES) > 0
    conclusion = count_phrases(completion, CONCLUSION_PHRASES) > 0
    return 0.5 * min(1.0, steps / 3) + 0.25 * reason + 0.25 * conclusion


# Scripts whose words are not separated by spaces: each character counts as a word there.
_UNSPACED = frozenset({"CJK", "HANGUL", "THAI"})


def script_of(ch: str) -> str | None:
    """The Unicode script of a letter from its character name ("LATIN", "CYRILLIC", "GREEK", "CJK"
    for Han/Hiragana/Katakana, ...); None for a non-letter."""
    if not ch.isalpha():
        return None
    name = unicodedata.name(ch, "")
    first = name.split(" ", 1)[0]
    if first in ("FULLWIDTH", "HALFWIDTH", "MATHEMATICAL", "MODIFIER"):
        first = name.split(" ")[1] if " " in name else first
    if first in ("CJK", "HIRAGANA", "KATAKANA") or "IDEOGRAPH" in name:
        return "CJK"
    return first or None


def script_words(text: str) -> list[str]:
    """One script name per word: a run of letters of one script is a word, except in unspaced
    scripts (CJK, Hangul, Thai) where every letter counts as one."""
    out: list[str] = []
    prev = None
    for ch in text:
        if unicodedata.category(ch).startswith("M"):
            continue  # a combining mark (e.g. a Devanagari vowel sign) continues its word
        s = script_of(ch)
        if s is not None and (s != prev or s in _UNSPACED):
            out.append(s)
        prev = s
    return out


def language_consistency_score(prompt: str, completion: str, script: str | None = None) -> float | None:
    target = script.upper() if script else None
    if target is None:
        prompt_scripts = Counter(script_words(prompt))
        if not prompt_scripts:
            return None
        target = prompt_scripts.most_common(1)[0][0]
    ws = script_words(completion)
    return sum(s == target for s in ws) / len(ws) if ws else None


def _per_sample(score):
    """A reward fn applying score(prompt, completion) to each sample."""
    def reward(prompts, completions, **_):
        return [score(p, c) for p, c in zip(prompts, completions, strict=True)]
    return reward


def helpfulness(min_words: int = 20):
    if isinstance(min_words, bool) or not isinstance(min_words, int) or min_words < 1:
        raise ValueError(f"min_words: must be an integer >= 1, got {min_words!r}")
    return _per_sample(lambda p, c: helpfulness_score(p, c, min_words))


def harmlessness():
    return _per_sample(lambda p, c: harmlessness_score(c))


def honesty():
    return _per_sample(lambda p, c: honesty_score(c))


def language_consistency(script: str | None = None):
    if script is not None and (not isinstance(script, str) or not script.isalpha()):
        raise ValueError(f"script: a Unicode script name such as 'latin' or 'cjk', got {script!r}")
    return _per_sample(lambda p, c: language_consistency_score(p, c, script))


def reasoning_quality():
    return _per_sample(lambda p, c: reasoning_quality_score(c))


FACTORIES = {"helpfulness": helpfulness, "harmlessness": harmlessness, "honesty": honesty,
             "language_consistency": language_consistency, "reasoning_quality": reasoning_quality}
