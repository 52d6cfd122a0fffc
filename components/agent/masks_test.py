"""Token masks: a hand-written word-level case (boundary and straddle rules), and for seekline's
tokenizer and a Qwen-like ChatML byte-level BPE a reference computed in byte space from the
vocabulary (GPT-2's byte↔unicode table), independent of the offset mapping under test."""

import json
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from components.agent.masks import load_tokenizer, span_token_masks
from components.agent.segment import ACT, OBSERVATION, REASON, segment
from components.sft import testdata

FIXTURE = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "agent" / "annotated_trajectories.jsonl"


def _word_tokenizer(words):
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["[UNK]", *words])}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()  # \w+ | [^\w\s]+ pieces
    return tok


def test_word_level_hand_case():
    text = "Thought: go now\nAction: run it\nObservation: ok"
    tok = _word_tokenizer(["Thought", ":", "go", "now", "Action", "run", "it", "Observation", "ok"])
    spans = [(9, 15, REASON), (24, 30, ACT), (44, 46, OBSERVATION)]
    m = span_token_masks(text, spans, tok)
    # tokens: Thought : go now Action : run it Observation : ok
    assert m["input_ids"].tolist() == [1, 2, 3, 4, 5, 2, 6, 7, 8, 2, 9]
    assert m["reason_mask"].tolist() == [0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0]
    assert m["action_mask"].tolist() == [0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0]
    assert m["observation_mask"].tolist() == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]
    assert all(v.dtype == np.int32 for v in m.values())


def test_straddling_and_touching_tokens():
    tok = _word_tokenizer(["hello", "world"])
    text = "hello world"  # tokens [0, 5) and [6, 11)
    masks = lambda spans: [span_token_masks(text, spans, tok)[k].tolist()  # noqa: E731
                           for k in ("reason_mask", "action_mask")]
    assert masks([(0, 3, REASON)]) == [[1, 0], [0, 0]]  # part of a token: the whole token
    assert masks([(4, 7, REASON)]) == [[1, 1], [0, 0]]  # straddles both tokens' edges
    assert masks([(5, 6, REASON)]) == [[0, 0], [0, 0]]  # only the space: no token
    assert masks([(0, 6, REASON)]) == [[1, 0], [0, 0]]  # ends where "world" starts: touches, not in
    assert masks([(0, 2, REASON), (2, 6, ACT)]) == [[1, 0], [1, 0]]  # one token in two spans: both
    assert masks([]) == [[0, 0], [0, 0]]


def test_bad_spans_and_empty_text():
    tok = _word_tokenizer(["a"])
    with pytest.raises(ValueError, match="outside the text"):
        span_token_masks("a", [(0, 2, REASON)], tok)
    with pytest.raises(ValueError, match="label"):
        span_token_masks("a", [(0, 1, "TOOL")], tok)
    m = span_token_masks("", [], tok)
    assert m["input_ids"].shape == (0,) and m["reason_mask"].shape == (0,)


def _bytes_to_unicode() -> dict[str, int]:
    """GPT-2's byte-level alphabet (public table): printable bytes map to themselves, the rest
    to 256 + n in order. Returns char -> byte."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, n = {}, 0
    for byte in range(256):
        if byte in keep:
            chars[chr(byte)] = byte
        else:
            chars[chr(256 + n)] = byte
            n += 1
    return chars


def _reference_masks(text, spans, tok):
    """Masks by overlap in UTF-8 byte space, token bytes read from the vocabulary."""
    inv = _bytes_to_unicode()
    added = {t.content for t in tok.get_added_tokens_decoder().values()}
    ids = tok.encode(text, add_special_tokens=False).ids
    pieces = [tok.id_to_token(i).encode() if tok.id_to_token(i) in added
              else bytes(inv[c] for c in tok.id_to_token(i)) for i in ids]
    assert b"".join(pieces) == text.encode()  # the tokenization covers the text byte for byte
    ends = np.cumsum([len(p) for p in pieces])  # [T]
    starts = ends - np.array([len(p) for p in pieces])
    out = {k: np.zeros(len(ids), np.int32) for k in ("reason_mask", "action_mask", "observation_mask")}
    name = {REASON: "reason_mask", ACT: "action_mask", OBSERVATION: "observation_mask"}
    for s, e, label in spans:
        bs, be = len(text[:s].encode()), len(text[:e].encode())
        out[name[label]] |= ((starts < be) & (bs < ends)).astype(np.int32)
    return ids, out


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("tok"))
    return {"seekline": load_tokenizer(testdata.seekline_tokenizer_dir(root)),
            "chatml": load_tokenizer(testdata.chatml_tokenizer_dir(root))}


UNICODE_TRAJECTORY = ("Thought: 日本語で考える 🙂 — é́ (e + combining acute)\n"
                      "Action: <tool_call>{\"name\": \"python\", \"arguments\": {\"code\": \"print('Zürich 🚀')\"}}</tool_call>\n"
                      "Observation: Zürich 🚀\nThought: ok\nAction: {\"name\": \"finish\", \"arguments\": {\"answer\": \"Ω\"}}")


@pytest.mark.parametrize("name", ["seekline", "chatml"])
def test_byte_level_masks_match_byte_space_reference(tokenizers, name):
    tok = tokenizers[name]
    texts = [UNICODE_TRAJECTORY] + [json.loads(line)["text"] for line in FIXTURE.read_text("utf-8").splitlines()[::7]]
    split_chars = 0
    for text in texts:
        spans = segment(text)
        m = span_token_masks(text, spans, tok)
        ids, ref = _reference_masks(text, spans, tok)
        assert m["input_ids"].tolist() == ids
        for k, v in ref.items():
            assert m[k].tolist() == v.tolist(), (name, k, text)
        enc = tok.encode(text, add_special_tokens=False)
        split_chars += sum(enc.offsets[i] == enc.offsets[i + 1] for i in range(len(enc.offsets) - 1))
    assert split_chars > 0  # multi-byte characters really were split over byte-level tokens


@pytest.mark.parametrize("name", ["seekline", "chatml"])
def test_exact_at_token_boundaries(tokenizers, name):
    """A span whose edges are clean token edges (no token runs across them) marks exactly the
    tokens inside it, and those tokens cover exactly the span's characters."""
    tok = tokenizers[name]
    text = UNICODE_TRAJECTORY
    offsets = tok.encode(text, add_special_tokens=False).offsets
    edges = {p for ab in offsets for p in ab}
    clean = sorted(p for p in edges if not any(a < p < b for a, b in offsets))
    rng = np.random.default_rng(0)
    for _ in range(50):
        s, e = sorted(rng.choice(clean, size=2, replace=False).tolist())
        m = span_token_masks(text, [(s, e, ACT)], tok)["action_mask"]
        assert m.tolist() == [int(s <= a and b <= e and a < b) for a, b in offsets]
        covered = {c for (a, b), k in zip(offsets, m, strict=True) if k for c in range(a, b)}
        assert covered == set(range(s, e))  # byte-level BPE leaves no character uncovered


def test_chatml_added_token_inside_an_action(tokenizers):
    tok = tokenizers["chatml"]
    text = 'Action: <tool_call>{"name": "f"}</tool_call>'
    m = span_token_masks(text, [(8, len(text), ACT)], tok)["action_mask"]  # the tags are in this span
    toks = tok.encode(text, add_special_tokens=False).tokens
    first = toks.index("<tool_call>")
    assert m[first] == 1 and m[toks.index("</tool_call>")] == 1
    assert m[:first].sum() == 0 and m[first:].all()  # "Action: " tokens out, the rest in
