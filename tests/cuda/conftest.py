import os
import subprocess
import sys

import pytest

from cudakit import REPO, load_trainer


@pytest.fixture(scope="session")
def train():
    return load_trainer()


@pytest.fixture(scope="session")
def prepared_env(corpus, tmp_path_factory):
    """Environment for a trainer subprocess: the shared corpus, a fresh cache with the tokenizer trained once."""
    env = dict(os.environ, AUTORESEARCH_CACHE=str(tmp_path_factory.mktemp("cache")), AUTORESEARCH_DATA=str(corpus),
               AUTORESEARCH_PROFILE="smoke", PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    out = subprocess.run([sys.executable, "-m", "common.prepare"], cwd=REPO, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    return env
