"""Run untrusted Python (evaluation, GRPO rewards, the agent's Python tool) in a sandbox:
rlimits, a wall-clock timeout that kills every process an execution started, a private work
dir, a scrubbed environment, no network, capped output. See docs/sandbox.md.

A bottom layer like `common`: it imports only the stdlib and `common`, so any package may use it.
"""
from sandbox.isolation import isolation_level
from sandbox.limits import ExecResult, SandboxLimits
from sandbox.pool import SandboxPool
from sandbox.run import run_python

__all__ = ["ExecResult", "SandboxLimits", "SandboxPool", "isolation_level", "run_python"]
