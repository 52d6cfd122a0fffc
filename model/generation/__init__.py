"""Cached generation: prefill + incremental decode, sampling controls."""
from model.generation.config import GenerationConfig
from model.generation.generate import GenerationResult, generate, left_pad, prefill

__all__ = ["GenerationConfig", "GenerationResult", "generate", "left_pad", "prefill"]
