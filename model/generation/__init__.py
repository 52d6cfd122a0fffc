"""Cached generation: prefill + incremental decode, sampling controls, MTP speculative decoding."""
from model.generation.config import GenerationConfig
from model.generation.generate import GenerationResult, generate, left_pad, prefill
from model.generation.speculative import speculative_generate

__all__ = ["GenerationConfig", "GenerationResult", "generate", "left_pad", "prefill", "speculative_generate"]
