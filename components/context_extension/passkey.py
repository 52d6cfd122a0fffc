"""Synthetic passkey retrieval (Mohtashami & Jaggi 2023): can the model recall a number hidden
at a random depth in a long context?

A sample of exactly L tokens:  BOS · filler · needle · filler · question · answer
  needle   "# The pass key is 48213. Remember it. 48213 is the pass key."
  question "# What is the pass key? The pass key is"     answer " 48213"
Filler is real text from the corpus (the eval split for evaluation, train for training rows),
so the only way to the answer is to find the needle. Scoring is teacher-forced: a sample is
correct when the model's argmax at every answer position is the answer token (exact match); the
per-token accuracy is reported too. One forward per sample, no sampling noise.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NEEDLE = "\n# The pass key is {key}. Remember it. {key} is the pass key.\n"
QUESTION = "\n# What is the pass key? The pass key is"


@dataclass(frozen=True)
class PasskeySample:
    ids: np.ndarray          # (L,) int32
    answer_start: int        # first answer token index
    answer_len: int
    key: str
    depth: float             # where the needle sits, as a fraction of the filler


class PasskeyBuilder:
    """Builds samples from a tokenizer (HF `tokenizers.Tokenizer`) and filler texts."""

    def __init__(self, tokenizer, filler_texts: list[str], bos_id: int, min_filler_tokens: int = 64):
        self.tok = tokenizer
        self.bos = bos_id
        ids: list[int] = []
        for enc in tokenizer.encode_batch([t for t in filler_texts if t], add_special_tokens=False):
            ids.extend(enc.ids)
        if len(ids) < min_filler_tokens:
            raise ValueError(f"passkey filler has {len(ids)} tokens; need at least {min_filler_tokens}")
        self.filler = np.asarray(ids, np.int32)
        self.question = np.asarray(tokenizer.encode(QUESTION, add_special_tokens=False).ids, np.int32)

    def _enc(self, text: str) -> np.ndarray:
        return np.asarray(self.tok.encode(text, add_special_tokens=False).ids, np.int32)

    def min_length(self, digits: int) -> int:
        """Shortest context that fits a sample (BOS, needle, question, answer, some filler)."""
        key = "9" * digits
        return (1 + self._enc(NEEDLE.format(key=key)).size + self.question.size
                + self._enc(" " + key).size + 16)

    def sample(self, length: int, digits: int, rng: np.random.Generator) -> PasskeySample:
        key = str(rng.integers(1, 10)) + "".join(str(d) for d in rng.integers(0, 10, digits - 1))
        needle = self._enc(NEEDLE.format(key=key))
        answer = self._enc(" " + key)
        fixed = 1 + needle.size + self.question.size + answer.size
        n_fill = length - fixed
        if n_fill < 2:
            raise ValueError(f"context {length} is too short for a passkey sample ({fixed} fixed tokens)")
        start = int(rng.integers(0, self.filler.size))
        fill = np.take(self.filler, np.arange(start, start + n_fill), mode="wrap")   # (n_fill,)
        depth = float(rng.uniform(0.05, 0.95))
        cut = int(round(depth * n_fill))
        ids = np.concatenate([[self.bos], fill[:cut], needle, fill[cut:], self.question, answer]).astype(np.int32)
        assert ids.size == length
        return PasskeySample(ids, length - answer.size, int(answer.size), key, depth)

    def samples(self, length: int, n: int, digits: int, seed: int) -> list[PasskeySample]:
        rng = np.random.default_rng(seed)
        return [self.sample(length, digits, rng) for _ in range(n)]


def score(logits: np.ndarray, samples: list[PasskeySample]) -> tuple[int, int, int]:
    """(exact-match samples, correct answer tokens, answer tokens) of logits (B, L, V)."""
    exact = tok_ok = tok_n = 0
    for lg, s in zip(logits, samples, strict=True):
        # position i predicts token i+1
        pred = lg[s.answer_start - 1:s.answer_start - 1 + s.answer_len].argmax(-1)       # (A,)
        gold = s.ids[s.answer_start:s.answer_start + s.answer_len]
        hits = int((pred == gold).sum())
        tok_ok += hits
        tok_n += s.answer_len
        exact += int(hits == s.answer_len)
    return exact, tok_ok, tok_n


def passkey_accuracy(model, samples: list[PasskeySample], batch_size: int = 4) -> dict[str, float]:
    """Teacher-forced passkey accuracy of a DecoderLM over samples of one length."""
    import tensorflow as tf

    exact = tok_ok = tok_n = 0
    for i in range(0, len(samples), batch_size):
        chunk = samples[i:i + batch_size]
        ids = tf.constant(np.stack([s.ids for s in chunk]))                               # (B, L)
        logits = model(ids).numpy()                                                       # (B, L, V)
        e, t, n = score(logits, chunk)
        exact, tok_ok, tok_n = exact + e, tok_ok + t, tok_n + n
    return {"accuracy": exact / len(samples), "token_accuracy": tok_ok / max(tok_n, 1),
            "samples": len(samples)}
