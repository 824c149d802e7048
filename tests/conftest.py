"""Fixtures shared by the whole suite: where the repository and the shared corpus are."""

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
