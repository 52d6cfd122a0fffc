"""Checkpoint IO: HF safetensors import/export and seekline's native checkpoint folder."""
from model.checkpoint.hf import (
                                 import_hf_checkpoint,
                                 load_hf_checkpoint,
                                 model_to_hf_tensors,
                                 save_hf_checkpoint,
)

__all__ = ["load_hf_checkpoint", "save_hf_checkpoint", "import_hf_checkpoint", "model_to_hf_tensors"]
