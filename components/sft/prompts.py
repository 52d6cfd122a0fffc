"""Prompt templates the teacher sees when it writes cold-start SFT data (plain data + builders).

Three prompts, each a list of chat messages that the chat template's ``encode_prompt`` turns
into the token ids the teacher was trained on (ending with the assistant header, so what the
teacher writes next is the assistant turn):

(a) instruction generation, self-instruct style (Wang et al. 2022): a few seed instructions
    sampled from the real SFT data are shown as a numbered list and the teacher is asked for one
    new task in the same spirit; its reply (the whole assistant turn) is the new instruction.
(b) answering: the generated instruction is the user turn, under a short system prompt asking
    for a direct, complete answer.
(c) reasoning: the same, but the system prompt asks for the reasoning inside
    <think> ... </think> followed by the final answer (the DeepSeek-R1 cold-start format). The
    generator also opens the assistant turn with the <think> token, as R1 does, so the teacher
    starts in the format.

The system prompts are not kept in the saved training conversations: the student should learn
the answer (and reasoning) format itself, not to need the instruction that asked for it.
"""

from __future__ import annotations

from collections.abc import Sequence

from components.sft.formats import Message
from components.sft.synthetic_filters import THINK_CLOSE, THINK_OPEN

INSTRUCTION_SYSTEM = (
    "You write tasks for training a helpful assistant. Each task is a single, self-contained "
    "request a user could send: a question, a coding problem or an instruction."
)

# {examples} is a numbered list "1. ...\n2. ..." of the seed instructions.
INSTRUCTION_USER = (
    "Here are some example tasks:\n\n{examples}\n\n"
    "Write one new task that is different from all of these but in the same spirit. "
    "Reply with the task only, without numbering, answer or commentary."
)

ANSWER_SYSTEM = (
    "You are a helpful assistant. Answer the user's request directly, correctly and completely. "
    "Put any Python code in a ```python code block."
)

REASONING_SYSTEM = (
    "You are a helpful assistant that thinks before answering. First reason step by step "
    f"inside {THINK_OPEN} ... {THINK_CLOSE}, then write the final answer after {THINK_CLOSE}. "
    "Put any Python code in a ```python code block."
)


def instruction_messages(seeds: Sequence[str]) -> list[Message]:
    """(a) Ask for one new task, showing the seed instructions as a numbered list."""
    if not seeds:
        raise ValueError("instruction_messages needs at least one seed instruction")
    examples = "\n".join(f"{i}. {s.strip()}" for i, s in enumerate(seeds, start=1))
    return [Message("system", INSTRUCTION_SYSTEM),
            Message("user", INSTRUCTION_USER.format(examples=examples))]


def answer_messages(instruction: str) -> list[Message]:
    """(b) Ask for a direct answer to a generated instruction."""
    return [Message("system", ANSWER_SYSTEM), Message("user", instruction)]


def reasoning_messages(instruction: str) -> list[Message]:
    """(c) Ask for reasoning in <think> ... </think>, then the final answer."""
    return [Message("system", REASONING_SYSTEM), Message("user", instruction)]
