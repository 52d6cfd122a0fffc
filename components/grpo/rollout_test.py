"""Rollouts: stop strings on a real BPE tokenizer, and generate_rollouts on a fixture model (group
order, the stop token kept, truncation flags)."""
from __future__ import annotations

import os

import numpy as np
import pytest

from common.errors import ConfigError
from components.grpo.rollout import (
    PromptEncoder,
    SamplingSpec,
    check_prompt_room,
    cut_at_stop_string,
    generate_rollouts,
)
from components.sft.testdata import seekline_tokenizer_dir
from model.conftest import load_fixture_model
from model.generation import GenerationConfig, generate

TEXT = "Answer: use slicing.\nfor i in range(10):\n"


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from tokenizers import Tokenizer
    d = seekline_tokenizer_dir(str(tmp_path_factory.mktemp("tok")))
    return Tokenizer.from_file(os.path.join(d, "tokenizer.json"))


def _decode(tok):
    return lambda ids: tok.decode(list(ids), skip_special_tokens=True)


def _check_shortest(tok, ids, kept, stop):
    dec = _decode(tok)
    assert kept == ids[:len(kept)]
    assert stop in dec(kept) and stop not in dec(kept[:-1])


def test_cut_at_stop_string_shortest_prefix_and_text(tok):
    ids = tok.encode(TEXT, add_special_tokens=False).ids
    dec = _decode(tok)
    assert dec(ids) == TEXT
    # the earliest of several stop strings wins; the text ends right after it
    kept, text, found = cut_at_stop_string(ids, dec, ("range", "\n"))
    assert found and text == "Answer: use slicing.\n"
    _check_shortest(tok, ids, kept, "\n")
    # a stop string ending inside a token: the token is kept, the text is cut inside it
    kept, text, found = cut_at_stop_string(ids, dec, ("sli",))
    assert found and text == "Answer: use sli"
    _check_shortest(tok, ids, kept, "sli")
    assert dec(kept) != text                    # the kept tokens decode past the stop string
    # no stop string in the text: everything unchanged
    assert cut_at_stop_string(ids, dec, ("while", "")) == (ids, TEXT, False)


def _encoder(tok, stop_ids=()):
    return PromptEncoder(tokenizer=tok, mode="completion", stop_ids=tuple(stop_ids), pad_id=0)


PROMPTS = [[5, 9, 13, 200, 7], [42, 17]]


def test_rollouts_are_grouped_prompt_by_prompt(tok):
    """Greedy (top_k 1): every row of group i is prompt i's own greedy continuation, across
    generate() calls of 4 rows (6 rows = 2 calls)."""
    model = load_fixture_model("qwen2_gqa_tied")
    spec = SamplingSpec(max_completion_tokens=5, temperature=1.0, top_k=1, batch_size=4)
    ro = generate_rollouts(model, _encoder(tok), PROMPTS, 3, spec, seed=1)
    np.testing.assert_array_equal(ro.prompt_index, [0, 0, 0, 1, 1, 1])
    assert ro.prompt_ids == [PROMPTS[0]] * 3 + [PROMPTS[1]] * 3
    for i, p in enumerate(PROMPTS):
        alone = generate(model, [p], GenerationConfig(max_new_tokens=5)).sequences[0]
        assert ro.completion_ids[3 * i:3 * i + 3] == [alone] * 3
    assert ro.truncated.all() and ro.completion_lengths.tolist() == [5] * 6
    assert ro.texts == [_decode(tok)(c) for c in ro.completion_ids]


def test_stop_token_is_kept_and_truncation_flagged(tok):
    model = load_fixture_model("qwen2_gqa_tied")
    spec = SamplingSpec(max_completion_tokens=6, temperature=1.0, batch_size=8)
    free = generate_rollouts(model, _encoder(tok), PROMPTS, 4, spec, seed=5)
    assert free.truncated.all() and len({tuple(c) for c in free.completion_ids}) > 2   # sampled, not all equal
    stop = free.completion_ids[0][2]
    ro = generate_rollouts(model, _encoder(tok, [stop]), PROMPTS, 4, spec, seed=5)    # the same draws
    for row, got, trunc in zip(free.completion_ids, ro.completion_ids, ro.truncated, strict=True):
        if stop in row:       # ended by the stop token: kept as the row's last token
            assert got == row[:row.index(stop) + 1] and not trunc
        else:                 # ran to max_completion_tokens: flagged
            assert got == row and trunc
    assert not ro.truncated[0] and len(ro.completion_ids[0]) <= 3
    # a stop string ends the row too (cut after it, no stop token appended, not truncated)
    text = free.texts[1]
    needle = next((text[i:i + 2] for i in range(len(text) - 1) if text[i:i + 2].strip()), None)
    assert needle, text
    spec_s = SamplingSpec(max_completion_tokens=6, temperature=1.0, batch_size=8, stop=(needle,))
    cut = generate_rollouts(model, _encoder(tok), PROMPTS, 4, spec_s, seed=5)
    assert cut.texts[1] == text[:text.index(needle) + 2] and not cut.truncated[1]
    assert cut.completion_ids[1] == free.completion_ids[1][:len(cut.completion_ids[1])]
    assert cut.stats["stopped_by_string"] >= 1


def test_prompt_room_is_checked():
    check_prompt_room(96, 32, 128)
    with pytest.raises(ConfigError, match=r"max_prompt_tokens \(100\) \+ max_completion_tokens \(32\) exceed"):
        check_prompt_room(100, 32, 128)
