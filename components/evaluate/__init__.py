"""Evaluation: code completions scored by running their unit tests in the sandbox (pass@k)."""
