"""Segmenter: hand-computed cases, the annotated set (≥ 95% character accuracy), 10^5 fuzzed
inputs, span_accuracy on a hand-counted case, and segment_records' reporting of bad lines."""

import importlib.util
import json
import time
from pathlib import Path

import numpy as np
import pytest

from common.errors import InputDataError
from components.agent.segment import (
    ACT,
    OBSERVATION,
    REASON,
    aggregate_accuracy,
    segment,
    segment_records,
    span_accuracy,
    validate_spans,
)

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "agent" / "annotated_trajectories.jsonl"


def _texts(text, spans):
    return [(label, text[s:e]) for s, e, label in spans]


def test_canonical_trajectory_offsets():
    call = '{"name": "python", "arguments": {"code": "print(1 + 1)"}}'
    fin = '{"name": "finish", "arguments": {"answer": "2"}}'
    text = f"Thought: add them\nAction: {call}\nObservation: 2\nThought: done\nAction: {fin}"
    # offsets counted from the literal: "Thought: " is 9 chars, "add them" 8, "\nAction: " 9 ...
    a0 = 9 + 8 + 9
    o0 = a0 + len(call) + len("\nObservation: ")
    r1 = o0 + 1 + len("\nThought: ")
    a1 = r1 + 4 + len("\nAction: ")
    assert segment(text) == [(9, 17, REASON), (a0, a0 + len(call), ACT), (o0, o0 + 1, OBSERVATION),
                             (r1, r1 + 4, REASON), (a1, a1 + len(fin), ACT)]


@pytest.mark.parametrize("text,want", [
    ("**Thought:**  Plan it.\n**Action:** {\"name\": \"f\"}",
     [(REASON, "Plan it."), (ACT, '{"name": "f"}')]),
    ("THOUGHT - caps\nACTION - {\"name\": \"f\"}\nOBSERVATION - out",
     [(REASON, "caps"), (ACT, '{"name": "f"}'), (OBSERVATION, "out")]),
    ("thought: a\nmore lines\n\nstill thinking\naction:\n```json\n{\"name\": \"f\"}\n```\n",
     [(REASON, "a\nmore lines\n\nstill thinking"), (ACT, '{"name": "f"}')]),
    ('Action: {"name": "python", "arguments": {"code": "print(\'}\\n{\')"}}',
     [(ACT, '{"name": "python", "arguments": {"code": "print(\'}\\n{\')"}}')]),
    ('intro text\nThought: x', [(REASON, "intro text"), (REASON, "x")]),
    ('Thought: x\nAction: {"name": "finish", "arguments": {"answer": "a', [(REASON, "x"), (ACT, '{"name": "finish", "arguments": {"answer": "a')]),
    ("Thought: 日本語 🙂 ünïcödé", [(REASON, "日本語 🙂 ünïcödé")]),
    ("Thought: go\n{\"name\": \"python\", \"arguments\": {}}\nObservation: ok",
     [(REASON, "go"), (ACT, '{"name": "python", "arguments": {}}'), (OBSERVATION, "ok")]),
    ("Thought: a set\n{1, 2}\nend", [(REASON, "a set\n{1, 2}\nend")]),
    ("Thought-process: not a label", [(REASON, "Thought-process: not a label")]),
    ("Thought:\nAction:", []),
])
def test_messy_inputs(text, want):
    assert _texts(text, segment(text)) == want


def test_label_like_line_inside_valid_json_stays_in_the_action():
    call = '{"name": "python",\n"arguments": {"code": "x"},\n"note":\n"Observation: not one"}'
    text = f"Action: {call}\nObservation: real"
    assert _texts(text, segment(text)) == [(ACT, call), (OBSERVATION, "real")]


def _load_fixture():
    return [json.loads(line) for line in FIXTURE.read_text(encoding="utf-8").splitlines()]


def test_annotated_set_accuracy():
    recs = _load_fixture()
    assert len(recs) >= 100 and sum(r["source"] == "hand" for r in recs) >= 20
    reports = [span_accuracy(segment(r["text"]), [tuple(s) for s in r["spans"]], r["text"]) for r in recs]
    total = aggregate_accuracy(reports)
    print(f"\nannotated set: {total['texts']} trajectories, char accuracy {total['char_accuracy']:.4f}, "
          f"span P/R/F1 {total['span_precision']:.4f}/{total['span_recall']:.4f}/{total['span_f1']:.4f}")
    assert total["char_accuracy"] >= 0.95
    assert total["span_f1"] >= 0.90


def test_fixture_is_what_the_script_writes(tmp_path):
    spec = importlib.util.spec_from_file_location("mk", ROOT / "scripts" / "make_annotated_trajectories.py")
    mk = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mk)
    assert mk.build() == _load_fixture()


def test_span_accuracy_hand_counted():
    text = "abcdefghij"
    gold = [(0, 4, REASON), (6, 10, ACT)]
    pred = [(0, 3, REASON), (5, 10, ACT)]
    # labelled by either: 0-3 and 5-9 = 9 chars; agree on 0-2 and 6-9 = 7; no exact span
    r = span_accuracy(pred, gold, text)
    assert (r["labelled_chars"], r["correct_chars"], r["exact_spans"]) == (9, 7, 0)
    assert r["char_accuracy"] == pytest.approx(7 / 9) and r["span_f1"] == 0.0
    wrong_label = span_accuracy([(0, 4, ACT), (6, 10, ACT)], gold, text)
    assert wrong_label["char_accuracy"] == pytest.approx(4 / 8)
    assert wrong_label["span_precision"] == 0.5 and wrong_label["span_recall"] == 0.5
    assert span_accuracy(gold, gold, text)["span_f1"] == 1.0
    both = aggregate_accuracy([r, span_accuracy(gold, gold, text)])
    assert both["char_accuracy"] == pytest.approx((7 + 8) / (9 + 8))
    with pytest.raises(ValueError, match="overlap|before the previous"):
        span_accuracy([(0, 5, REASON), (4, 6, ACT)], gold, text)


# --- fuzz -------------------------------------------------------------------------------------

ATOMS = ["Thought", "thought", "THOUGHTS", "Action", "action", "ACTION", "Observation", "observation",
         ":", "：", " - ", " — ", "-", "**", "__", "*", "_", "#", "### ", "> ", "1", " 2",
         "\n", "\n", "\r\n", " ", "  ", "\t", "\u00a0", "\u2003", "\x00", "\ud800",
         "{", "}", "{", "}", "[", "]", '"', "'", "\\", '\\"', "```", "```json\n", "`",
         '"name"', '"name": ', '"python"', '"arguments": ', ",", "x", "print(", ")", "é", "日本", "🙂",
         '{"name": "f", "arguments": {}}', '{"a": "}"}', "Thought: ", "\nAction: ", "\nObservation: "]


def _fuzz_inputs(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    out: list[str] = []
    # label/brace/fence soup: atoms joined
    k = n // 2
    lengths = rng.integers(0, 40, size=k)
    idx = rng.integers(0, len(ATOMS), size=int(lengths.sum()))
    atoms = np.array(ATOMS, dtype=object)[idx]
    pos = 0
    for ln in lengths:
        out.append("".join(atoms[pos:pos + ln]))
        pos += ln
    # random unicode, lone surrogates included
    m = n // 4
    lengths = rng.integers(0, 60, size=m)
    cps = rng.integers(0, 0x110000, size=int(lengths.sum()), dtype=np.uint32)
    ascii_heavy = rng.random(cps.size) < 0.5  # half printable ASCII so labels can still appear
    cps[ascii_heavy] = rng.integers(9, 127, size=int(ascii_heavy.sum()), dtype=np.uint32)
    big = cps.astype("<u4").tobytes().decode("utf-32-le", "surrogatepass")
    pos = 0
    for ln in lengths:
        out.append(big[pos:pos + ln])
        pos += ln
    # mutated real trajectories: random cut and splice of the annotated texts
    texts = [r["text"] for r in _load_fixture()]
    rest = n - len(out)
    picks = rng.integers(0, len(texts), size=(rest, 2))
    cuts = rng.random((rest, 4))
    for (i, j), (a, b, c, d) in zip(picks, cuts, strict=True):
        t, u = texts[i], texts[j]
        out.append(t[: int(a * len(t))] + u[int(b * len(u)):] + t[int(c * len(t)): int(c * len(t)) + int(d * 50)])
    return out


def test_fuzz_never_raises_and_spans_are_valid():
    inputs = _fuzz_inputs(100_000)
    assert len(inputs) == 100_000
    t0 = time.perf_counter()
    n_spans = 0
    for text in inputs:
        spans = segment(text)
        why = validate_spans(spans, len(text))
        assert why is None, (text, spans, why)
        for s, e, _ in spans:  # content only: never starts or ends with whitespace
            assert not text[s].isspace() and not text[e - 1].isspace(), (text, spans)
        n_spans += len(spans)
    print(f"\nfuzz: 100000 inputs, {n_spans} spans, {time.perf_counter() - t0:.1f} s")


def test_fuzz_pathological_nesting():
    for text in ["{" * 100_000, "Action: " + "[" * 50_000, "Action: {" + '"' * 10_001, "Thought:" * 5000,
                 "Action: ```" * 3000, "\n" * 10_000 + "Action: {}"]:
        assert validate_spans(segment(text), len(text)) is None


# --- segment_records --------------------------------------------------------------------------

def test_segment_records(tmp_path):
    src = tmp_path / "in.jsonl"
    good = {"id": "a", "text": 'Thought: t\nAction: {"name": "f"}', "extra": [1]}
    src.write_text("\n".join([json.dumps(good), "", "{not json", "[1, 2]", json.dumps({"id": "b"}),
                              json.dumps({"text": 5}), json.dumps({"text": "no labels"})]) + "\n")
    out = tmp_path / "sub" / "out.jsonl"
    rep = segment_records(src, out)
    assert rep["records"] == 2 and rep["malformed"] == 4
    assert rep["spans"] == {REASON: 2, ACT: 1, OBSERVATION: 0} and rep["records_without_action"] == 1
    assert [e.split(": ", 1)[0] for e in rep["errors"]] == [f"{src}:{n}" for n in (3, 4, 5, 6)]
    assert "invalid JSON" in rep["errors"][0] and "JSON object" in rep["errors"][1]
    assert "'text' is missing" in rep["errors"][2] and "'text' is a int" in rep["errors"][3]
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert lines[0] == {**good, "spans": [[9, 10, REASON], [19, 32, ACT]]}
    assert lines[1]["spans"] == [[0, 9, REASON]]


def test_segment_records_missing_file(tmp_path):
    with pytest.raises(InputDataError, match="no such trajectory file"):
        segment_records(tmp_path / "nope.jsonl", tmp_path / "out.jsonl")
