"""GRPO phase: verifiable tasks, reward functions, rollouts, the GRPO objective and its loop."""
