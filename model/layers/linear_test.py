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
