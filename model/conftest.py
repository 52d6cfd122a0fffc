"""Shared test helpers for the model core (tiny configs; HF reference fixtures)."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HF_FIXTURES = os.path.join(REPO, "tests", "fixtures", "hf")
from model.checkpoint.export_fixtures import FIXTURES as PARITY_FIXTURES  # noqa: E402,F401 (re-exported for tests)

_loaded = {}


def fixture_dir(name: str) -> str:
    return os.path.join(HF_FIXTURES, name)


def load_fixture_model(name: str):
    """Loaded once per session: loading is cheap but TF graph building is not free."""
    if name not in _loaded:
        from model.checkpoint.hf import load_hf_checkpoint
        _loaded[name] = load_hf_checkpoint(fixture_dir(name))
    return _loaded[name]


def reference(name: str):
    import numpy as np
    return np.load(os.path.join(fixture_dir(name), "reference.npz"))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than ~20 s (deselect with -m 'not slow')")


@pytest.fixture(autouse=True)
def _seed():
    import keras
    keras.utils.set_random_seed(0)
