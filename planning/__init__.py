"""Capacity planning: memory per GPU, step time and the parallelism a model needs (plan.py)."""
