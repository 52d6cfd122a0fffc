"""Agent rows from trajectory records: masks on a word-level tokenizer checked token by token by
hand, the overlap rule on byte-level BPE tokenizers (seekline's and a Qwen-shaped one) against a
per-character reference, and the files training/data.py reads."""
import json
import os

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from components.agent.dataset import build_agent_dataset, build_agent_dataset_files, token_values
from components.sft.testdata import chatml_tokenizer_dir, seekline_tokenizer_dir

TEXT = ('Thought: add\n'
        'Action: {"name": "python", "arguments": {"code": "1+1"}}\n'
        'Observation: 2\n'
        'Thought: got 2\n'
        'Action: {"name": "finish", "arguments": {"answer": "2"}}')
PROMPT = "Add one and one."


def _spans(text):
    """The contract's spans of TEXT, located by hand with str.index."""
    a1 = text.index("{")
    b1 = text.index("}}") + 2
    o = text.index("Observation: ") + len("Observation: ")
    r2 = text.index("got 2")
    a2 = text.index("{", r2)
    return [[9, 12, "REASON"], [a1, b1, "ACT"], [o, o + 1, "OBSERVATION"], [r2, r2 + 5, "REASON"],
            [a2, len(text), "ACT"]]


def _record(i=0, text=TEXT, spans="auto", **kw):
    rec = {"id": f"t{i}", "task_id": f"task{i}", "task": {"task_id": f"task{i}", "prompt": PROMPT}, "text": text,
           "success": True, **kw}
    if spans is not None:
        rec["spans"] = _spans(text) if spans == "auto" else spans
    return rec


@pytest.fixture(scope="module")
def word_tok():
    pre = pre_tokenizers.Whitespace()
    words = sorted({w for s in (PROMPT, TEXT) for w, _ in pre.pre_tokenize_str(s)})
    tok = Tokenizer(models.WordLevel({w: i + 1 for i, w in enumerate(words)} | {"[UNK]": 0}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre
    return tok


# The word-level tokens of PROMPT + "\n" + TEXT, written out by hand (index: token).
TOKENS = ["Add", "one", "and", "one", ".",                                                       # 0-4 prompt
          "Thought", ":", "add",                                                                  # 5-7
          "Action", ":", '{"', "name", '":', '"', "python", '",', '"', "arguments", '":',         # 8-18
          '{"', "code", '":', '"', "1", "+", "1", '"}}',                                          # 19-26
          "Observation", ":", "2",                                                                # 27-29
          "Thought", ":", "got", "2",                                                             # 30-33
          "Action", ":", '{"', "name", '":', '"', "finish", '",', '"', "arguments", '":',         # 34-44
          '{"', "answer", '":', '"', "2", '"}}']                                                  # 45-50


def _ones(n, idx):
    v = np.zeros(n, np.int64)
    v[list(idx)] = 1
    return v


def test_masks_token_by_token_on_a_word_level_tokenizer(word_tok):
    enc = word_tok.encode(PROMPT + "\n" + TEXT, add_special_tokens=False)
    assert enc.tokens == TOKENS
    n = len(TOKENS)
    seq_len = 60
    rows, rep = build_agent_dataset([_record()], word_tok, seq_len=seq_len, pad_id=0, format_targets=False)
    assert rep["rows"] == 1 and rep["skipped"] == 0 and rep["truncated"] == 0
    r = rows[0]
    reason = _ones(n, [7, 32, 33])
    # '"}}' (26, 50) covers the closing braces, all inside the ACT span
    action = _ones(n, [*range(10, 27), *range(36, 51)])
    pad = np.zeros(seq_len - n, np.int64)
    np.testing.assert_array_equal(r["input_ids"][:n], enc.ids)
    np.testing.assert_array_equal(r["segment_ids"], np.r_[np.ones(n, np.int64), pad])
    np.testing.assert_array_equal(r["positions"], np.r_[np.arange(n), pad])
    np.testing.assert_array_equal(r["reason_mask"], np.r_[reason, pad])
    np.testing.assert_array_equal(r["action_mask"], np.r_[action, pad])
    np.testing.assert_array_equal(r["loss_mask"], np.r_[reason | action, pad])   # observation "2" (29): no loss
    # process supervision: names "python" (14, registry 0) and "finish" (40, registry 2)
    np.testing.assert_array_equal(r["tool_name_mask"][:n], _ones(n, [14, 40]))
    want_ids = -np.ones(seq_len, np.int64)
    want_ids[14], want_ids[40] = 0, 2
    np.testing.assert_array_equal(r["tool_name_ids"], want_ids)
    # arguments objects {"code": "1+1"} (19-26) and {"answer": "2"} (45-50)
    json_m = _ones(n, [*range(19, 27), *range(45, 51)])
    np.testing.assert_array_equal(r["mask_valid_json_tokens"][:n], json_m)
    np.testing.assert_array_equal(r["gold_json_text_ids"][:n], np.where(json_m == 1, enc.ids, -1))
    # the observed "2" reused in "got 2" (33) and in the answer (49), from Observation 0
    np.testing.assert_array_equal(r["integration_mask"][:n], _ones(n, [33, 49]))
    np.testing.assert_array_equal(r["tool_result_fields"][:n], _ones(n, [33, 49]))
    assert (rep["tool_name_tokens"], rep["json_tokens"], rep["integration_tokens"]) == (2, 14, 2)

    plain, _ = build_agent_dataset([_record()], word_tok, seq_len=seq_len, process_supervision=False)
    assert sorted(plain[0]) == ["action_mask", "input_ids", "loss_mask", "positions", "reason_mask", "segment_ids"]


def test_format_targets_give_labels_and_turn_ends_to_their_step(word_tok):
    """By hand on TOKENS: "Thought :" (5-6, 30-31) go to the REASON after them, "Action :" (8-9,
    34-35) to the ACT after them, "Observation :" (27-28) to the ACT before it (writing it ends
    the turn); the observed "2" (29) and the prompt (0-4) stay without a target."""
    n = len(TOKENS)
    rows, _ = build_agent_dataset([_record()], word_tok, seq_len=n)
    r = rows[0]
    reason = _ones(n, [5, 6, 7, 30, 31, 32, 33])
    action = _ones(n, [*range(8, 29), *range(34, 51)])
    np.testing.assert_array_equal(r["reason_mask"], reason)
    np.testing.assert_array_equal(r["action_mask"], action)
    np.testing.assert_array_equal(r["loss_mask"], reason | action)
    assert r["loss_mask"][29] == 0 and not r["loss_mask"][:5].any()
    # process-step fields are the spans' own (unchanged by format targets)
    np.testing.assert_array_equal(r["tool_name_mask"], _ones(n, [14, 40]))


def test_with_format_targets_rules():
    from components.agent.dataset import with_format_targets

    # leading label → next span; gap before an OBSERVATION → the ACT before it; gap after an
    # OBSERVATION before a REASON → that REASON; a trailing gap after an OBSERVATION → nobody
    spans = [[2, 4, "REASON"], [6, 8, "ACT"], [10, 12, "OBSERVATION"], [14, 16, "REASON"], [17, 19, "OBSERVATION"]]
    assert with_format_targets(spans, 21) == [
        [0, 2, "REASON"], [2, 4, "REASON"], [4, 6, "ACT"], [6, 8, "ACT"], [8, 10, "ACT"], [10, 12, "OBSERVATION"],
        [12, 14, "REASON"], [14, 16, "REASON"], [16, 17, "REASON"], [17, 19, "OBSERVATION"]]
    assert with_format_targets([[0, 3, "ACT"]], 5) == [[0, 3, "ACT"], [3, 5, "ACT"]]
    assert with_format_targets([], 4) == []


def test_truncation_segmenter_and_skipped_records(word_tok):
    rows, rep = build_agent_dataset([_record()], word_tok, seq_len=20, format_targets=False)
    assert rep["truncated"] == 1 and len(rows[0]["input_ids"]) == 20
    np.testing.assert_array_equal(rows[0]["action_mask"], _ones(20, range(10, 20)))
    # a row cut before any target is dropped
    _, rep = build_agent_dataset([_record()], word_tok, seq_len=5)   # the prompt only
    assert rep["rows"] == 0 and rep["no_targets"] == 1
    # spans from the segmenter when the record has none; records it cannot use are skipped
    seg_rows, _ = build_agent_dataset([_record(spans=None)], word_tok, seq_len=60, segmenter=_spans)
    ref_rows, _ = build_agent_dataset([_record()], word_tok, seq_len=60)
    for k in ref_rows[0]:
        np.testing.assert_array_equal(seg_rows[0][k], ref_rows[0][k])
    bad = [_record(spans=None), _record(text="", spans=[]), _record(spans=[[5, 2, "REASON"]]), "not a dict",
           _record(spans=[[0, 3, "THINK"]])]
    rows, rep = build_agent_dataset(bad, word_tok, seq_len=60)
    assert rows == [] and rep["skipped"] == 5
    assert "no 'spans' and no segmenter" in rep["skipped_reasons"][0]
    assert "THINK" in rep["skipped_reasons"][4]


def _reference_mask(offsets, char_in):
    """Per-token reference of the overlap rule: any character of [start, end) marked."""
    return np.array([int(any(char_in[c] for c in range(a, b))) for a, b in offsets], np.int64)


@pytest.mark.parametrize("make", [seekline_tokenizer_dir, chatml_tokenizer_dir])
def test_overlap_rule_on_byte_level_tokenizers(make, tmp_path):
    from components.tokenizer.tokenizer import load

    tok = load(make(str(tmp_path)))
    text = TEXT.replace("add", "añadir ünïcode 数") + "\n"
    spans = [[9, 9 + len("añadir ünïcode 数"), "REASON"], *_spans(text)[1:]]
    rows, _ = build_agent_dataset([_record(text=text, spans=spans)], tok, seq_len=400, format_targets=False)
    full = PROMPT + "\n" + text
    enc = tok.encode(full, add_special_tokens=False)
    n = len(enc.ids)
    off = len(PROMPT) + 1
    marks = {lab: [False] * len(full) for lab in ("REASON", "ACT", "OBSERVATION")}
    for a, b, lab in spans:
        for c in range(off + a, off + b):
            marks[lab][c] = True
    obs = _reference_mask(enc.offsets, marks["OBSERVATION"])
    for lab, key in (("REASON", "reason_mask"), ("ACT", "action_mask")):
        want = _reference_mask(enc.offsets, marks[lab]) * (1 - obs)
        np.testing.assert_array_equal(rows[0][key][:n], want)
        assert want.sum() > 0
    # a multi-byte character split over several tokens marks each of them
    accent = [i for i, (a, b) in enumerate(enc.offsets) if full[a:b] == "ñ"]
    assert accent and all(rows[0]["reason_mask"][i] == 1 for i in accent)


def test_token_values_first_marked_character():
    chars = np.array([0, 0, 3, 3, 0, 5, 0], np.int64)
    offsets = np.array([[0, 2], [1, 3], [2, 6], [4, 5], [6, 6], [6, 7], [0, 0]])
    # [0,2) none; [1,3) → 3 at char 2; [2,6) → 3 (first marked); [4,5) none; zero-width none
    np.testing.assert_array_equal(token_values(chars, offsets), [0, 3, 3, 0, 0, 0, 0])


def test_files_are_what_training_data_reads(tmp_path):
    import tensorflow as tf

    from training.data import open_packed

    tok_dir = seekline_tokenizer_dir(str(tmp_path))
    src = tmp_path / "traj.jsonl"
    lines = [json.dumps(_record(i)) for i in range(6)]
    lines.insert(2, "{not json")
    lines.insert(4, "[1, 2]")
    lines.append(json.dumps(_record(9, success=False)))
    lines.append(json.dumps(_record(7, spans=None)))                  # segmented by the default segmenter
    src.write_text("\n".join(lines) + "\n")
    out = str(tmp_path / "agent_data")
    rep = build_agent_dataset_files(str(src), out, tokenizer_path=tok_dir, seq_len=300, process_supervision=True,
                                    eval_fraction=0.3, require_success=True)
    assert rep["malformed"]["count"] == 2
    assert rep["malformed"]["first"][0].startswith(f"{src}:3: not valid JSON")
    assert rep["malformed"]["first"][1] == f"{src}:5: not a JSON object"
    assert rep["not_successful_dropped"] == 1
    assert rep["train"]["rows"] + rep["eval"]["rows"] == 7 and rep["eval"]["rows"] >= 1
    data = open_packed(out)
    assert data.seq_len == 300 and data.num_rows("train") == rep["train"]["rows"]
    cfg = json.loads((tmp_path / "agent_data" / "config.json").read_text())
    assert "tool_name_ids" in cfg["features"] and cfg["process_supervision"] is True
    assert os.path.exists(os.path.join(out, "report.json"))
    spec = {k: tf.io.FixedLenFeature([300], tf.int64) for k in cfg["features"]}
    for raw in tf.data.TFRecordDataset(list(data.train_files), compression_type="GZIP"):
        ex = tf.io.parse_single_example(raw, spec)
        loss = ex["loss_mask"].numpy()
        np.testing.assert_array_equal(loss, ex["reason_mask"].numpy() | ex["action_mask"].numpy())
        names = ex["tool_name_ids"].numpy()[ex["tool_name_mask"].numpy() == 1]
        assert set(names.tolist()) == {0, 2} and loss.sum() > 0         # python and finish
