"""The server's agent loop: the served model writes Thought / Action steps, the server runs the
tools and writes the Observations, until the model calls finish or a limit stops it.

The loop does not know about HTTP or the engine: it gets an async ``complete(messages, seed)``
that returns one reply (generation stopped at "\\nObservation:"), so unit tests drive it with a
scripted generator and the server with its model. The conversation it writes is the one
trajectory generation (components/agent/loop.py run_agent) writes, so a model distilled on those
trajectories sees at serving time what it saw in training:

    system     SYSTEM_PROMPT with the tools (+ the client's own system text)
    user       the task (and earlier turns of the conversation, as the client sends them)
    assistant  Thought: ... / Action: {...}            one per step, canonical form (step_text)
    user       Observation: <tool output or error>     written by the loop, labels neutralised

Multi-turn: the result's ``messages`` are exactly the turns this request added (its steps, the
finishing step last); a client appends them and its next user message to continue the
conversation, so earlier steps and observations are in the model's context the next time.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from serving.agent.protocol import SYSTEM_PROMPT, neutralise_labels, parse_reply, step_text
from serving.agent.tools import call_tool, describe_tools

# Why a loop stopped (the response's stop_reason).
FINISH, MAX_STEPS, TIME_LIMIT, CONTEXT = "finish", "max_steps", "time_limit", "context_length"


class ContextFullError(Exception):
    """Raised by `complete` when the conversation no longer fits the model's context."""


class StepTimeoutError(Exception):
    """Raised by `complete` when its generation ran into the loop's deadline."""


@dataclass
class AgentResult:
    answer: str | None
    stop_reason: str                       # finish | max_steps | time_limit | context_length
    steps: list[dict] = field(default_factory=list)
    messages: list[dict] = field(default_factory=list)   # the turns this request added
    format_errors: int = 0
    tool_errors: int = 0
    elapsed_s: float = 0.0

    @property
    def finished(self) -> bool:
        return self.stop_reason == FINISH

    def counts(self) -> dict:
        calls = sum(s["action"] is not None for s in self.steps)
        return {"steps": len(self.steps), "tool_calls": calls, "tool_errors": self.tool_errors,
                "format_errors": self.format_errors}


def system_message(tools: Mapping[str, object], client_system: str | None = None) -> dict:
    """The agent system prompt (format + tools), with the client's own system text after it."""
    text = SYSTEM_PROMPT.format(tools=describe_tools(tools))
    if client_system:
        text += "\n\n" + client_system
    return {"role": "system", "content": text}


Complete = Callable[[list[dict], int], Awaitable[str]]


async def run_loop(complete: Complete, messages: Sequence[dict], tools: Mapping[str, object], *,
                   max_steps: int, time_limit_s: float, seed: int = 0,
                   on_step: Callable[[dict], Awaitable[None]] | None = None,
                   clean: Callable[[str], str] = lambda text: text,
                   clock: Callable[[], float] = time.monotonic) -> AgentResult:
    """Run steps until finish, `max_steps` steps, `time_limit_s` seconds of wall time (checked
    before each step and enforced inside `complete`, which raises StepTimeoutError) or a
    conversation that no longer fits the context (`complete` raises ContextFullError).

    `messages`: the system message (system_message) and the conversation so far. `complete` gets
    the whole conversation and the step's seed (seed + step index: a sampled request stays
    reproducible). Tools run in a worker thread (the sandbox blocks). A garbage reply is a format
    error and an unknown tool or bad arguments a tool error: both become an error Observation the
    model sees next step, never an exception. `on_step(step)` is awaited after each step (streaming).
    `clean(text)` is applied to everything the loop writes into the conversation (the server
    breaks chat-template control strings a tool printed, so they cannot forge a turn).
    """
    t0 = clock()
    convo = [dict(m) for m in messages]
    res = AgentResult(None, MAX_STEPS)
    for k in range(max_steps):
        if clock() - t0 >= time_limit_s:
            res.stop_reason = TIME_LIMIT
            break
        try:
            reply = await complete(convo, seed + k)
        except ContextFullError:
            res.stop_reason = CONTEXT
            break
        except StepTimeoutError:
            res.stop_reason = TIME_LIMIT
            break
        thought, action, fmt_error = parse_reply(reply)
        if action is None:
            res.format_errors += 1
            written = clean(reply.strip())
            step = {"thought": thought, "action": None, "observation": f"Error: {fmt_error}", "error": fmt_error}
        else:
            result = await asyncio.to_thread(call_tool, tools, action["name"], action["arguments"])
            written = clean(step_text(thought, action).rstrip("\n"))
            if result.ok and action["name"] == "finish":
                step = {"thought": thought, "action": action, "observation": None, "error": None}
                res.answer, res.stop_reason = result.output, FINISH
            else:
                res.tool_errors += not result.ok
                text = result.output if result.ok else "\n".join(
                    p for p in (result.output, f"Error: {result.error}") if p)
                step = {"thought": thought, "action": action, "observation": clean(neutralise_labels(text)),
                        "error": None if result.ok else result.error}
        res.steps.append(step)
        added = [{"role": "assistant", "content": written}]
        if step["observation"] is not None:
            added.append({"role": "user", "content": f"Observation: {step['observation']}"})
        convo += added
        res.messages += added
        if on_step is not None:
            await on_step({"index": len(res.steps) - 1, **step})
        if res.finished:
            break
    res.elapsed_s = clock() - t0
    return res
