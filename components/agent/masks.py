"""Token masks from character spans, through the HF tokenizer's offset mapping.

``span_token_masks(text, spans, tokenizer)`` tokenizes ``text`` once and marks each token with
the spans its character range touches:

- Rule: token t with character range [a, b) belongs to span [s, e) when the ranges overlap,
  ``a < e and s < b``. A token straddling a span edge (say ``"}\\n"`` where the span ends at
  ``}``) is therefore in the span; a token that only touches it (``b == s`` or ``a == e``) is
  not; a token overlapping two spans is in both (both masks are 1). Zero-width tokens
  (special tokens a post-processor inserts, offsets (0, 0)) belong to no span.
- Byte-level BPE splits a multi-byte character (é, 日, 🙂) over several tokens that all carry
  that character's offsets, so all of them get the character's masks.
- Exact at token boundaries: when a span's edges fall on token edges, its mask is exactly the
  tokens inside it.

"Observation tokens get no loss" is the consumer's rule (SAD, arXiv 2505.13820): weight
``λ_r·reason_mask + λ_a·action_mask`` and zero where ``observation_mask`` is set, which also
covers the (rare) token straddling an ACT span and the Observation that follows it.
"""

from __future__ import annotations

import os

import numpy as np
from tokenizers import Tokenizer

from components.agent.segment import ACT, OBSERVATION, REASON, validate_spans

_MASK_OF = {REASON: "reason_mask", ACT: "action_mask", OBSERVATION: "observation_mask"}


def load_tokenizer(path: str | os.PathLike[str]) -> Tokenizer:
    """A ``tokenizers`` tokenizer from a folder holding tokenizer.json (seekline's tokenizer
    artifact, a Hugging Face download) or from the tokenizer.json file itself."""
    from components.tokenizer import tokenizer as tkz

    return tkz.load(os.fspath(path))


def span_token_masks(text: str, spans, tokenizer: Tokenizer, *, add_special_tokens: bool = False
                     ) -> dict[str, np.ndarray]:
    """input_ids and reason / action / observation masks (int32, one entry per token).

    ``spans`` are ``[start, end, label]`` character spans as ``segment`` returns them; invalid
    spans raise ValueError. ``add_special_tokens`` is passed to ``tokenizer.encode`` (the masks
    of inserted special tokens are 0).
    """
    why = validate_spans([list(sp) for sp in spans], len(text))
    if why is not None:
        raise ValueError(f"spans: {why}")
    enc = tokenizer.encode(text, add_special_tokens=add_special_tokens)
    ids = np.asarray(enc.ids, np.int32)  # [T]
    offsets = np.asarray(enc.offsets, np.int64).reshape(-1, 2)  # [T, 2] character [a, b)
    a, b = offsets[:, 0], offsets[:, 1]
    out = {"input_ids": ids, **{name: np.zeros(ids.shape, np.int32) for name in _MASK_OF.values()}}
    for start, end, label in spans:
        out[_MASK_OF[label]] |= ((a < end) & (start < b) & (a < b)).astype(np.int32)  # [T]
    return out
