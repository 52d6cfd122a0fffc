"""seekline model core: DeepSeek-V3 (MLA, DeepSeekMoE, YaRN, MTP) and dense GQA in TF/Keras.

`import model` stays light: config, errors and parameter counting are plain Python; anything that
needs TensorFlow (building, loading, generating) is imported on first use.

Public API:
    ModelConfig, ConfigError, CheckpointError, GenerationError
    build_model(config, seed=None) -> DecoderLM
    load_hf_checkpoint(path, with_mtp=None) -> DecoderLM
    save_hf_checkpoint(model, out_dir, dtype="float32", max_shard_bytes=None) -> str
    import_hf_checkpoint(hf_dir, out_dir, dtype="auto") -> dict
    count_params(config_json_path_or_dict) -> {"total", "activated", "mtp"}
    generate(model, prompts, GenerationConfig) / GenerationConfig   (model.generation)
    speculative_generate(model, prompts, GenerationConfig, num_draft=k)   (greedy, MTP drafts)
"""
from model.config import ModelConfig, RopeScaling, list_presets
from model.errors import CheckpointError, ConfigError, GenerationError
from model.params import count_params

__all__ = ["ModelConfig", "RopeScaling", "list_presets", "ConfigError", "CheckpointError",
           "GenerationError", "count_params", "build_model", "load_hf_checkpoint",
           "save_hf_checkpoint", "import_hf_checkpoint", "generate", "GenerationConfig",
           "speculative_generate"]

_LAZY = {
    "build_model": ("model.decoder", "build_model"),
    "DecoderLM": ("model.decoder", "DecoderLM"),
    "load_hf_checkpoint": ("model.checkpoint.hf", "load_hf_checkpoint"),
    "save_hf_checkpoint": ("model.checkpoint.hf", "save_hf_checkpoint"),
    "import_hf_checkpoint": ("model.checkpoint.hf", "import_hf_checkpoint"),
    "generate": ("model.generation", "generate"),
    "GenerationConfig": ("model.generation", "GenerationConfig"),
    "speculative_generate": ("model.generation", "speculative_generate"),
}


def __getattr__(name):
    if name in _LAZY:
        import importlib
        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'model' has no attribute {name!r}")
