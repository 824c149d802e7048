import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO.parent / "shared" / "corpus"
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


@pytest.fixture(scope="session")
def prepared_env(tmp_path_factory):
    """Environment for a trainer subprocess: the shared corpus, a fresh cache with the tokenizer trained once."""
    if not CORPUS.is_dir():
        pytest.skip(f"the shared corpus is not at {CORPUS}")
    env = dict(os.environ, AUTORESEARCH_CACHE=str(tmp_path_factory.mktemp("cache")), AUTORESEARCH_DATA=str(CORPUS),
               AUTORESEARCH_PROFILE="smoke", PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    out = subprocess.run([sys.executable, "-m", "common.prepare"], cwd=REPO, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    return env
