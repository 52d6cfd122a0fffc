import os

import pytest

from common.errors import InputDataError
from components.agent.tools import (
    FinishTool,
    PythonTool,
    RetrieveTool,
    build_tools,
    call_tool,
    describe_tools,
    load_corpus,
)
from sandbox import SandboxLimits

CORPUS = [
    ("cats.md", "Cats are small domesticated felines. A cat purrs when content."),
    ("rust.md", "The Rust borrow checker enforces ownership rules for memory safety."),
    ("tea.txt", "Green tea is brewed from unoxidised leaves of the Camellia sinensis plant."),
    ("bm25.py", "# Okapi BM25 ranks documents by term frequency and inverse document frequency.\n"),
]


# ---- python ----

def test_python_runs_code_in_the_sandbox():
    r = PythonTool().run({"code": "import sys\nprint(6 * 7)\nprint('warn', file=sys.stderr)"})
    assert r.ok and r.error is None
    assert r.output == "42\nwarn\n[exit status 0]"


def test_python_exception_is_a_failed_result_with_the_traceback():
    r = PythonTool().run({"code": "def f():\n    raise ValueError('boom')\nf()"})
    assert not r.ok
    assert "ValueError: boom" in r.output and r.output.endswith("[exit status 1]")
    assert r.error == "python: exit status 1"


def test_python_timeout_is_a_result_not_an_exception():
    tool = PythonTool(limits=SandboxLimits(timeout_s=0.5))
    r = tool.run({"code": "while True:\n    pass"})
    assert not r.ok and r.error == "python: timed out after 0.5 s"


def test_python_output_is_truncated():
    r = PythonTool(max_output_chars=50).run({"code": "print('x' * 500)"})
    assert r.ok
    assert r.output.startswith("x" * 50 + "\n... [truncated: ")
    assert len(r.output) < 120


@pytest.mark.parametrize("args", [{}, {"code": ""}, {"code": 3}, {"code": "print(1)", "timeout": 9}])
def test_python_bad_arguments(args):
    r = PythonTool().run(args)
    assert not r.ok and r.error.startswith("python: ")


# ---- retrieve ----

def test_retrieve_returns_the_right_document():
    tool = RetrieveTool(CORPUS)
    assert tool.search("who enforces memory ownership", 2)[0][0] == "rust.md"
    assert tool.search("brewing tea leaves", 2)[0][0] == "tea.txt"
    r = tool.run({"query": "why does my cat purr?", "k": 1})
    assert r.ok and r.output == f"[cats.md] {CORPUS[0][1]}"


def test_retrieve_k_limits_and_no_match():
    tool = RetrieveTool(CORPUS)
    assert len(tool.search("the", 4)) == 0  # a stopword only: nothing scores
    assert tool.run({"query": "zebra quantum"}).output == "No passage matched the query."
    assert len(tool.search("documents memory tea cats", 10)) == 4  # k past the corpus size is clamped


@pytest.mark.parametrize("args", [{}, {"query": " "}, {"query": "tea", "k": 0}, {"query": "tea", "k": True},
                                  {"query": "tea", "k": 11}, {"query": "tea", "top": 2}])
def test_retrieve_bad_arguments(args):
    r = RetrieveTool(CORPUS).run(args)
    assert not r.ok and r.error.startswith("retrieve: ")


def test_long_documents_are_split_into_passages():
    doc = "\n\n".join(f"paragraph {i} about topic{i} " + "filler " * 20 for i in range(6))
    tool = RetrieveTool([("long.md", doc)], passage_chars=300)
    ids = [pid for pid, _ in tool.passages]
    assert len(ids) > 1 and ids[0] == "long.md#0"
    assert all(len(t) <= 300 for _, t in tool.passages)
    hit = tool.search("topic4", 1)[0]
    assert "topic4" in hit[1]


def test_empty_corpus_is_an_error():
    with pytest.raises(InputDataError, match="no non-empty documents"):
        RetrieveTool([("a", "  \n")])


# ---- corpus loading ----

def test_load_corpus_from_a_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.md").write_text("alpha text")
    (tmp_path / "sub" / "b.py").write_text("beta = 1\n")
    (tmp_path / "c.txt").write_text("   ")  # blank: skipped
    (tmp_path / "d.json").write_text("{}")  # not a corpus suffix
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "e.txt").write_text("hidden")
    assert load_corpus(tmp_path) == [("a.md", "alpha text"), (os.path.join("sub", "b.py"), "beta = 1\n")]


def test_load_corpus_errors(tmp_path):
    with pytest.raises(InputDataError, match="no documents"):
        load_corpus(tmp_path)
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe")
    with pytest.raises(InputDataError, match="bad.txt: not UTF-8"):
        load_corpus(tmp_path)
    with pytest.raises(InputDataError, match="must be a folder"):
        load_corpus(tmp_path / "bad.txt")


def test_load_corpus_from_an_ingest_artifact(tmp_path):
    from components.common.shards import shard_name, write_shard
    from components.ingest.document import Document, to_example

    docs = [Document("first doc", "x/one.md", "src", "h1"), Document("second doc", "two.txt", "src", "h2")]
    split = tmp_path / "Split-train"
    split.mkdir()
    write_shard(str(split / shard_name(0, 1)), [to_example(d) for d in docs])
    assert load_corpus(tmp_path) == [("x/one.md", "first doc"), ("two.txt", "second doc")]


# ---- finish, registry ----

def test_finish():
    assert FinishTool().run({"answer": "42"}).output == "42"
    assert not FinishTool().run({"answer": 42}).ok
    assert not FinishTool().run({"answer": "1", "why": "x"}).ok


def test_registry_unknown_tool_and_bad_arguments():
    tools = build_tools(CORPUS)
    assert list(tools) == ["python", "retrieve", "finish"]
    assert list(build_tools()) == ["python", "finish"]
    r = call_tool(tools, "browser", {"url": "x"})
    assert not r.ok and r.error == "unknown tool 'browser'; available: python, retrieve, finish"
    r = call_tool(tools, "finish", ["42"])
    assert not r.ok and r.error == "finish: arguments must be a JSON object, got list"
    assert not call_tool(tools, None, {}).ok
    assert describe_tools(tools).splitlines()[0].startswith("- python: Run Python code")
