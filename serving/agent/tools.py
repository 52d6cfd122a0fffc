"""The agent's tools: ``python`` (Step 6 sandbox), ``retrieve`` (BM25 over a local corpus) and
``finish``, behind one call shape: ``run(arguments: dict) -> ToolResult``. The server's agent
mode runs them; components/agent/tools.py re-exports them for trajectory generation.

A tool never raises for what the agent asked: an unknown tool name, arguments of the wrong
shape, a program that crashes or times out all come back as ``ToolResult(ok=False, ...)`` with
a one-line ``error`` the loop shows to the teacher as the Observation and counts as a tool error.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from common.errors import InputDataError, UserError
from sandbox import SandboxLimits, run_python

TOOL_NAMES = ("python", "retrieve", "finish")  # contract names (issue 11)
CORPUS_SUFFIXES = (".txt", ".md", ".py")


@dataclass(frozen=True)
class ToolResult:
    ok: bool
    output: str
    error: str | None = None


def _truncate(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n... [truncated: {len(text) - limit} more characters]"


def _bad(error: str) -> ToolResult:
    return ToolResult(False, "", error)


class PythonTool:
    """Runs ``arguments["code"]`` as a fresh program in the sandbox (sandbox.run_python).

    Output: stdout, then stderr, then an ``[exit status N]`` line, cut to ``max_output_chars``.
    ok only when the program exited 0; a non-zero exit, a timeout, a memory or output-limit kill
    are ok=False (the agent's call did not succeed) with the same output, so the teacher sees
    the traceback. A sandbox that cannot start is ok=False too (named in the error)."""

    name = "python"
    description = ('Run Python code in a fresh sandboxed interpreter (no network, no files kept). '
                   'Arguments: {"code": str}. Returns stdout, stderr and the exit status; print what you '
                   'want to see.')

    def __init__(self, limits: SandboxLimits = SandboxLimits(timeout_s=5.0, memory_mb=1024, output_bytes=65536),
                 max_output_chars: int = 2000, isolation: str | None = None):
        self.limits, self.max_output_chars, self.isolation = limits, max_output_chars, isolation

    def run(self, arguments: dict) -> ToolResult:
        code = arguments.get("code") if isinstance(arguments, dict) else None
        if not isinstance(code, str) or not code.strip():
            return _bad('python: arguments must be {"code": <non-empty string>}')
        extra = sorted(set(arguments) - {"code"})
        if extra:
            return _bad(f"python: unknown argument(s) {', '.join(extra)} (only 'code')")
        try:
            r = run_python(code, limits=self.limits, isolation=self.isolation)
        except (RuntimeError, OSError, UserError) as e:  # the sandbox itself failed, not the code
            return _bad(f"python: sandbox failure: {type(e).__name__}: {e}")
        parts = [r.stdout.rstrip("\n")] if r.stdout else []
        if r.stderr:
            parts.append(r.stderr.rstrip("\n"))
        parts.append(f"[exit status {r.returncode}]" if r.returncode is not None else f"[{r.status}]")
        output = _truncate("\n".join(parts), self.max_output_chars)
        if r.status == "ok":
            return ToolResult(True, output)
        reason = {"timeout": f"timed out after {self.limits.timeout_s:g} s",
                  "memory": f"out of memory ({self.limits.memory_mb} MiB)",
                  "output_limit": f"output limit ({self.limits.output_bytes} bytes) exceeded",
                  "killed": "killed by a signal"}.get(r.status, f"exit status {r.returncode}")
        return ToolResult(False, output, f"python: {reason}")


def _passages(doc_id: str, text: str, max_chars: int) -> list[tuple[str, str]]:
    """Split one document into passages of at most ~max_chars at blank lines (a paragraph longer
    than that is its own passage, cut to max_chars). Ids: doc_id, or doc_id#i when split."""
    paras = [p.strip() for p in text.split("\n\n") if p.strip()]
    chunks, cur = [], ""
    for p in paras:
        if cur and len(cur) + 2 + len(p) > max_chars:
            chunks.append(cur)
            cur = ""
        cur = f"{cur}\n\n{p}" if cur else p
    if cur:
        chunks.append(cur)
    chunks = [c[:max_chars] for c in chunks]
    if len(chunks) <= 1:
        return [(doc_id, chunks[0])] if chunks else []
    return [(f"{doc_id}#{i}", c) for i, c in enumerate(chunks)]


class RetrieveTool:
    """BM25 (library ``bm25s``, Lucene variant, English stopwords) over the passages of a corpus
    of (doc_id, text) pairs; the index is built once here. ``{"query": str, "k": int}`` returns
    the top-k passages with a positive score, each as ``[id] text``."""

    name = "retrieve"
    description = ('Search the local document corpus (BM25). Arguments: {"query": str, "k": int (optional, '
                   'default 3)}. Returns the best matching passages, each prefixed by its [id].')

    def __init__(self, documents: Sequence[tuple[str, str]], *, default_k: int = 3, max_k: int = 10,
                 passage_chars: int = 1000):
        import bm25s

        self.passages = [p for doc_id, text in documents for p in _passages(doc_id, text, passage_chars)]
        if not self.passages:
            raise InputDataError("retrieve: the corpus has no non-empty documents")
        self.default_k, self.max_k = default_k, max_k
        self._bm25s = bm25s
        self._index = bm25s.BM25()
        self._index.index(bm25s.tokenize([t for _, t in self.passages], stopwords="en", show_progress=False),
                          show_progress=False)

    def search(self, query: str, k: int) -> list[tuple[str, str, float]]:
        """[(passage id, text, score)], best first, scores > 0 only."""
        tokens = self._bm25s.tokenize([query], stopwords="en", return_ids=False, show_progress=False)
        known = [t for t in tokens[0] if t in self._index.vocab_dict]
        if not known:  # no query word is in the corpus: nothing can score
            return []
        docs, scores = self._index.retrieve([known], k=min(k, len(self.passages)), show_progress=False)
        return [(self.passages[int(i)][0], self.passages[int(i)][1], float(s))
                for i, s in zip(docs[0], scores[0], strict=True) if s > 0]

    def run(self, arguments: dict) -> ToolResult:
        if not isinstance(arguments, dict):
            return _bad('retrieve: arguments must be {"query": str, "k": int}')
        query, k = arguments.get("query"), arguments.get("k", self.default_k)
        if not isinstance(query, str) or not query.strip():
            return _bad('retrieve: "query" must be a non-empty string')
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.max_k:
            return _bad(f'retrieve: "k" must be an integer in 1..{self.max_k}, got {k!r}')
        extra = sorted(set(arguments) - {"query", "k"})
        if extra:
            return _bad(f"retrieve: unknown argument(s) {', '.join(extra)} (only 'query', 'k')")
        hits = self.search(query, k)
        if not hits:
            return ToolResult(True, "No passage matched the query.")
        return ToolResult(True, "\n\n".join(f"[{pid}] {text}" for pid, text, _ in hits))


class FinishTool:
    """Ends the trajectory: ``{"answer": str}``; output is the answer."""

    name = "finish"
    description = ('Give the final answer and stop. Arguments: {"answer": str}. For a coding task the answer '
                   'is the complete function source.')

    def run(self, arguments: dict) -> ToolResult:
        answer = arguments.get("answer") if isinstance(arguments, dict) else None
        if not isinstance(answer, str):
            return _bad('finish: arguments must be {"answer": <string>}')
        extra = sorted(set(arguments) - {"answer"})
        if extra:
            return _bad(f"finish: unknown argument(s) {', '.join(extra)} (only 'answer')")
        return ToolResult(True, answer)


def build_tools(corpus: Sequence[tuple[str, str]] | None = None, *, python: PythonTool | None = None) -> dict:
    """{name: tool}: python and finish always, retrieve when a corpus is given."""
    tools = {"python": python or PythonTool(), "finish": FinishTool()}
    if corpus:
        tools["retrieve"] = RetrieveTool(corpus)
    return {n: tools[n] for n in TOOL_NAMES if n in tools}


def call_tool(tools: Mapping[str, object], name, arguments) -> ToolResult:
    """Run one tool call; an unknown name or non-dict arguments are ok=False, never a crash."""
    if not isinstance(name, str) or name not in tools:
        return _bad(f"unknown tool {name!r}; available: {', '.join(tools)}")
    if not isinstance(arguments, dict):
        return _bad(f"{name}: arguments must be a JSON object, got {type(arguments).__name__}")
    return tools[name].run(arguments)


def describe_tools(tools: Mapping[str, object]) -> str:
    """One line per tool, for the system prompt."""
    return "\n".join(f"- {name}: {tool.description}" for name, tool in tools.items())


# ---- corpora ----

def load_corpus(path: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """(doc_id, text) pairs from an ingest artifact (a folder with Split-*/data_tfrecord-*.gz:
    ids are the documents' paths) or from a folder of .txt/.md/.py files (ids: paths relative to
    it), in a stable order. InputDataError when nothing readable is there."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise InputDataError(f"{path}: corpus must be a folder (ingest output or .txt/.md/.py files)")
    shards = sorted(glob.glob(os.path.join(path, "Split-*", "data_tfrecord-*")))
    docs = _ingest_documents(shards) if shards else _folder_documents(path)
    if not docs:
        raise InputDataError(f"{path}: no documents (expected ingest shards or {'/'.join(CORPUS_SUFFIXES)} files)")
    return docs


def _ingest_documents(shards: list[str]) -> list[tuple[str, str]]:
    """Documents of ingest's GZIP TFRecord shards (tf.train.Example with text / path / doc_id
    bytes features, components/ingest/document.to_example); read here with TF alone because
    serving may not import components/."""
    import tensorflow as tf
    from tensorflow.core.example import example_pb2

    out = []
    for shard in shards:
        try:
            records = [r.numpy() for r in tf.data.TFRecordDataset(shard, compression_type="GZIP")]
        except Exception as e:  # noqa: BLE001 - TF raises its own error types for a corrupt file
            raise InputDataError(f"{shard}: cannot read ingest shard: {type(e).__name__}: {e}") from e
        for rec in records:
            f = example_pb2.Example.FromString(rec).features.feature
            try:
                text = f["text"].bytes_list.value[0].decode("utf-8")
                path = f["path"].bytes_list.value[0].decode("utf-8") if f["path"].bytes_list.value else ""
                doc_id = f["doc_id"].bytes_list.value[0].decode("utf-8") if f["doc_id"].bytes_list.value else ""
            except (IndexError, UnicodeDecodeError) as e:
                raise InputDataError(f"{shard}: a record is not an ingest document ({type(e).__name__}: {e})") from e
            out.append((path or doc_id, text))
    return out


def _folder_documents(root: str) -> list[tuple[str, str]]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.endswith(CORPUS_SUFFIXES):
                continue
            full = os.path.join(dirpath, name)
            try:
                with open(full, encoding="utf-8") as f:
                    text = f.read()
            except UnicodeDecodeError as e:
                raise InputDataError(f"{full}: not UTF-8 text ({e.reason} at byte {e.start})") from e
            if text.strip():
                out.append((os.path.relpath(full, root), text))
    return out
