import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO.parent / "shared" / "corpus"
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


@pytest.fixture(scope="session")
def prepared_env(tmp_path_factory):
    """Environment for a trainer subprocess: the shared corpus, a fresh cache with the tokenizer trained once."""
    if not CORPUS.is_dir():
        pytest.skip(f"the shared corpus is not at {CORPUS}")
    # The same folder as tests/parity's `prepared`: whichever runs second finds the tokenizer trained.
    cache = tmp_path_factory.getbasetemp() / "corpus-cache"
    env = dict(os.environ, AUTORESEARCH_CACHE=str(cache), AUTORESEARCH_DATA=str(CORPUS),
               AUTORESEARCH_PROFILE="smoke", PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    out = subprocess.run([sys.executable, "-m", "common.prepare", "--if-needed"], cwd=REPO, env=env,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    return env
