"""Process-step span extractors on hand-written trajectories (expected offsets located with
str.index on the literal text, not by the code under test)."""
import random

from components.agent.process import DEFAULT_TOOLS, extract_process_spans

PRODUCT = (
    "Thought: I will compute the product.\n"
    'Action: {"name": "python", "arguments": {"code": "print(17 * 23)"}}\n'
    "Observation: 391\n"
    "Thought: The product is 391, so I am done.\n"
    'Action: {"name": "finish", "arguments": {"answer": "391"}}'
)


def _at(text, needle, start=0):
    i = text.index(needle, start)
    return i, i + len(needle)


def test_tool_name_and_argument_spans_are_the_json_values():
    ps = extract_process_spans(PRODUCT, DEFAULT_TOOLS)
    py = _at(PRODUCT, "python")
    fin = _at(PRODUCT, "finish")
    assert ps.tool_names == [(*py, 0), (*fin, 2)]          # registry indices: python 0, finish 2
    args1 = _at(PRODUCT, '{"code": "print(17 * 23)"}')
    args2 = _at(PRODUCT, '{"answer": "391"}')
    assert ps.arguments == [args1, args2]
    assert (ps.actions, ps.invalid_json, ps.unknown_tools) == (2, 0, 0)


def test_integration_is_new_observation_content_reused_in_a_later_thought_and_the_answer():
    ps = extract_process_spans(PRODUCT, DEFAULT_TOOLS)
    obs_end = PRODUCT.index("391") + 3
    in_thought = _at(PRODUCT, "391", obs_end)
    in_answer = _at(PRODUCT, '"391"', in_thought[1])
    # 17 and 23 were in the agent's own code before the Observation: never integration.
    assert ps.integration == [(*in_thought, 0), (in_answer[0] + 1, in_answer[1] - 1, 0)]


def test_words_known_before_the_observation_do_not_count_and_case_matters():
    text = ("Thought: I need the population of Oslo.\n"
            'Action: {"name": "retrieve", "arguments": {"query": "Oslo population", "k": 1}}\n'
            "Observation: Oslo had 709037 inhabitants; Population counted by Statistics Norway.\n"
            "Thought: Oslo has 709037 inhabitants according to Statistics Norway.\n"
            'Action: {"name": "finish", "arguments": {"answer": "709037"}}')
    ps = extract_process_spans(text)
    obs_end = text.index("Norway.") + 7
    # "Oslo" and "population" were in the thought / query before; "Population" differs in case
    # from the later "population"-free thought; "has"/"according" are not in the Observation.
    # "709037 inhabitants" (18 chars) and "Statistics Norway." (18) are matching blocks >= 12, so
    # their inner space / final period are covered and each is one span.
    want = [(*_at(text, "709037 inhabitants", obs_end), 0), (*_at(text, "Statistics Norway.", obs_end), 0)]
    ans = _at(text, '"709037"', obs_end)
    want.append((ans[0] + 1, ans[1] - 1, 0))
    assert ps.integration == want


def test_long_matching_block_covers_punctuation_between_words():
    text = ("Thought: write the file.\n"
            'Action: {"name": "python", "arguments": {"code": "save()"}}\n'
            "Observation: saved to /var/cache/out-file_v2.txt\n"
            "Thought: done: /var/cache/out-file_v2.txt exists.")
    ps = extract_process_spans(text)
    path = _at(text, "/var/cache/out-file_v2.txt", text.index("Thought: done"))
    assert ps.integration == [(*path, 0)]
    # with a block length above the path's, only the words / numbers are marked, in pieces
    short = extract_process_spans(text, min_block_chars=40)
    assert len(short.integration) > 1
    assert all(path[0] <= a < b <= path[1] for a, b, _ in short.integration)


def test_latest_observation_owns_a_piece_both_returned():
    text = ("Thought: a\n"
            'Action: {"name": "python", "arguments": {"code": "f()"}}\n'
            "Observation: 4242\n"
            "Thought: first 4242\n"
            'Action: {"name": "python", "arguments": {"code": "g()"}}\n'
            "Observation: 4242 again\n"
            "Thought: still 4242")
    ps = extract_process_spans(text)
    first = _at(text, "4242", text.index("first"))
    last = _at(text, "4242", text.index("still"))
    # the second Observation's 4242 appeared before it (in the first): only the first owns it
    assert ps.integration == [(*first, 0), (*last, 0)]


def test_unknown_tool_and_invalid_json_are_counted():
    text = ('Action: {"name": "browse", "arguments": {"url": "x"}}\n'
            "Observation: error\n"
            'Action: {"name": "python", "arguments": {"code": "x"}\n'   # one closing brace short
            "Observation: error")
    ps = extract_process_spans(text)
    second = text.index("python")
    assert ps.tool_names == [(second, second + 6, 0)]    # the fallback still finds the name
    assert ps.arguments == []                            # invalid JSON teaches nothing
    assert (ps.actions, ps.invalid_json, ps.unknown_tools) == (2, 1, 1)


def test_nested_name_key_fenced_json_and_messy_labels():
    text = ("**thought**: look it up\n"
            "ACTION : ```json\n"
            '{"arguments": {"query": "x", "name": "python"}, "name": "retrieve"}\n'
            "```\n"
            "observation: nothing")
    ps = extract_process_spans(text)
    top = text.index('"retrieve"') + 1
    assert ps.tool_names == [(top, top + 8, 1)]
    assert ps.arguments == [_at(text, '{"query": "x", "name": "python"}')]


def test_segmenter_spans_replace_the_label_search():
    text = 'I add.\n{"name": "python", "arguments": {"code": "1+1"}}\n2\nso 2 it is'
    a = _at(text, '{"name"')[0]
    b = text.index("}}") + 2
    spans = [[0, 6, "REASON"], [a, b, "ACT"], [b + 1, b + 2, "OBSERVATION"], [b + 3, len(text), "REASON"]]
    ps = extract_process_spans(text, spans=spans)
    assert ps.tool_names == [(*_at(text, "python"), 0)]
    assert ps.integration == [(*_at(text, "2", b + 3), 0)]
    assert extract_process_spans(text).tool_names == []   # no labels, no spans: nothing found


def test_finish_answer_with_escapes_is_the_raw_inner_text():
    text = ('Action: {"name": "python", "arguments": {"code": "print(repr(s))"}}\n'
            'Observation: "value42x"\n'
            'Action: {"name": "finish", "arguments": {"answer": "\\"value42x\\""}}')
    ps = extract_process_spans(text)
    # the word inside the escaped quotes (raw text offsets); no block >= 12 chars exists here
    word = _at(text, "value42x", text.index("finish"))
    assert ps.integration == [(*word, 0)]


def test_never_raises_on_random_text():
    rng = random.Random(0)
    parts = ["Thought:", "Action:", "Observation:", "{", "}", '"name"', ":", '"python"', '"finish"',
             '"arguments"', '"answer"', ",", "\n", " ", "[", "]", '"', "\\", "é", "391", "x", "```"]
    for _ in range(2000):
        text = "".join(rng.choice(parts) for _ in range(rng.randint(0, 40)))
        spans = [[rng.randint(-2, 50), rng.randint(-2, 50), rng.choice(["REASON", "ACT", "x", 3])]
                 for _ in range(rng.randint(0, 3))] if rng.random() < 0.3 else None
        ps = extract_process_spans(text, spans=spans)
        for a, b, *_ in ps.tool_names + ps.arguments + ps.integration:
            assert 0 <= a < b <= len(text)
    assert extract_process_spans("").actions == 0
