"""Quality filters and dedup/decontamination for teacher-written SFT examples.

Each check returns the name of the first rule a text breaks (the reason the report counts) or
None when it passes. The rules, in the order they are checked:

  empty              nothing but whitespace
  truncated          generation hit max_new_tokens (finish_reason "length"), unless allowed
  too_short/too_long stripped length outside [min, max] characters
  non_text           under min_text_fraction of the characters are printable text (U+FFFD,
                     what invalid UTF-8 bytes decode to, counts as non-text), or no letter/digit
  control_tokens     a chat control token (role header, end of turn, tool markers) inside the
                     text: the teacher ran past its turn
  repetition         fraction of repeated word n-grams above max_repeat_ngram_fraction
  unexpected_think   think markers in an instruction or in a plain (non-reasoning) answer
  bad_think_format   a reasoning answer that is not exactly <think>thought</think>answer with a
                     non-empty thought and a non-empty answer
  copies_instruction the (final) answer merely repeats the instruction
  code_syntax        a ```python block that ast.parse rejects (or that is never closed)

Repetition: the text's words (``\\w+`` runs, lowercased, as MinHash shingles them) form
n-grams g_1..g_m; the repeated fraction is (m - #distinct) / m, the share of n-grams that repeat
an earlier one (0 when there are fewer than n words).

Copy: with A the answer's distinct word n-grams and I the instruction's, the answer copies when
|A ∩ I| / |A| >= max_copy_fraction; an answer shorter than n words copies only when its words
equal the instruction's.
"""

from __future__ import annotations

import ast
import hashlib
import re
import warnings
from collections.abc import Iterable, Sequence

import numpy as np

from components.ingest import minhash
from components.sft.synthetic_spec import SyntheticSpec

# Reasoning markers: special tokens of the seekline tokenizer (configs.schema.DEFAULT_SPECIAL_TOKENS).
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

_WORD = re.compile(r"\w+")
_THINK = re.compile(r"\A\s*" + re.escape(THINK_OPEN) + r"(.*?)" + re.escape(THINK_CLOSE) + r"(.*)\Z", re.S)
_FENCE = re.compile(r"^\s*```\s*([^\s`]*)")
_PYTHON_LANGS = {"python", "py", "python3"}


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _ngrams(ws: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(ws[i:i + n]) for i in range(len(ws) - n + 1)]


def repeated_ngram_fraction(text: str, n: int) -> float:
    """Share of the text's word n-grams that repeat an earlier one (0 below n words)."""
    grams = _ngrams(words(text), n)
    if not grams:
        return 0.0
    return (len(grams) - len(set(grams))) / len(grams)


def text_fraction(text: str) -> float:
    """Share of characters that are printable text (whitespace included, U+FFFD excluded)."""
    if not text:
        return 0.0
    ok = sum(1 for c in text if (c.isprintable() or c in "\n\t\r") and c != "\ufffd")
    return ok / len(text)


def copy_fraction(answer: str, instruction: str, n: int) -> float:
    """Share of the answer's distinct word n-grams that also occur in the instruction.

    Answers shorter than n words: 1.0 when their words equal the instruction's, else 0.0.
    """
    aw, iw = words(answer), words(instruction)
    a = set(_ngrams(aw, n))
    if not a:
        return 1.0 if aw and aw == iw else 0.0
    return len(a & set(_ngrams(iw, n))) / len(a)


def python_blocks(text: str) -> list[tuple[str, bool]]:
    """(code, closed) for each fenced ```python / ```py / ```python3 block, in order."""
    blocks, lang, body = [], None, []
    for line in text.splitlines():
        m = _FENCE.match(line)
        if m is None:
            if lang is not None:
                body.append(line)
            continue
        if lang is None:                       # an opening fence (any language)
            lang, body = m.group(1).lower(), []
        else:                                  # the closing fence
            if lang in _PYTHON_LANGS:
                blocks.append(("\n".join(body), True))
            lang = None
    if lang in _PYTHON_LANGS:
        blocks.append(("\n".join(body), False))
    return blocks


def python_blocks_parse(text: str) -> bool:
    """True when every ```python block is closed and parses with ast (no block: True)."""
    for code, closed in python_blocks(text):
        if not closed:
            return False
        try:
            with warnings.catch_warnings():        # e.g. invalid escape SyntaxWarnings
                warnings.simplefilter("ignore")
                ast.parse(code)
        except (SyntaxError, ValueError):          # ValueError: null bytes in the source
            return False
    return True


def split_think(text: str) -> tuple[str, str] | None:
    """(thought, answer) of a well-formed '<think>thought</think>answer' text, else None."""
    if text.count(THINK_OPEN) != 1 or text.count(THINK_CLOSE) != 1:
        return None
    m = _THINK.match(text)
    if m is None or not m.group(1).strip() or not m.group(2).strip():
        return None
    return m.group(1).strip(), m.group(2).strip()


_NUMBERING = re.compile(r"\A\s*(?:\d+\s*[.):]|[-*])\s+")


def clean_instruction(text: str) -> str:
    """A generated instruction, stripped, without a leading list marker ("6. ", "3) ", "- "):
    the prompt shows the seeds as a numbered list and a teacher often continues it."""
    return _NUMBERING.sub("", text.strip(), count=1).strip()


def _common(text: str, finish_reason: str, lo: int, hi: int, spec: SyntheticSpec,
            control_tokens: Iterable[str]) -> str | None:
    t = text.strip()
    if not t:
        return "empty"
    if finish_reason == "length" and not spec.allow_truncated:
        return "truncated"
    if len(t) < lo:
        return "too_short"
    if len(t) > hi:
        return "too_long"
    if text_fraction(t) < spec.min_text_fraction or not any(c.isalnum() for c in t):
        return "non_text"
    if any(c in t for c in control_tokens):
        return "control_tokens"
    if repeated_ngram_fraction(t, spec.repeat_ngram) > spec.max_repeat_ngram_fraction:
        return "repetition"
    return None


def check_instruction(text: str, finish_reason: str, spec: SyntheticSpec,
                      control_tokens: Iterable[str] = ()) -> str | None:
    """Reason to drop a generated instruction, or None to keep it."""
    reason = _common(text, finish_reason, spec.min_instruction_chars, spec.max_instruction_chars,
                     spec, control_tokens)
    if reason is None and (THINK_OPEN in text or THINK_CLOSE in text):
        reason = "unexpected_think"
    return reason


def check_answer(instruction: str, text: str, reasoning: bool, finish_reason: str,
                 spec: SyntheticSpec, control_tokens: Iterable[str] = ()) -> str | None:
    """Reason to drop a generated answer (reasoning: '<think>…</think>answer'), or None."""
    reason = _common(text, finish_reason, spec.min_chars, spec.max_chars, spec, control_tokens)
    if reason is not None:
        return reason
    final = text
    if reasoning:
        parts = split_think(text)
        if parts is None:
            return "bad_think_format"
        final = parts[1]
    elif THINK_OPEN in text or THINK_CLOSE in text:
        return "unexpected_think"
    if copy_fraction(final, instruction, spec.repeat_ngram) >= spec.max_copy_fraction:
        return "copies_instruction"
    if not python_blocks_parse(text):
        return "code_syntax"
    return None


class NearDupIndex:
    """Exact (normalised words) and MinHash/LSH near-duplicate lookup over one set of texts.

    Exact key: the text's lowercased words joined by spaces (texts without words: the stripped
    text), so case, whitespace and punctuation changes are exact duplicates. Near: a candidate
    shares an LSH band and its estimated Jaccard of word shingles is >= threshold.
    """

    def __init__(self, spec: SyntheticSpec):
        self._spec = spec
        self._exact: set[bytes] = set()
        self._buckets: dict[bytes, list[int]] = {}
        self._sigs: list[np.ndarray] = []

    def __len__(self) -> int:
        return len(self._exact)

    @staticmethod
    def _key(text: str) -> bytes:
        norm = " ".join(words(text)) or text.strip()
        return hashlib.blake2b(norm.encode("utf-8"), digest_size=16).digest()

    def _sig(self, text: str) -> np.ndarray | None:
        s = self._spec
        return minhash.signature(text, s.num_perm, s.shingle_words, s.seed)

    def add(self, text: str) -> None:
        self._exact.add(self._key(text))
        sig = self._sig(text)
        if sig is None:
            return
        self._sigs.append(sig)
        for k in minhash.band_keys(sig, self._spec.lsh_bands):
            self._buckets.setdefault(k, []).append(len(self._sigs) - 1)

    def find(self, text: str) -> str | None:
        """'exact', 'near' or None."""
        if self._key(text) in self._exact:
            return "exact"
        sig = self._sig(text)
        if sig is None:
            return None
        seen: set[int] = set()
        for k in minhash.band_keys(sig, self._spec.lsh_bands):
            for i in self._buckets.get(k, ()):
                if i not in seen:
                    seen.add(i)
                    if minhash.estimated_jaccard(sig, self._sigs[i]) >= self._spec.near_dup_threshold:
                        return "near"
        return None


# Sources in the order they are checked: a match against eval data is decontamination and wins.
SOURCES = ("eval", "real", "synthetic")


class Deduper:
    """Instruction-level and whole-example dedup against eval, real and kept synthetic data.

    Each source keeps two indexes: instructions (first user turn) and whole examples (all turns
    joined by newlines). ``check`` returns 'dup_<source>_<exact|near>' for the first match.
    """

    def __init__(self, spec: SyntheticSpec):
        self._idx = {s: (NearDupIndex(spec), NearDupIndex(spec)) for s in SOURCES}

    def add_instruction(self, source: str, instruction: str) -> None:
        self._idx[source][0].add(instruction)

    def add_example(self, source: str, full_text: str) -> None:
        self._idx[source][1].add(full_text)

    def check(self, instruction: str | None = None, full_text: str | None = None) -> str | None:
        """Match the instruction against the instruction indexes and/or the whole example text
        against the example indexes; 'dup_<source>_<exact|near>' for the first source that has
        one, else None."""
        for source in SOURCES:
            instr_idx, full_idx = self._idx[source]
            how = instr_idx.find(instruction) if instruction is not None else None
            if how is None and full_text is not None:
                how = full_idx.find(full_text)
            if how is not None:
                return f"dup_{source}_{how}"
        return None
