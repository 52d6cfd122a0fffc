"""Instruction data from Python source: documented functions → "write this function" conversations.

`make run` needs SFT data with no network. The corpus it pretrains on is Python source, so this
turns every suitable module-level function and public method into an example:

  user       Write a Python function `name(args) -> ret` that matches this description:

             <the docstring, cleaned>
  assistant  ```python
             <the function's source: decorators, signature, comments and body; docstring removed>
             ```

The docstring is removed from the answer: it is already the prompt, and leaving it in would make
the first (often longest) stretch of every target a verbatim copy of the prompt, so the loss
would mostly reward copying instead of writing the code.

Methods (of public module-level classes) are asked for as "the method `sig` of the Python class
`C`" and answered with the method's source dedented to column 0 — the stdlib documents far more
methods than free functions, so leaving them out would leave few examples.

Kept: module-level functions and methods with a docstring of at least
``min_doc_chars``, a public name (no leading underscore, no ``test``), a real body (not just
``pass`` / ``...`` / ``raise NotImplementedError``), at most ``max_lines`` lines and
``max_chars`` characters. Identical function sources are kept once. When more than
``max_examples`` qualify, the ones with the smallest hash of (seed, content) are kept, so the
selection is deterministic and independent of the input order. Functions may use names from their module
(imports, globals) that the example does not show.

A pure function over (source_name, text) pairs: the SFT phase calls it on the ingest artifact's
train and eval splits separately, so held-out code stays held out.
"""

from __future__ import annotations

import ast
import hashlib
import textwrap
from collections.abc import Iterable

from components.sft.formats import Conversation, Message

INSTRUCTION = "Write {kind} `{sig}` that matches this description:\n\n{doc}"
METHOD_INSTRUCTION = "Write the method `{sig}` of the Python class `{cls}` that matches this description:\n\n{doc}"


def _trivial(body: list[ast.stmt]) -> bool:
    if not body:
        return True
    if len(body) > 1:
        return False
    s = body[0]
    if isinstance(s, ast.Pass) or (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant)):
        return True  # pass, ..., a bare string
    if isinstance(s, ast.Raise) and s.exc is not None:
        exc = s.exc.func if isinstance(s.exc, ast.Call) else s.exc
        return isinstance(exc, ast.Name) and exc.id == "NotImplementedError"
    return False


def _signature(node: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    sig = f"{node.name}({ast.unparse(node.args)})"
    return f"{sig} -> {ast.unparse(node.returns)}" if node.returns is not None else sig


def _candidates(source_name: str, text: str, min_doc_chars: int, max_lines: int, max_chars: int,
                counts: dict[str, int]):
    """(code, conversation) of each usable function in one source text."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")  # ast's line numbers count these breaks
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):  # Python 2 files, NUL bytes
        counts["unparsable_sources"] += 1
        return
    lines = text.split("\n")
    nodes = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            nodes.append((None, node))
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            nodes += [(node.name, m) for m in node.body if isinstance(m, ast.FunctionDef | ast.AsyncFunctionDef)]
    for cls, node in nodes:
        counts["functions"] += 1
        doc = ast.get_docstring(node)  # cleaned (inspect.cleandoc)
        if not doc or len(doc) < min_doc_chars:
            counts["skipped_no_docstring"] += 1
            continue
        if node.name.startswith(("_", "test")):
            counts["skipped_private_or_test"] += 1
            continue
        doc_node, rest = node.body[0], node.body[1:]
        if _trivial(rest):
            counts["skipped_trivial"] += 1
            continue
        first = min([node.lineno] + [d.lineno for d in node.decorator_list])
        if doc_node.lineno == node.lineno or rest[0].lineno == doc_node.end_lineno:
            counts["skipped_layout"] += 1  # the docstring shares a line with other code
            continue
        kept = lines[first - 1:doc_node.lineno - 1] + lines[doc_node.end_lineno:node.end_lineno]
        code = textwrap.dedent("\n".join(kept)).rstrip()
        if node.end_lineno - first + 1 > max_lines or len(code) > max_chars:
            counts["skipped_too_long"] += 1
            continue
        if cls is not None:
            user = METHOD_INSTRUCTION.format(sig=_signature(node), cls=cls, doc=doc)
        else:
            kind = "an async Python function" if isinstance(node, ast.AsyncFunctionDef) else "a Python function"
            user = INSTRUCTION.format(kind=kind, sig=_signature(node), doc=doc)
        conv = Conversation((Message("user", user), Message("assistant", f"```python\n{code}\n```")),
                            f"{source_name}:{node.lineno}")
        yield code, conv


def instructions_from_documents(documents: Iterable[tuple[str, str]], *, max_examples: int = 2000, seed: int = 0,
                                min_doc_chars: int = 16, max_lines: int = 60, max_chars: int = 3000,
                                counts: dict[str, int] | None = None) -> list[Conversation]:
    """Instruction conversations from (source_name, python text) pairs; see the module docstring.
    ``seed`` picks which functions survive the cap (a hash of seed and content orders them).
    ``counts``, when given, receives what was seen and why functions were skipped."""
    c = {k: 0 for k in ("sources", "unparsable_sources", "functions", "skipped_no_docstring",
                        "skipped_private_or_test", "skipped_trivial", "skipped_layout", "skipped_too_long",
                        "duplicates", "candidates", "kept")}
    by_hash: dict[str, Conversation] = {}
    for name, text in documents:
        c["sources"] += 1
        for code, conv in _candidates(name, text, min_doc_chars, max_lines, max_chars, c):
            h = hashlib.sha256(code.encode("utf-8")).hexdigest()
            if h in by_hash:
                c["duplicates"] += 1
                # keep the copy with the smallest source name: independent of the input order
                if conv.source < by_hash[h].source:
                    by_hash[h] = conv
                continue
            by_hash[h] = conv
    c["candidates"] = len(by_hash)
    rank = sorted(by_hash, key=lambda h: hashlib.sha256(f"{seed}:{h}".encode()).hexdigest())
    out = [by_hash[h] for h in rank[:max_examples]]
    c["kept"] = len(out)
    if counts is not None:
        counts.update(c)
    return out


CONTINUE = "Continue this text from where it stops:\n\n{prefix}"


def continuations_from_documents(documents: Iterable[tuple[str, str]], *, max_examples: int = 2000, seed: int = 0,
                                 max_chars: int = 600, min_chars: int = 40) -> list[Conversation]:
    """"Continue this text" conversations from (source_name, text) pairs: any corpus has them.

    The fallback when a corpus has no documented functions (prose, configs, another language):
    each document's first ``max_chars`` characters, cut at line boundaries where possible, are split
    at a line boundary near the middle into the user's prefix and the assistant's continuation.
    Documents shorter than ``min_chars`` are skipped; the cap keeps the smallest hashes of
    (seed, text), so the choice is deterministic and independent of the input order.
    """
    by_hash: dict[str, Conversation] = {}
    for name, text in documents:
        text = text.replace("\r\n", "\n").replace("\r", "\n").strip("\n")
        head = text[:max_chars]
        if len(head) < len(text) and "\n" in head:
            head = head[:head.rindex("\n")]            # whole lines only
        if len(head) < min_chars:
            continue
        mid = len(head) // 2
        cut = head.rfind("\n", 0, mid + 1)
        cut = cut + 1 if cut > 0 else mid              # after a newline, else mid-line
        prefix, rest = head[:cut], head[cut:]
        if not prefix.strip() or not rest.strip():
            continue
        h = hashlib.sha256(head.encode("utf-8")).hexdigest()
        if h not in by_hash or name < by_hash[h].source:
            by_hash[h] = Conversation((Message("user", CONTINUE.format(prefix=prefix)),
                                       Message("assistant", rest)), f"{name}:1")
    rank = sorted(by_hash, key=lambda h: hashlib.sha256(f"{seed}:{h}".encode()).hexdigest())
    return [by_hash[h] for h in rank[:max_examples]]
