"""Fixtures shared by the whole suite: where the repository and the shared corpus are, and a cache with the
corpus prepared once per session."""

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def repo_root():
    return Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def corpus(repo_root):
    """../shared/corpus: real English text in upstream's shard layout (shard_00008 = validation)."""
    path = repo_root.parent / "shared" / "corpus"
    if not (path / "shard_00000.parquet").exists():
        pytest.skip(f"the shared corpus is missing: expected parquet shards in {path}")
    return path


@pytest.fixture(scope="session")
def corpus_cache(tmp_path_factory):
    """One cache folder per session for the corpus: whoever prepares it first trains the tokenizer."""
    return tmp_path_factory.getbasetemp() / "corpus-cache"


@pytest.fixture(scope="session")
def prepared_env(repo_root, corpus, corpus_cache):
    """Environment for a trainer subprocess: the shared corpus under the smoke profile, prepared once."""
    env = dict(os.environ, AUTORESEARCH_CACHE=str(corpus_cache), AUTORESEARCH_DATA=str(corpus),
               AUTORESEARCH_PROFILE="smoke", PYTHONPATH=str(repo_root), PYTHONUNBUFFERED="1")
    out = subprocess.run([sys.executable, "-m", "common.prepare", "--if-needed"], cwd=repo_root, env=env,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    return env


@pytest.fixture
def record_file(prepared_env, monkeypatch, tmp_path):
    """The shared corpus prepared (smoke profile) and a fresh run record (common/record.py) to read back."""
    from common import record
    for var in ("AUTORESEARCH_CACHE", "AUTORESEARCH_DATA"):
        monkeypatch.setenv(var, prepared_env[var])
    monkeypatch.setenv("AUTORESEARCH_RECORD", str(tmp_path / "record.json"))
    record.reset()
    yield tmp_path / "record.json"
    record.reset()
