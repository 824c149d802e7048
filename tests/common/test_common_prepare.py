"""`make prepare DATA=../shared/corpus`, then the loader and evaluate_bpb on what it prepared."""

import math

import numpy as np
import pytest

from common.data import sha256_file
from common.evaluate import eval_rows, evaluate_bpb
from common.loader import make_loader
from common.platform import PROFILES
from commonkit import run_prepare, synthetic_docs, write_shards

pytestmark = pytest.mark.timeout(180)      # a hang fails the test instead of CI (pytest-timeout)


def test_prepare_on_the_corpus_then_loader_and_evaluate_work(prepared_corpus, corpus):
    proc = prepared_corpus.proc
    assert proc.returncode == 0, proc.stderr
    assert "8 training file(s), validation = shard_00008.parquet" in proc.stdout
    assert "Ready to train." in proc.stdout and "Traceback" not in proc.stderr

    source, tok = prepared_corpus.source, prepared_corpus.tokenizer
    identity = source.identity()
    assert identity["val"] == ["shard_00008.parquet"] and len(identity["sha256"]) == 9
    assert identity["sha256"]["shard_00008.parquet"] == sha256_file(corpus / "shard_00008.parquet")

    inputs, targets, epoch = next(make_loader("train", 4, 2048, source=source, tokenizer=tok))
    assert inputs.shape == (4, 2048) and (inputs[:, 0] == tok.bos_token_id).all() and epoch == 1

    profile = PROFILES["smoke"]
    nbytes = tok.token_bytes[eval_rows(profile, source, tok)[:, 1:]]
    expected = math.log2(8192) * (nbytes > 0).sum() / nbytes.sum()
    bpb = evaluate_bpb(lambda x, y: np.full(y.shape, math.log(8192)), 16, profile, source=source)
    assert math.isclose(bpb, expected, rel_tol=1e-12)
    assert 2.0 < bpb < 5.0                  # 13 bits per token over ~3-5 bytes per token of English


def test_prepare_reads_DATA_from_the_environment_as_make_passes_it(tmp_path, cache):
    folder = tmp_path / "data"
    write_shards(folder, [synthetic_docs(40, 1), synthetic_docs(10, 2)])
    proc = run_prepare("--num-shards", 10, env={"AUTORESEARCH_DATA": folder})
    assert proc.returncode == 0, proc.stderr
    assert f"local:{folder}" in proc.stdout
    assert list(cache.glob("local/*/tokenizer/tokenizer.pkl"))
    assert not (cache / "data").exists()                  # nothing was downloaded
