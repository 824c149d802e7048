"""Paths and the trainer module for the cuda backend's tests."""

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO.parent / "shared" / "corpus"
TRAIN_PY = REPO / "backends" / "cuda" / "train.py"


def load_trainer():
    """backends/cuda/train.py as a module (loaded by path: every backend's file is called train.py)."""
    spec = importlib.util.spec_from_file_location("cuda_train", TRAIN_PY)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # torch.compile imports what it traces (an autograd.Function, say) by module name
    spec.loader.exec_module(module)
    return module
