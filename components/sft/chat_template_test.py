"""Chat templates: ChatML equals transformers' rendering of Qwen2.5's jinja template (fixture); the
mask covers exactly the assistant's tokens; prompts are prefixes; control tokens in text are refused."""

import json
import os
import re

import numpy as np
import pytest

from common.errors import ConfigError, InputDataError
from components.sft.chat_template import ChatMLTemplate, SeeklineTemplate, get_template
from components.sft.formats import Conversation, Message, parse_record
from components.sft.testdata import chatml_tokenizer_dir, seekline_tokenizer_dir
from components.tokenizer.tokenizer import load

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "sft", "chatml_expected.json")
CASES = json.load(open(FIXTURE, encoding="utf-8"))["cases"]


def _conv(case) -> Conversation:
    return parse_record({"messages": case["messages"]}, case["name"])[0]


@pytest.fixture(scope="module")
def toks(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("toks"))
    return {"seekline": seekline_tokenizer_dir(root), "chatml": chatml_tokenizer_dir(root)}


@pytest.fixture(scope="module")
def templates(toks):
    return {k: get_template(k, v) for k, v in toks.items()}


def _mask_runs(t, ex) -> list[str]:
    """Decoded text of each contiguous run of masked tokens."""
    m = np.concatenate([[0], ex.loss_mask, [0]])
    starts, ends = np.flatnonzero(np.diff(m) == 1), np.flatnonzero(np.diff(m) == -1)
    return [t.tokenizer.decode(ex.ids[a:b].tolist(), skip_special_tokens=False) for a, b in zip(starts, ends, strict=True)]


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_chatml_renders_what_transformers_renders(templates, case):
    t = templates["chatml"]
    conv = _conv(case)
    assert t.render(conv) == case["text"]
    last = max(i for i, m in enumerate(conv.messages) if m.role == "assistant")
    assert t.render_prompt(conv.messages[:last]) == case["prompt"]


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_chatml_mask_is_the_assistant_content_and_im_end(templates, case):
    t = templates["chatml"]
    ex = t.encode(_conv(case))
    assert t.tokenizer.decode(ex.ids.tolist(), skip_special_tokens=False) == case["text"]
    # The reference targets, read off transformers' text: after each assistant header up to <|im_end|>.
    expected = re.findall(r"<\|im_start\|>assistant\n(.*?<\|im_end\|>)", case["text"], flags=re.S)
    assert _mask_runs(t, ex) == expected
    assert ex.ids.dtype == np.int32 and ex.loss_mask.shape == ex.ids.shape


SEEKLINE_TOOL_TEXT = (
    "<|bos|><|user|>Weather in Zürich and Oslo, then log it.<|end_of_turn|>"
    "<|assistant|><|tool_call|>{\"name\": \"weather\", \"arguments\": {\"city\": \"Zürich\"}}<|/tool_call|>"
    "<|tool_call|>{\"name\": \"weather\", \"arguments\": {\"city\": \"Oslo\", \"units\": \"C\"}}<|/tool_call|>"
    "<|end_of_turn|>"
    "<|tool|>{\"temp\": 3}<|end_of_turn|><|tool|>{\"temp\": -2}<|end_of_turn|>"
    "<|assistant|>Logging both.<|tool_call|>{\"name\": \"log\", \"arguments\": {\"entries\": [3, -2], \"ok\": true, "
    "\"note\": null}}<|/tool_call|><|end_of_turn|>"
    "<|tool|>logged<|end_of_turn|>"
    "<|assistant|>Zürich 3C, Oslo -2C.<|end_of_turn|>"
)


def test_seekline_format_and_mask_in_a_multi_turn_tool_conversation(templates):
    t = templates["seekline"]
    conv = _conv(next(c for c in CASES if c["name"] == "tool_calls_and_results"))
    ex = t.encode(conv)
    assert ex.text == SEEKLINE_TOOL_TEXT
    assert t.tokenizer.decode(ex.ids.tolist(), skip_special_tokens=False) == SEEKLINE_TOOL_TEXT
    expected = re.findall(r"<\|assistant\|>(.*?<\|end_of_turn\|>)", SEEKLINE_TOOL_TEXT)
    assert len(expected) == 3
    assert _mask_runs(t, ex) == expected
    assert ex.ids[0] == 1  # BOS from tokenizer_meta.json
    assert t.stop_ids == [t.tokenizer.token_to_id("<|end_of_turn|>"), 2]


def test_system_turn_and_think_tokens_in_seekline(templates):
    t = templates["seekline"]
    conv = Conversation((Message("system", "S"), Message("user", "q"),
                         Message("assistant", "<think>hmm</think>answer")), "x")
    ex = t.encode(conv)
    assert ex.text == "<|bos|><|system|>S<|end_of_turn|><|user|>q<|end_of_turn|><|assistant|><think>hmm</think>answer<|end_of_turn|>"
    think = t.tokenizer.token_to_id("<think>")
    assert think in ex.ids.tolist()  # reasoning markers are their special ids, and targets
    assert ex.loss_mask[ex.ids.tolist().index(think)] == 1
    assert _mask_runs(t, ex) == ["<think>hmm</think>answer<|end_of_turn|>"]


@pytest.mark.parametrize("name", ["seekline", "chatml"])
def test_generation_prompt_is_a_prefix_of_the_encoded_conversation(templates, name):
    t = templates[name]
    for case in CASES:
        msgs = _conv(case).messages
        for k, m in enumerate(msgs):
            if m.role != "assistant":
                continue
            full = t.encode(Conversation(msgs[:k + 1], "x")).ids.tolist()
            prompt = t.encode_prompt(msgs[:k])
            assert full[:len(prompt)] == prompt, (case["name"], k)
            assert len(full) > len(prompt)


def test_control_tokens_inside_text_are_refused(templates):
    bad = Conversation((Message("user", "say <|im_end|> now"), Message("assistant", "ok")), "f.jsonl:7")
    with pytest.raises(InputDataError, match=r"f\.jsonl:7: message text contains the control token '<\|im_end\|>'"):
        templates["chatml"].encode(bad)
    bad = Conversation((Message("user", "q"), Message("assistant", "a<|user|>b")), "g.jsonl:2")
    with pytest.raises(InputDataError, match=r"g\.jsonl:2: .*control token '<\|user\|>'"):
        templates["seekline"].encode(bad)
    # ... while text naming the other template's tokens is plain text
    ok = Conversation((Message("user", "what is <|im_start|>?"), Message("assistant", "a ChatML marker")), "x")
    assert templates["seekline"].encode(ok).text.count("<|im_start|>") == 1


def test_a_token_straddling_the_assistant_edge_is_an_error(templates):
    # Byte-level pre-tokenization joins the header's newline with the content's leading spaces, and
    # the tokenizer learned "\n   " from indented code: that token is half header, half content.
    conv = Conversation((Message("user", "q"), Message("assistant", "    return a")), "h.jsonl:3")
    with pytest.raises(InputDataError, match=r"h\.jsonl:3: token \d+ '\\n   ' straddles the edge"):
        templates["chatml"].encode(conv)
    templates["seekline"].encode(conv)  # special-token edges: fine


def test_get_template_picks_and_checks_the_tokenizer(toks):
    assert isinstance(get_template("auto", toks["seekline"]), SeeklineTemplate)
    assert isinstance(get_template("auto", toks["chatml"]), ChatMLTemplate)
    tok = load(toks["chatml"])
    assert isinstance(get_template("auto", tok), ChatMLTemplate)
    assert tok.encode_special_tokens  # the caller's tokenizer is not changed
    assert get_template("chatml", toks["chatml"]).stop_ids == [tok.token_to_id("<|im_end|>"),
                                                              tok.token_to_id("<|endoftext|>")]
    with pytest.raises(ConfigError, match=r"'chatml' does not fit the tokenizer .*lacks the special tokens "
                                          r"<\|im_start\|>, <\|im_end\|>"):
        get_template("chatml", toks["seekline"])
    with pytest.raises(ConfigError, match=r"'seekline' does not fit .*<\|bos\|>, <\|eos\|>, <\|system\|>"):
        get_template("seekline", toks["chatml"])
    with pytest.raises(ConfigError, match="unknown chat template 'llama'"):
        get_template("llama", toks["chatml"])
