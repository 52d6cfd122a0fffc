import numpy as np

from model.layers.linear import Linear


def test_linear_matches_matmul_and_serialises():
    lin = Linear(3, 4, use_bias=True)
    lin.bias.assign(np.arange(4, dtype=np.float32))
    x = np.random.default_rng(0).normal(size=(2, 5, 3)).astype(np.float32)
    want = x @ lin.kernel.numpy() + np.arange(4)
    np.testing.assert_allclose(lin(x).numpy(), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lin(x[0]).numpy(), want[0], rtol=1e-5, atol=1e-6)
    clone = Linear.from_config(lin.get_config())
    assert clone.kernel.shape == (3, 4) and clone.bias is not None


# ---------------------------------------------------------------------- LoRA
import math  # noqa: E402

import keras  # noqa: E402
import pytest  # noqa: E402


def _x(shape, seed=1):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def test_fresh_adapter_is_peft_initialised_and_changes_nothing():
    lin = Linear(400, 6, use_bias=True)
    lin.bias.assign(np.arange(6, dtype=np.float32))
    x = _x((3, 400))
    before = lin(x).numpy()
    lin.enable_lora(rank=8, alpha=16, seed=0)
    a = lin.lora_a.numpy()
    # PEFT: kaiming_uniform_(a=√5) on the (r, in) weight = U(-1/√in, 1/√in); 3200 draws fill it.
    bound = 1 / math.sqrt(400)
    assert a.shape == (400, 8) and np.abs(a).max() <= bound and np.abs(a).max() > 0.95 * bound
    assert abs(a.std() - bound / math.sqrt(3)) < 0.05 * bound        # std of U(-b, b) = b/√3
    assert lin.lora_b.shape == (8, 6) and not lin.lora_b.numpy().any()
    np.testing.assert_array_equal(lin(x).numpy(), before)
    # Only the adapter trains.
    assert [v.path.split("/")[-1] for v in lin.trainable_weights] == ["lora_A", "lora_B"]
    assert not lin.kernel.trainable and not lin.bias.trainable


@pytest.mark.parametrize("rslora", [False, True])
def test_adapter_output_is_x_w_plus_b_plus_scaled_x_a_b(rslora):
    lin = Linear(5, 7, use_bias=True)
    lin.enable_lora(rank=4, alpha=3.0, use_rslora=rslora)
    a, b = _x((5, 4), 2), _x((4, 7), 3)
    lin.lora_a.assign(a)
    lin.lora_b.assign(b)
    scale = 3.0 / (2.0 if rslora else 4.0)                             # alpha/√r or alpha/r
    assert lin.lora_scale == scale
    x = _x((2, 3, 5))
    want = x @ lin.kernel.numpy() + lin.bias.numpy() + scale * (x @ a @ b)
    np.testing.assert_allclose(lin(x).numpy(), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(lin.effective_kernel().numpy(), lin.kernel.numpy() + scale * a @ b,
                               rtol=1e-6, atol=1e-6)


def test_dropout_acts_on_the_adapter_input_only_in_training():
    lin = Linear(6, 6)
    lin.kernel.assign(np.zeros((6, 6), np.float32))                  # output = adapter path only
    lin.enable_lora(rank=6, alpha=6.0, dropout=0.5, seed=4)          # scale 1
    lin.lora_a.assign(np.eye(6, dtype=np.float32))
    lin.lora_b.assign(np.eye(6, dtype=np.float32))
    x = _x((64, 6)) + 3.0                                             # no zero inputs
    np.testing.assert_allclose(lin(x).numpy(), x, rtol=1e-6)         # inference: no dropout
    y = lin(x, training=True).numpy()
    # inverted dropout at p = 0.5: every entry is 0 or x / (1 - p), about half each
    kept = y != 0
    np.testing.assert_allclose(y[kept], 2 * x[kept], rtol=1e-6)
    assert 0.35 < kept.mean() < 0.65
    # Keras hands training=True down from an outer layer call to the Linear.
    outer = keras.Sequential([lin])
    assert (outer(x, training=True).numpy() == 0).any()


def test_merge_folds_the_adapter_into_the_kernel_and_removes_it():
    lin = Linear(5, 4, use_bias=True)
    w0 = lin.kernel.numpy().copy()
    lin.enable_lora(rank=2, alpha=4.0, dropout=0.1)
    a, b = _x((5, 2), 5), _x((2, 4), 6)
    lin.lora_a.assign(a)
    lin.lora_b.assign(b)
    x = _x((3, 5))
    adapted = lin(x).numpy()
    lin.merge_lora()
    want_w = (w0.astype(np.float64) + 2.0 * (a.astype(np.float64) @ b)).astype(np.float32)
    np.testing.assert_array_equal(lin.kernel.numpy(), want_w)
    assert not lin.has_lora and [v.path.split("/")[-1] for v in lin.variables] == ["kernel", "bias"]
    assert lin.kernel.trainable and lin.bias.trainable                 # trainability restored
    np.testing.assert_allclose(lin(x).numpy(), adapted, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="no LoRA adapter"):
        lin.merge_lora()


def test_bad_lora_arguments_fail_clearly():
    lin = Linear(3, 3, name="o_proj")
    with pytest.raises(ValueError, match="o_proj: LoRA rank"):
        lin.enable_lora(rank=0, alpha=1.0)
    with pytest.raises(ValueError, match="dropout"):
        lin.enable_lora(rank=1, alpha=1.0, dropout=1.0)
    lin.enable_lora(rank=1, alpha=1.0)
    with pytest.raises(ValueError, match="already attached"):
        lin.enable_lora(rank=1, alpha=1.0)
