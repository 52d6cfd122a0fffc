"""SyntheticSpec: how much cold-start data to generate, how to sample it, what to keep."""

from __future__ import annotations

from dataclasses import dataclass

from components.common.errors import ConfigError


@dataclass(frozen=True)
class SyntheticSpec:
    # How many examples to keep, and the share of them that are reasoning examples
    # (<think> ... </think> then the answer); the rest are plain instruction/answer pairs.
    num_examples: int = 64
    reasoning_fraction: float = 0.5
    # Sampling (model.generation.GenerationConfig); each generate call gets its own seed derived
    # from `seed`, so a run is reproducible and calls do not share random streams.
    max_new_tokens: int = 512            # answers
    max_instruction_tokens: int = 128    # generated instructions
    temperature: float = 0.7
    top_p: float = 0.95
    seed: int = 0
    batch_size: int = 8
    seeds_per_prompt: int = 3            # seed instructions shown per self-instruct prompt
    # Give up after this many instruction prompts per requested example (filters drop some).
    max_attempts_factor: int = 4
    # Open the reasoning answer with the <think> token (DeepSeek-R1 does the same).
    force_think_prefix: bool = True
    # Quality filters (synthetic_filters.py). Lengths are characters of the stripped text.
    min_chars: int = 20
    max_chars: int = 8000
    min_instruction_chars: int = 10
    max_instruction_chars: int = 2000
    allow_truncated: bool = False        # keep outputs that hit max_new_tokens
    repeat_ngram: int = 3                # word n-grams for the repetition filter
    max_repeat_ngram_fraction: float = 0.3
    min_text_fraction: float = 0.9       # printable, non-U+FFFD characters
    max_copy_fraction: float = 0.8       # answer n-grams found in the instruction
    # MinHash near-dedup (components/ingest/minhash.py) among synthetic examples and against
    # the real train and eval data.
    near_dup_threshold: float = 0.8
    num_perm: int = 128
    lsh_bands: int = 32
    shingle_words: int = 3

    def __post_init__(self):
        def need(ok: bool, field: str, rule: str):
            if not ok:
                raise ConfigError(f"SyntheticSpec field '{field}' must be {rule}, got {getattr(self, field)!r}")

        for f in ("num_examples", "max_new_tokens", "max_instruction_tokens", "batch_size",
                  "seeds_per_prompt", "max_attempts_factor", "repeat_ngram", "num_perm",
                  "lsh_bands", "shingle_words", "max_chars", "max_instruction_chars"):
            need(isinstance(getattr(self, f), int) and getattr(self, f) >= 1, f, "an integer >= 1")
        for f in ("min_chars", "min_instruction_chars"):
            need(isinstance(getattr(self, f), int) and getattr(self, f) >= 0, f, "an integer >= 0")
        need(self.min_chars <= self.max_chars, "min_chars", f"<= max_chars ({self.max_chars})")
        need(self.min_instruction_chars <= self.max_instruction_chars, "min_instruction_chars",
             f"<= max_instruction_chars ({self.max_instruction_chars})")
        for f in ("reasoning_fraction", "max_repeat_ngram_fraction", "min_text_fraction",
                  "max_copy_fraction", "near_dup_threshold"):
            need(0.0 <= getattr(self, f) <= 1.0, f, "in [0, 1]")
        need(self.temperature >= 0.0, "temperature", ">= 0")
        need(0.0 < self.top_p <= 1.0, "top_p", "in (0, 1]")
        need(self.num_perm % self.lsh_bands == 0, "lsh_bands", f"a divisor of num_perm ({self.num_perm})")
        need(0 <= self.seed < 2**31 - 1, "seed", "in [0, 2**31 - 1)")
