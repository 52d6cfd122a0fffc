"""Generation settings (plain data; no TensorFlow import)."""
from __future__ import annotations

from dataclasses import dataclass

from model.errors import GenerationError


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 32
    # temperature 0 = greedy (argmax); > 0 samples from softmax(logits / temperature).
    temperature: float = 0.0
    top_k: int = 0          # 0 = off
    top_p: float = 1.0      # 1.0 = off
    stop_token_ids: tuple[int, ...] = ()
    pad_token_id: int = 0
    seed: int | None = None
    # MLA only: decode with the absorbed path (attend over the latent) or expand the cache.
    absorb: bool = True
    # Compile the decode model step with XLA. MoE layers run single-token steps through the
    # fixed-shape gathered-experts path (the prefill dispatch has data-dependent shapes).
    jit_compile: bool = False

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise GenerationError(f"GenerationConfig field 'max_new_tokens' must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise GenerationError(f"GenerationConfig field 'temperature' must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise GenerationError(f"GenerationConfig field 'top_k' must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise GenerationError(f"GenerationConfig field 'top_p' must be in (0, 1], got {self.top_p}")
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
