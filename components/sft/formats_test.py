"""SFT JSONL reading: the three formats, tool calls, and precise per-line reasons for bad lines."""

import gzip
import json

import pytest

from common.errors import InputDataError
from components.sft.formats import (
    Conversation,
    Message,
    ToolCall,
    read_sft_file,
    read_sft_files,
    to_record,
    write_jsonl,
)

GOOD = [
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                  {"role": "assistant", "content": "Hello."}]},
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
    {"instruction": "Say yes.", "input": "", "output": "yes"},
    {"prompt": "Capital of France?", "completion": "Paris"},
    {"messages": [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"type": "function", "function": {"name": "weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
        {"role": "tool", "name": "weather", "content": "-3C"},
        {"role": "assistant", "content": [{"type": "text", "text": "It is "}, {"type": "text", "text": "-3C."}],
         "tool_calls": [{"type": "function", "function": {"name": "log", "arguments": {"n": 1}}}]},
        {"role": "user", "content": "thanks"},  # trailing non-assistant turn: dropped
    ]},
]


def _write(path, lines):
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return str(path)


def test_three_formats_map_to_the_canonical_form(tmp_path):
    p = _write(tmp_path / "a.jsonl", GOOD)
    convs, counts, bad = read_sft_file(p)
    assert bad == []
    assert counts == {"lines": 5, "blank": 0, "ok": 5, "malformed": 0, "conversation": 2, "instruction": 2,
                      "completion": 1}
    assert convs[0] == Conversation((Message("system", "Be brief."), Message("user", "Hi"),
                                     Message("assistant", "Hello.")), f"{p}:1")
    assert convs[1].messages == (Message("user", "Add the numbers.\n\n2 and 3"), Message("assistant", "5"))
    assert convs[2].messages == (Message("user", "Say yes."), Message("assistant", "yes"))
    assert convs[3].messages == (Message("user", "Capital of France?"), Message("assistant", "Paris"))
    tools = convs[4].messages
    assert [m.role for m in tools] == ["user", "assistant", "tool", "assistant"]
    assert tools[1] == Message("assistant", "", (ToolCall("weather", {"city": "Oslo"}),))
    assert tools[2].name == "weather"
    assert tools[3] == Message("assistant", "It is -3C.", (ToolCall("log", {"n": 1}),))


BAD = [
    ("{not json", "bad JSON"),
    ("[1, 2]", "a line must be a JSON object, not list"),
    ({"text": "hello"}, "unknown format (keys: text)"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role 'robot' is not one of"),
    ({"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]}, "messages[0].content is missing"),
    ({"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}]},
     "messages[0].content must be a string, not int"),
    ({"messages": [{"role": "user", "content": "only a question"}]}, "no assistant turn"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": None, "tool_calls": [
        {"type": "function", "function": {"name": "f", "arguments": "{bad"}}]}]},
     "messages[1].tool_calls[0].function.arguments is not valid JSON"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": None, "tool_calls": [
        {"type": "function", "function": {"name": "f", "arguments": "[1]"}}]}]},
     "arguments must be a JSON object, not list"),
    ({"instruction": "x", "output": 5}, "output must be a string"),
    ({"prompt": "x", "completion": ""}, "every assistant turn is empty"),
    ({"messages": []}, "messages must be a non-empty list"),
]


def test_bad_lines_are_counted_with_file_line_and_reason(tmp_path):
    lines = [GOOD[0], ""] + [b for b, _ in BAD]
    p = _write(tmp_path / "b.jsonl", lines)
    res = read_sft_files([p])
    assert len(res.conversations) == 1
    assert res.counts[p]["blank"] == 1 and res.counts[p]["malformed"] == len(BAD)
    assert len(res.malformed) == len(BAD)
    for i, ((_, reason), got) in enumerate(zip(BAD, res.malformed, strict=True)):
        assert got.startswith(f"{p}:{i + 3}: "), got
        assert reason in got, (reason, got)


def test_a_file_with_no_good_line_raises_naming_it_and_the_first_reasons(tmp_path):
    p = _write(tmp_path / "c.jsonl", ["{oops", {"text": 1}])
    with pytest.raises(InputDataError, match=r"c\.jsonl: none of its 2 non-blank lines .*line 1: bad JSON"):
        read_sft_files([p])
    empty = tmp_path / "d.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(InputDataError, match=r"d\.jsonl: no SFT examples"):
        read_sft_files([str(empty)])
    with pytest.raises(InputDataError, match="cannot read"):
        read_sft_files([str(tmp_path / "missing.jsonl")])


def test_gzip_and_write_round_trip(tmp_path):
    src = _write(tmp_path / "a.jsonl", GOOD)
    convs = read_sft_files(src).conversations
    out = str(tmp_path / "out.jsonl.gz")
    assert write_jsonl(out, convs) == len(convs)
    with gzip.open(out, "rt") as f:
        assert json.loads(f.readline()) == to_record(convs[0])
    again = read_sft_files([out]).conversations
    assert [c.messages for c in again] == [c.messages for c in convs]
    assert again[0].source == f"{out}:1"
