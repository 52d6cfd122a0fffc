"""Action-generation scoring: probes cut at "Action:" with the training tokenization, the parser,
and the rates on hand-made generations (an oracle and a broken writer in place of the model)."""
import json

import numpy as np
import pytest

from components.agent import action_eval
from components.agent.action_eval import parse_action_line, probes
from components.sft.testdata import seekline_tokenizer_dir

TEXT = ('Thought: add\n'
        'Action: {"name": "python", "arguments": {"code": "print(1+1)"}}\n'
        'Observation: 2\n'
        'Thought: got 2\n'
        'Action: {"name": "finish", "arguments": {"answer": "2"}}\n')
BROKEN = 'Thought: hmm\nAction: {"name": "python", "arguments": \nObservation: Error: bad\n'
RECORDS = [{"id": "a", "task": {"prompt": "Add one and one."}, "text": TEXT},
           {"id": "b", "task": {"prompt": "x"}, "text": BROKEN}]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from components.tokenizer.tokenizer import load

    return load(seekline_tokenizer_dir(str(tmp_path_factory.mktemp("tok"))))


def test_probes_are_the_training_tokens_up_to_each_action_label(tok):
    ps = probes(RECORDS, tok)
    # two parseable actions in record a; record b's action is not JSON: no probe
    assert [p.gold["name"] for p in ps] == ["python", "finish"] and {p.record_id for p in ps} == {"a"}
    full = "Add one and one.\n" + TEXT
    ids = tok.encode(full, add_special_tokens=False).ids
    for p, k in zip(ps, (0, 1), strict=True):
        cut = [i for i in range(len(full)) if full.startswith("Action:", i)][k] + len("Action:")
        assert p.prompt_ids == ids[:len(p.prompt_ids)]                       # a prefix of the row's tokens
        assert tok.decode(p.prompt_ids).endswith(full[:cut][-20:])
        assert len(tok.decode(ids[:len(p.prompt_ids) + 1])) > cut             # the next token is past the label
    assert probes(RECORDS, tok, max_prompt_tokens=5) == []


@pytest.mark.parametrize("text,action,valid", [
    (' {"name": "python", "arguments": {"code": "x"}}\nObservation:', {"name": "python", "arguments": {"code": "x"}}, True),
    (' {"name": "finish", "arguments": {"answer": "}"}} trailing', {"name": "finish", "arguments": {"answer": "}"}}, True),
    (' {"name": "search", "arguments": {}}', {"name": "search", "arguments": {}}, False),      # not a registry tool
    (' {"name": "python", "arguments": "x"}', {"name": "python", "arguments": "x"}, False),    # arguments not an object
    (' {"name": "python", "arguments": {"code": "x"}', None, False),                          # never closes
    (' {"name": "python",\n "arguments": {}}', None, False),                                  # breaks the line
    (' call {"name": "python", "arguments": {}}', None, False),                               # text before the JSON
    (' {"name": python}', None, False),
])
def test_parse_action_line(text, action, valid):
    assert parse_action_line(text) == (action, valid)


def _fake_generate(writer):
    def generate(model, prompts, cfg):
        from model.generation.generate import GenerationResult
        seqs, stops = [], []
        for p in prompts:
            ids = writer(p)
            seqs.append(ids[:-1])       # generate() leaves the stop token out of the sequence ...
            stops.append(ids[-1])       # ... and reports it
        return GenerationResult(seqs, ["stop"] * len(seqs), stops)
    return generate


def _gen_module():
    import importlib

    return importlib.import_module("model.generation.generate")   # the package re-exports a function of that name


class _Model:
    class cfg:      # noqa: N801 - mimics DecoderLM.cfg
        max_position_embeddings = 4096


def test_rates_on_an_oracle_and_on_broken_writers(tok, monkeypatch):
    ps = probes(RECORDS, tok)
    gold = {tuple(p.prompt_ids): p.gold for p in ps}

    def oracle(prompt):      # the teacher's own line; the stop token ends with the line break
        return tok.encode(" " + json.dumps(gold[tuple(prompt)]) + "\n", add_special_tokens=False).ids

    monkeypatch.setattr(_gen_module(), "generate", _fake_generate(oracle))
    r = action_eval.evaluate_actions(_Model(), tok, RECORDS)
    assert (r["probes"], r["tool_name_accuracy"], r["valid_json_rate"], r["exact_action_rate"]) == (2, 1.0, 1.0, 1.0)

    def right_name_cut_off(prompt):   # names the right tool, never closes the JSON
        return tok.encode(' {"name": "' + gold[tuple(prompt)]["name"] + '", "arguments": {"co\n',
                          add_special_tokens=False).ids

    monkeypatch.setattr(_gen_module(), "generate", _fake_generate(right_name_cut_off))
    r = action_eval.evaluate_actions(_Model(), tok, RECORDS)
    assert (r["tool_name_accuracy"], r["valid_json_rate"], r["exact_action_rate"]) == (1.0, 0.0, 0.0)

    def always_finish(prompt):        # valid JSON, right tool only at the finish step
        return tok.encode(' {"name": "finish", "arguments": {"answer": "2"}}\n', add_special_tokens=False).ids

    monkeypatch.setattr(_gen_module(), "generate", _fake_generate(always_finish))
    r = action_eval.evaluate_actions(_Model(), tok, RECORDS)
    assert (r["tool_name_accuracy"], r["valid_json_rate"], r["exact_action_rate"]) == (0.5, 1.0, 0.5)
    assert r["per_tool_accuracy"] == {"finish": 1.0, "python": 0.0}
    assert np.isclose(sum(r["per_tool_accuracy"].values()), 1.0)
