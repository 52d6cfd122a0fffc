import numpy as np

from model.layers.rmsnorm import RMSNorm


def test_rmsnorm_matches_formula():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 8)).astype(np.float32) * 3
    w = rng.normal(size=(8,)).astype(np.float32)
    layer = RMSNorm(8, eps=1e-5)
    layer.weight.assign(w)
    want = x / np.sqrt((x.astype(np.float64) ** 2).mean(-1, keepdims=True) + 1e-5) * w
    np.testing.assert_allclose(layer(x).numpy(), want, rtol=1e-5, atol=1e-6)
    assert RMSNorm.from_config(layer.get_config()).eps == 1e-5
