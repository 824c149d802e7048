import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TRAIN_PY = REPO / "backends" / "jax" / "train.py"


def load_module(name, path):
    """A backend's train.py as a module (loaded by path: every backend's file is called train.py)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name]


@pytest.fixture(scope="session")
def train():
    pytest.importorskip("flax.nnx", reason="jax/flax are not installed (make setup BACKEND=jax)")
    return load_module("jax_train", TRAIN_PY)


@pytest.fixture(scope="session")
def reference():
    pytest.importorskip("torch", reason="torch is not installed (make setup BACKEND=cuda)")
    return load_module("cuda_train", REPO / "backends" / "cuda" / "train.py")
