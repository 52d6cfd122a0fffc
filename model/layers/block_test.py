from model.config import ModelConfig
from model.layers.block import DecoderBlock
from model.layers.gqa import GroupedQueryAttention
from model.layers.mla import MultiHeadLatentAttention
from model.layers.mlp import SwiGLU
from model.layers.moe import MoE


def test_block_picks_layers_from_config():
    tiny = ModelConfig.from_preset("tiny")           # first_k_dense_replace = 1
    b0, b1 = DecoderBlock(tiny, 0), DecoderBlock(tiny, 1)
    assert isinstance(b0.self_attn, MultiHeadLatentAttention) and isinstance(b0.mlp, SwiGLU)
    assert isinstance(b1.mlp, MoE) and b1.is_moe
    q = DecoderBlock(ModelConfig.from_preset("tiny-qwen2"), 0)
    assert isinstance(q.self_attn, GroupedQueryAttention) and isinstance(q.mlp, SwiGLU)
    assert DecoderBlock.from_config(b1.get_config()).is_moe
