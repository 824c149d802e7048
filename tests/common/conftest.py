"""Fixtures for the common/ tests. Every test gets its own AUTORESEARCH_CACHE, so nothing touches ~/.cache."""

from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from commonkit import run_prepare, write_shards

ENV_VARS = ("AUTORESEARCH_DATA", "AUTORESEARCH_PROFILE", "AUTORESEARCH_BUDGET", "AUTORESEARCH_DATA_URL",
            "AUTORESEARCH_RETRY_BASE", "AUTORESEARCH_RECORD", "AUTORESEARCH_NONCE")


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """A fresh, empty cache for this test, none of the user's AUTORESEARCH_* settings, and a fresh run record
    (common.record keeps one per process: the loader's counts, a rejection)."""
    from common import record
    path = tmp_path / "cache"
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(path))
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    record.reset()
    yield path
    record.reset()


@dataclass
class Prepared:
    cache: Path
    proc: object          # the CompletedProcess of `python -m common.prepare --data ...`
    source: object        # the DataSource, its workdir inside `cache`

    @property
    def tokenizer(self):
        from common.tokenizer import Tokenizer
        return Tokenizer.load(self.source)


@pytest.fixture(scope="session")
def prepared_corpus(corpus, tmp_path_factory):
    """../shared/corpus prepared once by the real CLI (`make prepare DATA=...`) into a session cache (~8 s)."""
    from common.data import local_source
    cache = tmp_path_factory.mktemp("corpus-cache")
    env = {"AUTORESEARCH_CACHE": cache, **{var: None for var in ENV_VARS}}
    proc = run_prepare("--data", corpus, env=env, timeout=600)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AUTORESEARCH_CACHE", str(cache))
        source = local_source(corpus)
    return Prepared(cache, proc, source)


@pytest.fixture(scope="session")
def corpus_tokenizer(prepared_corpus):
    assert prepared_corpus.proc.returncode == 0, prepared_corpus.proc.stderr
    return prepared_corpus.tokenizer


@pytest.fixture(scope="session")
def real_docs(corpus):
    """The first 300 documents of the corpus's validation shard: real English text of varied lengths."""
    return pq.ParquetFile(corpus / "shard_00008.parquet").read_row_group(0).column("text").to_pylist()[:300]


@pytest.fixture(scope="session")
def small_corpus(real_docs, tmp_path_factory):
    """A small local source of real text (2 training shards of 10-document row groups, 1 validation shard)
    with its own tokenizer trained on it, in a session cache. Tests must not modify it."""
    from common.data import local_source
    from common.tokenizer import train_tokenizer
    root = tmp_path_factory.mktemp("small-corpus")
    write_shards(root / "data", [real_docs[:120], real_docs[120:240], real_docs[240:]], row_group_size=10)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AUTORESEARCH_CACHE", str(root / "cache"))
        source = local_source(root / "data")
        source.verify()
        tokenizer = train_tokenizer(source, progress=lambda *a: None)
    return source, tokenizer
