"""Multi-token prediction module (DeepSeek-V3 §2.2).

Depth k combines the previous depth's hidden state h (B, T, D) with the embedding of the token
k positions ahead: h' = eh_proj([RMSNorm_e(Emb(t_{i+k})); RMSNorm_h(h_i)]) (embedding first, as in
the reference code and checkpoint), runs one decoder block, and predicts t_{i+k+1} through
shared_head.norm and the main model's output head. Embedding and head are shared with the main
model (passed in), so the module owns only its norms, eh_proj, block and shared_head.norm.
"""
from __future__ import annotations

import keras
import tensorflow as tf

from model.config import ModelConfig
from model.layers.block import DecoderBlock
from model.layers.linear import Linear
from model.layers.rmsnorm import RMSNorm


@keras.saving.register_keras_serializable(package="seekline")
class MTPModule(keras.layers.Layer):
    def __init__(self, config: dict, layer_idx: int, **kwargs):
        super().__init__(**kwargs)
        cfg = config if isinstance(config, ModelConfig) else ModelConfig.from_hf_dict(config)
        self.cfg = cfg
        self.layer_idx = layer_idx
        d = cfg.hidden_size
        self.enorm = RMSNorm(d, cfg.rms_norm_eps, name="enorm")
        self.hnorm = RMSNorm(d, cfg.rms_norm_eps, name="hnorm")
        self.eh_proj = Linear(2 * d, d, initializer_range=cfg.initializer_range, name="eh_proj")
        self.block = DecoderBlock(cfg, layer_idx, name="block")
        self.shared_head_norm = RMSNorm(d, cfg.rms_norm_eps, name="shared_head_norm")
        self.built = True

    def call(self, h, next_emb, cos, sin, bias, return_router: bool = False):
        """h (B, T, D) previous depth; next_emb (B, T, D) = Emb(t_{i+k}).

        Returns (h_k (B, T, D) for the next depth, normed (B, T, D) for the shared head[, router]).
        """
        x = self.eh_proj(tf.concat([self.enorm(next_emb), self.hnorm(h)], axis=-1))  # (B, T, D)
        x, r = self.block(x, cos, sin, bias, return_router=True)
        out = (x, self.shared_head_norm(x))
        return out + (r,) if return_router else out

    def get_config(self):
        return {**super().get_config(), "config": self.cfg.to_hf_dict(), "layer_idx": self.layer_idx}
