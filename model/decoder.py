"""The decoder-only language model: embedding -> blocks -> RMSNorm -> head (+ MTP modules).

`DecoderLM.call(token_ids)` returns logits (B, T, V). Training code uses `forward(...)`, which also
returns the final hidden state, per-layer router outputs (for load statistics, the bias update and
the sequence-wise aux loss) and the MTP logits — everything the trainer needs, computed in one
pass and returned rather than stashed inside the layers. Generation uses `init_cache` +
`call_cached` (see model/generation).
"""
from __future__ import annotations

import weakref
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from model.config import ModelConfig
from model.layers.attention_utils import mask_bias, positions_from_segments
from model.layers.block import DecoderBlock
from model.layers.linear import Linear
from model.layers.mtp import MTPModule
from model.layers.rmsnorm import RMSNorm
from model.layers.rope import rope_cos_sin, rope_inv_freq


@keras.saving.register_keras_serializable(package="seekline")
class Embedding(keras.layers.Layer):
    def __init__(self, vocab_size: int, hidden_size: int, initializer_range: float = 0.02, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.initializer_range = initializer_range
        self.weight = self.add_weight(shape=(vocab_size, hidden_size), name="weight",
                                      initializer=keras.initializers.RandomNormal(stddev=initializer_range))
        self.built = True

    def call(self, ids):
        return tf.gather(self.weight, ids)                                  # (B, T, D)

    def get_config(self):
        return {**super().get_config(), "vocab_size": self.vocab_size,
                "hidden_size": self.hidden_size, "initializer_range": self.initializer_range}


@keras.saving.register_keras_serializable(package="seekline")
class DecoderLM(keras.Model):
    def __init__(self, config: Any, **kwargs):
        super().__init__(**kwargs)
        cfg = ModelConfig.load(config)
        self.cfg = cfg
        self.embed_tokens = Embedding(cfg.vocab_size, cfg.hidden_size, cfg.initializer_range,
                                      name="embed_tokens")
        self.blocks = [DecoderBlock(cfg, i, name=f"layers_{i}") for i in range(cfg.num_hidden_layers)]
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, name="norm")
        self.lm_head = (None if cfg.tie_word_embeddings else
                        Linear(cfg.hidden_size, cfg.vocab_size, initializer_range=cfg.initializer_range,
                               name="lm_head"))
        self.mtp = [MTPModule(cfg, cfg.num_hidden_layers + k, name=f"mtp_{k}")
                    for k in range(cfg.num_nextn_predict_layers)]
        self.inv_freq, self.rope_attention_factor = rope_inv_freq(cfg.rope_dim, cfg.rope_theta,
                                                                  cfg.rope_scaling)
        self.built = True

    # ------------------------------------------------------------------ helpers
    def head(self, h):
        """Output head on normed hidden states (B, T, D) -> logits (B, T, V)."""
        if self.lm_head is None:
            return tf.einsum("btd,vd->btv", h, tf.cast(self.embed_tokens.weight, h.dtype))
        return self.lm_head(h)

    def rope(self, position_ids):
        return rope_cos_sin(position_ids, self.inv_freq, self.rope_attention_factor)

    @staticmethod
    def positions_from_mask(attention_mask):
        """Left-padding aware positions: the first real token of each row is position 0."""
        m = tf.cast(attention_mask, tf.int32)
        return tf.maximum(tf.cumsum(m, axis=1) - 1, 0)

    # Packed rows (components/pack): positions restart at 0 at each document (segment) start.
    positions_from_segments = staticmethod(positions_from_segments)

    def _check_length(self, token_ids):
        if token_ids.shape.rank == 2 and token_ids.shape[1] is not None \
                and token_ids.shape[1] > self.cfg.max_position_embeddings:
            raise ValueError(f"sequence of {token_ids.shape[1]} tokens exceeds the model's max "
                             f"context of {self.cfg.max_position_embeddings} (max_position_embeddings)")

    # ------------------------------------------------------------------ full-sequence forward
    def call(self, token_ids, attention_mask=None, position_ids=None, training=False, segment_ids=None):
        """token_ids (B, T) int -> logits (B, T, V). segment_ids: see `forward`.

        Called eagerly for inference (training falsy), the forward runs as a cached
        tf.function: op-by-op eager dispatch of the same graph cost ~40% more at T=1024 on
        2 cores. Training calls, and calls already inside a graph, run the plain forward.
        """
        if not training and tf.executing_eagerly():
            token_ids = tf.convert_to_tensor(token_ids)
            # checked here: after a retrace with relaxed shapes the traced forward sees T = None
            self._check_length(token_ids)
            if attention_mask is not None:
                attention_mask = tf.convert_to_tensor(attention_mask)
            if position_ids is not None:
                position_ids = tf.convert_to_tensor(position_ids)
            if segment_ids is not None:
                segment_ids = tf.convert_to_tensor(segment_ids)
            return _inference_forward(self)(token_ids, attention_mask, position_ids, segment_ids)
        return self.forward(token_ids, attention_mask, position_ids, training=training,
                            segment_ids=segment_ids)["logits"]

    def forward(self, token_ids, attention_mask=None, position_ids=None, training=False,
                return_router: bool = False, with_mtp: bool = False,
                segment_ids=None) -> dict[str, Any]:
        """One pass returning {'logits', 'hidden', 'router': [RouterOutput per MoE layer],
        'mtp_logits': [(B, T, V) per depth]}.

        Packed rows: segment_ids (B, T) int (1..n per document, 0 on padding; docs/data.md) make
        attention block-diagonal causal — a query sees only earlier keys of its own, non-zero
        segment — and position_ids, when not given, restart at 0 at each segment start. Each
        document's logits then equal a forward of that document alone (model/packing_test.py).
        Padding queries see no key at all (a finite uniform row, no NaN); their outputs are
        garbage that the losses mask (model.losses, segment_ids=...).

        mtp_logits[k-1][:, i] predicts token i+k+1; the last k+1 positions have no target (the
        input is padded with id 0 past the end) and must be masked by the loss (model.losses).
        """
        token_ids = tf.convert_to_tensor(token_ids)
        self._check_length(token_ids)
        b, t = tf.shape(token_ids)[0], tf.shape(token_ids)[1]
        if attention_mask is None:
            attention_mask = tf.ones([b, t], tf.int32)
        if segment_ids is not None:
            segment_ids = tf.convert_to_tensor(segment_ids)
        if position_ids is None:
            position_ids = (self.positions_from_mask(attention_mask) if segment_ids is None
                            else positions_from_segments(segment_ids))
        cos, sin = self.rope(position_ids)
        seq = tf.tile(tf.range(t)[None, :], [b, 1])                         # (B, T) buffer positions
        # (B, 1, T, T); with segments block-diagonal causal. The MTP modules get the same bias.
        bias = mask_bias(seq, seq, attention_mask, segment_ids, segment_ids)
        x = self.embed_tokens(token_ids)
        routers: list = []
        for blk in self.blocks:
            x, r = blk(x, cos, sin, bias, return_router=True, training=training)
            if r is not None:
                routers.append(r)
        hidden = self.norm(x)
        out: dict[str, Any] = {"logits": self.head(hidden), "hidden": hidden}
        if with_mtp and self.mtp:
            mtp_logits = []
            h = hidden
            for k, mod in enumerate(self.mtp, start=1):
                # Emb(t_{i+k}); positions past the end get id 0 and are masked by the loss, as are
                # (packed rows) positions whose t_{i+k} is in the next document: no in-document
                # position attends to them (they are the document's last k, causal), so they
                # cannot leak into a kept prediction.
                shifted = tf.concat([token_ids[:, k:], tf.zeros([b, k], token_ids.dtype)], axis=1)
                h, normed, r = mod(h, self.embed_tokens(shifted), cos, sin, bias, return_router=True,
                                   training=training)
                if r is not None:
                    routers.append(r)
                mtp_logits.append(self.head(normed))
            out["mtp_logits"] = mtp_logits
        if return_router:
            out["router"] = routers
        return out

    # ------------------------------------------------------------------ cached decoding
    def init_cache(self, batch: int, max_len: int, dtype="float32"):
        """Per-layer cache tuples (MLA: latent + k_pe; GQA: K, V), zero-filled."""
        return [blk.self_attn.init_cache(batch, max_len, dtype) for blk in self.blocks]

    def call_cached(self, token_ids, cache, write_idx, position_ids, key_valid, absorb: bool = True,
                    last_only: bool = False, fixed_shape: bool = False):
        """Run T new tokens against the cache.

        token_ids (B, T); write_idx (B, T) cache rows the tokens go to; position_ids (B, T) rope
        positions; key_valid (B, S) which cache rows hold real tokens (after this write).
        Returns (logits (B, T, V), new cache); with last_only, logits (B, 1, V) of the last
        position only (prefill keeps only that one: the norm + head over all T positions was
        T·D·V work thrown away). fixed_shape: the caller XLA-compiles this call, so one-token
        decode takes only fixed-shape ops (MoE's gathered expert path; see Block.call_cached).
        """
        s = cache[0][0].shape[1] if cache[0][0].shape[1] is not None else tf.shape(cache[0][0])[1]
        b = tf.shape(token_ids)[0]
        key_pos = tf.tile(tf.range(s)[None, :], [b, 1])                      # (B, S)
        bias = mask_bias(tf.cast(write_idx, tf.int32), key_pos, key_valid)  # (B, 1, T, S)
        cos, sin = self.rope(position_ids)
        x = self.embed_tokens(token_ids)
        new_cache = []
        for blk, c in zip(self.blocks, cache, strict=False):
            x, c = blk.call_cached(x, cos, sin, bias, c, write_idx, absorb, fixed_shape)
            new_cache.append(c)
        if last_only:
            x = x[:, -1:, :]                                                # (B, 1, D)
        return self.head(self.norm(x)), new_cache

    # ------------------------------------------------------------------ misc
    def moe_layers(self):
        """MoE layers in router-output order (main blocks, then MTP blocks)."""
        from model.layers.moe import MoE
        layers = [blk.mlp for blk in self.blocks if isinstance(blk.mlp, MoE)]
        layers += [m.block.mlp for m in self.mtp if isinstance(m.block.mlp, MoE)]
        return layers

    def get_config(self):
        return {"config": self.cfg.to_hf_dict(), "name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


_INFERENCE_FORWARD: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _inference_forward(model: DecoderLM):
    """Per-model cached tf.function of the inference forward -> logits (B, T, V).

    Kept in a module-level weak map, not on the model: a tf.function attribute would be picked up
    by tf.saved_model.save / Keras tracking. The closure holds only a weak reference to the model
    so the map does not keep it alive. reduce_retracing: after a second input shape the trace is
    relaxed to (None, None) and reused for every length.
    """
    fn = _INFERENCE_FORWARD.get(model)
    if fn is None:
        ref = weakref.ref(model)

        def run(token_ids, attention_mask, position_ids, segment_ids):
            return ref().forward(token_ids, attention_mask, position_ids, training=False,
                                 segment_ids=segment_ids)["logits"]
        fn = _INFERENCE_FORWARD[model] = tf.function(run, reduce_retracing=True)
    return fn


def build_model(config: Any, seed: int | None = None) -> DecoderLM:
    """Build a randomly initialised model from a ModelConfig / HF dict / config path / preset."""
    if seed is not None:
        keras.utils.set_random_seed(seed)
    return DecoderLM(config)


def num_weights(model: DecoderLM) -> int:
    return int(sum(np.prod(v.shape) for v in model.weights))
