"""Instruction examples from Python source: the exact example, what is skipped, dedup, the cap."""

import os
import sysconfig

from components.sft.formats import read_sft_files, write_jsonl
from components.sft.instructions import instructions_from_documents

SRC = '''"""A module."""
import math


@staticmethod
def hypot(a: float, b: float = 1.0) -> float:
    """Return the length of the hypotenuse
    of a right triangle with legs a and b."""
    # Pythagoras
    return math.sqrt(a * a + b * b)


def _private(x):
    """A private helper that is documented."""
    return x


def undocumented(x):
    return x + 1


def stub(x):
    """This one is not implemented yet."""
    raise NotImplementedError("later")


def test_something():
    """A test function, not an API."""
    assert True


class K:
    def method(self):
        """Methods name their class."""
        return 1


async def fetch(url, *, retries=3):
    """Fetch a URL, retrying on failure."""
    for _ in range(retries):
        return await get(url)
'''

HYPOT_USER = ("Write a Python function `hypot(a: float, b: float=1.0) -> float` that matches this description:"
              "\n\nReturn the length of the hypotenuse\nof a right triangle with legs a and b.")
HYPOT_CODE = ("```python\n@staticmethod\ndef hypot(a: float, b: float = 1.0) -> float:\n    # Pythagoras\n"
              "    return math.sqrt(a * a + b * b)\n```")


def test_the_example_and_what_is_skipped():
    counts = {}
    convs = instructions_from_documents([("m.py", SRC), ("bad.py", "print 'py2'\n")], counts=counts)
    by_source = {c.source: c for c in convs}
    assert set(by_source) == {"m.py:6", "m.py:33", "m.py:38"}
    hyp = by_source["m.py:6"].messages
    assert [m.role for m in hyp] == ["user", "assistant"]
    assert hyp[0].content == HYPOT_USER
    assert hyp[1].content == HYPOT_CODE
    assert by_source["m.py:38"].messages[0].content.startswith(
        "Write an async Python function `fetch(url, *, retries=3)`")
    assert counts["unparsable_sources"] == 1
    # the method is asked for with its class and answered dedented to column 0
    meth = by_source["m.py:33"].messages
    assert meth[0].content == ("Write the method `method(self)` of the Python class `K` that matches this "
                               "description:\n\nMethods name their class.")
    assert meth[1].content == "```python\ndef method(self):\n    return 1\n```"
    assert counts["functions"] == 7
    assert (counts["skipped_no_docstring"], counts["skipped_private_or_test"], counts["skipped_trivial"]) == (1, 2, 1)
    assert counts["kept"] == 3


def test_dedup_cap_and_order_independence():
    copies = [(f"copy{i}.py", SRC) for i in range(3)]
    counts = {}
    convs = instructions_from_documents(copies, counts=counts)
    assert counts["duplicates"] == 6 and len(convs) == 3
    assert {c.source for c in convs} == {"copy0.py:6", "copy0.py:33", "copy0.py:38"}
    assert instructions_from_documents(copies[::-1]) == convs
    one = instructions_from_documents(copies, max_examples=1)
    assert len(one) == 1 and one[0] in convs
    picks = {instructions_from_documents(copies, max_examples=1, seed=s)[0].source for s in range(8)}
    assert picks == {c.source for c in convs}  # the seed changes which function the cap keeps


def test_too_long_functions_are_skipped():
    body = "\n".join(f"    x{i} = {i}" for i in range(70))
    src = f'def big():\n    """A very long function indeed."""\n{body}\n    return x0\n'
    counts = {}
    assert instructions_from_documents([("big.py", src)], counts=counts) == []
    assert counts["skipped_too_long"] == 1
    assert len(instructions_from_documents([("big.py", src)], max_lines=100)) == 1


def test_stdlib_examples_round_trip_through_jsonl(tmp_path):
    stdlib = sysconfig.get_paths()["stdlib"]
    names = ["textwrap.py", "shlex.py", "fnmatch.py", "colorsys.py", "bisect.py"]
    sources = [(n, open(os.path.join(stdlib, n), encoding="utf-8").read()) for n in names]
    convs = instructions_from_documents(sources, max_examples=50)
    assert len(convs) >= 10
    for c in convs:
        code = c.messages[1].content
        assert code.startswith("```python\n") and code.endswith("\n```")
        compile(code[10:-4], c.source, "exec")  # the answer is valid Python on its own
    path = str(tmp_path / "inst.jsonl")
    write_jsonl(path, convs)
    assert [c.messages for c in read_sft_files([path]).conversations] == [c.messages for c in convs]


def test_continuations_split_documents_at_a_line_boundary():
    from components.sft.instructions import CONTINUE, continuations_from_documents

    text = "".join(f"line number {i}\n" for i in range(10))            # 10 lines of 14 chars
    docs = [("a.txt", text), ("short.txt", "tiny"), ("b.txt", text)]    # b duplicates a
    convs = continuations_from_documents(docs, max_chars=100, min_chars=20)
    assert len(convs) == 1 and convs[0].source == "a.txt:1"             # dedup keeps the smaller name
    user, answer = (m.content for m in convs[0].messages)
    # 100 chars cut back to whole lines: lines 0-6 without the last newline (97 chars); the middle
    # (48) falls in line 3, so the prefix is lines 0-2 (42 chars) and the answer lines 3-6
    head = "".join(f"line number {i}\n" for i in range(7))[:-1]
    prefix = "".join(f"line number {i}\n" for i in range(3))
    assert len(head) == 97 and len(prefix) == 42
    assert user == CONTINUE.format(prefix=prefix) and answer == head[42:]
    assert continuations_from_documents(docs[::-1], max_chars=100, min_chars=20) == convs
