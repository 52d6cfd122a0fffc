"""bf16 mixed precision (what `precision: auto` picks on a GPU) runs on CPU too: fp32 weights
and optimizer state, bf16 activations, a falling loss."""
import keras
import numpy as np
import pytest

import model
from configs.training import TrainerConfig
from training.data import open_packed
from training.lm_task import CausalLMTask
from training.loop import Trainer
from training.strategy import make_runtime
from training.testdata import write_packed


@pytest.mark.slow
def test_bf16_compute_with_fp32_master_weights(tmp_path):
    rt = make_runtime("one_device", "bf16")
    try:
        assert rt.compute_dtype == "bfloat16"
        data = open_packed(write_packed(str(tmp_path / "data"), 32, 256, train_rows=32, eval_rows=8))
        cfg = TrainerConfig(steps=8, micro_batch_size=4, lr=3e-3, warmup_steps=1, checkpoint_every=8,
                            log_every=1, eval_batches=1, precision="bf16", deterministic=False)
        mc = model.ModelConfig.load("tiny").replace(rope_scaling=None, max_position_embeddings=32,
                                                    num_hidden_layers=2)
        t = Trainer(cfg, rt, lambda: model.build_model(mc, seed=0), CausalLMTask(), str(tmp_path / "out"))
        r = t.fit(data, progress=False)
        assert {v.dtype for v in t.model.trainable_variables} == {"float32"}
        assert t.model.forward(np.ones([1, 4], np.int32))["logits"].dtype == "bfloat16"
        losses = [row["loss"] for row in r.history if "loss" in row]
        assert all(np.isfinite(losses)) and losses[-1] < losses[0]
        assert r.nonfinite_steps == 0 and np.isfinite(r.final_eval["eval_loss"])
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
