"""Benchmarks of common/ (make bench). No timed assertions: the figures go to benchmark.extra_info and stdout.

Run as plain tests (benchmarks disabled) each does its work once, in a few seconds.
"""

import math
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from common.data import local_source
from common.evaluate import eval_rows, evaluate_bpb
from common.loader import BestFitPacker, make_loader
from common.platform import PROFILES
from common.tokenizer import train_tokenizer
from commonkit import cycled_batches, upstream_rows

pytestmark = pytest.mark.bench

T = 2048
ROWS = 1024                # rows packed per round: 1024 x 2049 = 2.1M tokens


class Timer:
    """Times each call itself too, so the figures exist when pytest-benchmark is disabled. Also records the
    process's CPU time (all threads), which a busy shared machine disturbs less than wall time."""

    def __init__(self, fn):
        self.fn, self.seconds, self.cpu_seconds = fn, [], []

    def __call__(self, *args, **kwargs):
        t0, c0 = time.perf_counter(), time.process_time()
        result = self.fn(*args, **kwargs)
        self.seconds.append(time.perf_counter() - t0)
        self.cpu_seconds.append(time.process_time() - c0)
        return result

    @property
    def median(self):
        return float(np.median(self.seconds))

    @property
    def best(self):
        return float(np.min(self.seconds))

    @property
    def cpu_median(self):
        return float(np.median(self.cpu_seconds))


def report(benchmark, name, **figures):
    benchmark.extra_info.update(figures)
    print(f"\n[bench] {name}: " + ", ".join(f"{k}={v:,.3g}" if isinstance(v, float) else f"{k}={v}"
                                          for k, v in figures.items()))


@pytest.fixture(scope="module")
def corpus_token_lists(corpus, corpus_tokenizer):
    """The documents of one training shard (~3.5k documents, ~4.5M tokens), tokenized once with BOS."""
    texts = pq.read_table(corpus / "shard_00000.parquet", columns=["text"]).column("text").to_pylist()
    return corpus_tokenizer.encode_batch(texts)


@pytest.fixture(scope="module")
def upstream_reference(corpus_token_lists):
    return next(upstream_rows(cycled_batches(corpus_token_lists), ROWS, T))


def pack_ours(token_lists_batches):
    packer = BestFitPacker(token_lists_batches)
    rows = np.empty((ROWS, T + 1), dtype=np.int32)
    for r in range(ROWS):
        packer.fill(rows[r])
    return rows


def test_bench_packing_ours(benchmark, corpus_token_lists, upstream_reference):
    # the same document stream as upstream's loop gets; ours takes numpy arrays, as document_batches gives
    stream = lambda: ((cycled_batches(corpus_token_lists, as_arrays=True),), {})    # noqa: E731
    timed = Timer(pack_ours)
    rows = benchmark.pedantic(timed, setup=stream, rounds=15, iterations=1)
    assert np.array_equal(rows, upstream_reference)
    report(benchmark, "packing, BestFitPacker", tokens_per_s=ROWS * (T + 1) / timed.median,
           tokens_per_s_best=ROWS * (T + 1) / timed.best,
           tokens_per_cpu_s=ROWS * (T + 1) / timed.cpu_median, T=T, rows=ROWS)


def test_bench_packing_upstream_loop(benchmark, corpus_token_lists, upstream_reference):
    stream = lambda: ((cycled_batches(corpus_token_lists),), {})    # noqa: E731
    timed = Timer(lambda batches: next(upstream_rows(batches, ROWS, T)))
    rows = benchmark.pedantic(timed, setup=stream, rounds=5, iterations=1)
    assert np.array_equal(rows, upstream_reference)
    report(benchmark, "packing, upstream's pure-Python loop", tokens_per_s=ROWS * (T + 1) / timed.median,
           tokens_per_s_best=ROWS * (T + 1) / timed.best,
           tokens_per_cpu_s=ROWS * (T + 1) / timed.cpu_median, T=T, rows=ROWS)


def test_bench_full_loader(benchmark, prepared_corpus, corpus_tokenizer):
    """Tokenize + pack + prefetch: make_loader('train', B=16, T=2048) in steady state."""
    B, steps = 16, 20

    def started():
        loader = make_loader("train", B, T, source=prepared_corpus.source, tokenizer=corpus_tokenizer)
        next(loader)                                    # start-up: first row group read, buffer filled
        return (loader,), {}

    def pull(loader):
        for _ in range(steps):
            inputs, _, _ = next(loader)
        return inputs

    timed = Timer(pull)
    inputs = benchmark.pedantic(timed, setup=started, rounds=3, iterations=1)
    assert inputs.shape == (B, T)
    report(benchmark, "make_loader train B=16 T=2048", tokens_per_s=steps * B * T / timed.median,
           tokens_per_s_best=steps * B * T / timed.best,
           tokens_per_cpu_s=steps * B * T / timed.cpu_median)


def spinning(until):
    """Runs a pure-Python loop in a thread until until() returns; its iterations per second. A stand-in for the
    training loop's thread, which launches kernels in Python and needs the GIL to do it."""
    import threading
    stop, rate = threading.Event(), []

    def spin():
        n, t0 = 0, time.perf_counter()
        while not stop.is_set():
            n += 1
        rate.append(n / (time.perf_counter() - t0))
    spinner = threading.Thread(target=spin)
    spinner.start()
    until()
    stop.set()
    spinner.join()
    return rate[0]


def test_bench_loader_beside_a_busy_thread(benchmark, prepared_corpus, corpus_tokenizer):
    """The loader's thread and a busy Python thread at once: how much of its pace the busy thread keeps (the
    loader's share of the GIL), and the loader's tokens/s meanwhile. Upstream's loader runs in the training
    loop's own thread instead; ours packs ahead in its own, so what it takes of the GIL is what matters."""
    B, steps = 16, 20
    alone = spinning(lambda: time.sleep(2.0))

    def started():
        loader = make_loader("train", B, T, source=prepared_corpus.source, tokenizer=corpus_tokenizer)
        next(loader)
        return (loader,), {}

    def pull_beside_spinner(loader):
        return spinning(lambda: [next(loader) for _ in range(steps)])

    timed = Timer(pull_beside_spinner)
    rate = benchmark.pedantic(timed, setup=started, rounds=3, iterations=1)
    report(benchmark, "make_loader train B=16 T=2048 beside a busy Python thread",
           tokens_per_s=steps * B * T / timed.median, busy_thread_kept_percent=100 * rate / alone)


def test_bench_tokenizer_training(benchmark, corpus, tmp_path, monkeypatch):
    rounds = iter(range(100))

    def fresh_cache():
        monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path / f"cache{next(rounds)}"))
        return (local_source(corpus),), {}

    timed = Timer(lambda source: train_tokenizer(source, progress=lambda *a: None))
    tok = benchmark.pedantic(timed, setup=fresh_cache, rounds=1, iterations=1)
    assert tok.vocab_size == 8192
    report(benchmark, "tokenizer training on ../shared/corpus", seconds=timed.median, cpu_seconds=timed.cpu_median)


def test_bench_tokenizer_encode(benchmark, corpus, corpus_tokenizer):
    texts = pq.read_table(corpus / "shard_00008.parquet", columns=["text"]).column("text").to_pylist()
    megabytes = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    timed = Timer(corpus_tokenizer.encode_batch)
    ids = benchmark.pedantic(timed, args=(texts,), rounds=3, iterations=1)
    tokens = sum(map(len, ids))
    t0 = time.perf_counter()
    for text in texts[:200]:
        corpus_tokenizer.encode(text)
    one_thread = sum(len(t.encode("utf-8")) for t in texts[:200]) / 1e6 / (time.perf_counter() - t0)
    report(benchmark, "encode (validation shard, 5.5 MB)", MB_per_s=megabytes / timed.median,
           MB_per_cpu_s=megabytes / timed.cpu_median,
           MB_per_s_one_thread=one_thread, tokens_per_s=tokens / timed.median, bytes_per_token=megabytes * 1e6 / tokens)


def test_bench_evaluate_bpb_overhead_h100(benchmark, prepared_corpus, corpus_tokenizer):
    """evaluate_bpb's own cost at the h100 profile (10240 rows x 2048) with a loss_fn that does nothing."""
    profile = PROFILES["h100"]
    source = prepared_corpus.source
    rows = eval_rows(profile, source, corpus_tokenizer)            # built and cached outside the timing
    zero = lambda inputs, targets: np.zeros(targets.shape, np.float32)   # noqa: E731
    timed = Timer(evaluate_bpb)
    bpb = benchmark.pedantic(timed, args=(zero, 128, profile), kwargs={"source": source}, rounds=3, iterations=1)
    assert bpb == 0.0 and rows.shape == (10240, 2049)
    report(benchmark, "evaluate_bpb overhead, h100 profile, B=128", tokens_per_s=rows[:, 1:].size / timed.median,
           tokens_per_cpu_s=rows[:, 1:].size / timed.cpu_median, seconds=timed.median)
    assert math.isfinite(timed.median)
