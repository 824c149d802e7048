import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TRAIN_PY = REPO / "backends" / "mlx" / "train.py"


def load_trainer():
    """backends/mlx/train.py as a module (loaded by path: every backend's file is called train.py)."""
    spec = importlib.util.spec_from_file_location("mlx_train", TRAIN_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def train():
    pytest.importorskip("mlx.core", reason="mlx is not installed (make setup BACKEND=mlx)")
    return load_trainer()
