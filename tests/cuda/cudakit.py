"""Paths and the trainer module for the cuda backend's tests."""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO.parent / "shared" / "corpus"
TRAIN_PY = REPO / "backends" / "cuda" / "train.py"
sys.path.insert(0, str(REPO / "bench"))

from anchor import load_canvas  # noqa: E402


def load_trainer():
    """backends/cuda/train.py as the module cuda_train (loaded by path: every backend's file is called train.py)."""
    return load_canvas(TRAIN_PY, "cuda")
