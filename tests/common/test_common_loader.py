"""The loader: BOS-aligned best-fit packing with no padding, identical to upstream's loop, deterministic."""

import time
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest

from common.errors import ContractError
from common.loader import BestFitPacker, make_loader
from commonkit import cycled_batches, run_with_tokenizer, split_at_bos, upstream_rows

pytestmark = pytest.mark.timeout(180)      # a hang fails the test instead of CI (pytest-timeout)

BOS = 8188


def take(loader, n):
    return [next(loader) for _ in range(n)]


def full_rows(inputs, targets):
    """The packed (B, T+1) rows a batch was cut from."""
    return np.concatenate([inputs, targets[:, -1:]], axis=1)


def tokenized_docs(tokenizer, paths):
    """Every document of the files, tokenized independently of the loader: [BOS] + ids."""
    texts = [t for p in paths for t in pq.read_table(p, columns=["text"]).column("text").to_pylist()]
    return [[BOS] + tokenizer.encode(t) for t in texts]


def document_stream(tokenizer, paths, batch=128):
    """What upstream's _document_batches yields, for files read in the given order: per row group, slices
    of 128 documents, tokenized with BOS in front; endless, epoch counted."""
    epoch = 1
    while True:
        for p in paths:
            pf = pq.ParquetFile(p)
            for rg in range(pf.num_row_groups):
                texts = pf.read_row_group(rg, columns=["text"]).column("text").to_pylist()
                for i in range(0, len(texts), batch):
                    yield [[BOS] + tokenizer.encode(t) for t in texts[i:i + batch]], epoch
        epoch += 1


def assert_rows_are_packed_documents(rows, docs):
    """Each row, split at its BOS tokens, is whole documents followed by at most one cropped document (a
    prefix, at the end of the row); each document is used at most once per appearance in `docs`."""
    whole = Counter(tuple(d) for d in docs)
    by_head = {}
    for d in docs:
        by_head.setdefault(tuple(d[:8]), []).append(tuple(d))
    for r, row in enumerate(rows):
        assert row[0] == BOS, f"row {r} does not start with BOS"
        pieces = split_at_bos(row, BOS)
        assert sum(map(len, pieces)) == len(row)
        for k, piece in enumerate(pieces):
            piece = tuple(piece)
            if whole[piece] > 0:
                whole[piece] -= 1
                continue
            assert k == len(pieces) - 1, f"row {r} piece {k} (length {len(piece)}) is no document, mid-row"
            candidates = [d for d in by_head.get(piece[:8], []) if len(d) > len(piece) and d[:len(piece)] == piece
                          and whole[d] > 0] if len(piece) >= 8 else \
                         [d for d in whole if whole[d] > 0 and len(d) > len(piece) and d[:len(piece)] == piece]
            assert candidates, f"row {r} ends with {len(piece)} tokens that are no document's prefix"
            whole[candidates[0]] -= 1


# ---------------------------------------------------------------------------------------------------------
# Invariants of make_loader's batches
# ---------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def wide_corpus(corpus, small_corpus, tmp_path_factory):
    """1100 real training documents (more than the packer's 1000-document buffer, so the first batches come
    from one epoch and each document can be used once) and 50 validation ones, with small_corpus's tokenizer."""
    from common.data import local_source
    from commonkit import write_shards
    texts = pq.read_table(corpus / "shard_00008.parquet", columns=["text"]).column("text").to_pylist()
    root = tmp_path_factory.mktemp("wide-corpus")
    write_shards(root / "data", [texts[:550], texts[550:1100], texts[1100:1150]], row_group_size=10)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AUTORESEARCH_CACHE", str(root / "cache"))
        source = local_source(root / "data")
    return source, small_corpus[1]


@pytest.fixture(scope="module")
def train_batches(wide_corpus):
    source, tok = wide_corpus
    return take(make_loader("train", 8, 1024, seed=0, source=source, tokenizer=tok), 3)


def test_batches_are_int32_B_by_T(train_batches):
    for inputs, targets, epoch in train_batches:
        assert inputs.shape == targets.shape == (8, 1024)
        assert inputs.dtype == targets.dtype == np.int32
        assert epoch >= 1


def test_every_row_starts_with_bos(train_batches):
    for inputs, _, _ in train_batches:
        assert (inputs[:, 0] == BOS).all()


def test_no_padding_every_id_is_a_real_token(train_batches):
    for inputs, targets, _ in train_batches:
        rows = full_rows(inputs, targets)
        assert rows.min() >= 0 and rows.max() <= BOS       # ordinary tokens or BOS; no other special
        assert not np.isin(rows, [8189, 8190, 8191]).any()


def test_targets_are_inputs_shifted_by_one(train_batches):
    for inputs, targets, _ in train_batches:
        assert np.array_equal(inputs[:, 1:], targets[:, :-1])


def test_every_packed_document_appears_whole_or_cropped_in_order(wide_corpus, train_batches):
    source, tok = wide_corpus
    docs = tokenized_docs(tok, source.train_files)
    rows = np.concatenate([full_rows(i, t) for i, t, _ in train_batches])
    assert_rows_are_packed_documents(rows, docs)


def test_long_documents_are_cropped_to_fill_short_rows(wide_corpus):
    source, tok = wide_corpus
    docs = tokenized_docs(tok, source.train_files)
    batches = take(make_loader("train", 8, 32, seed=3, source=source, tokenizer=tok), 4)
    rows = np.concatenate([full_rows(i, t) for i, t, _ in batches])
    assert (rows[:, 0] == BOS).all()
    assert_rows_are_packed_documents(rows, docs)


def test_same_seed_gives_the_same_batches(small_corpus):
    source, tok = small_corpus
    a = take(make_loader("train", 4, 128, seed=7, source=source, tokenizer=tok), 6)
    b = take(make_loader("train", 4, 128, seed=7, source=source, tokenizer=tok), 6)
    for (xa, ya, _), (xb, yb, _) in zip(a, b):
        assert np.array_equal(xa, xb) and np.array_equal(ya, yb)


def test_different_seeds_give_different_batches(small_corpus):
    source, tok = small_corpus
    a = take(make_loader("train", 4, 128, seed=0, source=source, tokenizer=tok), 3)
    b = take(make_loader("train", 4, 128, seed=1, source=source, tokenizer=tok), 3)
    assert any(not np.array_equal(xa, xb) for (xa, _, _), (xb, _, _) in zip(a, b))


def test_train_batches_without_a_seed_are_upstreams_rows_epoch_after_epoch(small_corpus, tmp_path):
    """Upstream reads the training files in order every epoch, unshuffled; so does the default loader, through
    the epoch boundaries (five epochs of a small split) and into the best-fit buffer that spans them."""
    from common.data import local_source
    from commonkit import write_shards
    _, tok = small_corpus
    docs = [f"training document {i} " + "word " * (i * 37 % 300) for i in range(90)]
    write_shards(tmp_path / "data", [docs[:50], docs[50:], ["the validation document"]], row_group_size=20)
    source = local_source(tmp_path / "data")
    batches = take(make_loader("train", 4, 256, source=source, tokenizer=tok), 30)
    assert batches[-1][2] >= 5
    expected = upstream_rows(document_stream(tok, source.train_files), 4, 256)
    for inputs, targets, _ in batches:
        assert np.array_equal(full_rows(inputs, targets), next(expected))


def test_the_loader_cycles_through_epochs(small_corpus, tmp_path):
    from common.data import local_source
    from commonkit import write_shards
    _, tok = small_corpus
    write_shards(tmp_path / "tiny", [["a short training document"] * 3, ["the validation document"]])
    loader = make_loader("train", 2, 64, source=local_source(tmp_path / "tiny"), tokenizer=tok)
    epochs = [epoch for _, _, epoch in take(loader, 6)]
    assert epochs == sorted(epochs) and epochs[-1] > 1


def test_the_loader_packs_ahead_in_a_background_thread(small_corpus):
    source, tok = small_corpus
    loader = make_loader("train", 2, 64, source=source, tokenizer=tok, prefetch=3)
    deadline = time.time() + 10
    while loader.queue.qsize() < 3 and time.time() < deadline:
        time.sleep(0.01)
    assert loader.queue.qsize() == 3, "nothing was packed before the first next()"
    assert loader.thread.is_alive() and loader.thread.daemon


# ---------------------------------------------------------------------------------------------------------
# The packer equals upstream's loop
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seq_len", [32, 256, 2048])
def test_packer_equals_upstreams_loop_on_real_documents(small_corpus, real_docs, seq_len):
    _, tok = small_corpus
    docs = tok.encode_batch(real_docs)
    ours = BestFitPacker(cycled_batches(docs, as_arrays=True))
    theirs = upstream_rows(cycled_batches(docs), 40, seq_len)
    rows = np.empty((40, seq_len + 1), dtype=np.int32)
    for r in range(40):
        ours.fill(rows[r])
    assert np.array_equal(rows, next(theirs))


@pytest.mark.parametrize("buffer_size", [1, 7, 1000])
def test_packer_equals_upstreams_loop_on_random_lengths(buffer_size):
    rng = np.random.default_rng(0)
    lengths = np.minimum(rng.geometric(1 / 300, size=3000), 3000)
    counter = iter(range(10**9))
    docs = [[BOS] + [next(counter) % 8000 for _ in range(n - 1)] for n in lengths]   # every doc distinct
    ours = BestFitPacker(cycled_batches(docs, as_arrays=True), buffer_size=buffer_size)
    theirs = upstream_rows(cycled_batches(docs), 100, 512, buffer_size=buffer_size)
    rows = np.empty((100, 513), dtype=np.int32)
    for r in range(100):
        ours.fill(rows[r])
    assert np.array_equal(rows, next(theirs))


def test_validation_rows_equal_upstreams_loop_on_the_validation_split(small_corpus):
    """Validation rows come from eval_rows only (make_loader serves the training split): its rows of 512
    are the first batch of upstream's val loader."""
    import dataclasses
    from common.evaluate import eval_rows
    from common.platform import PROFILES
    source, tok = small_corpus
    profile = dataclasses.replace(PROFILES["smoke"], max_seq_len=512, eval_tokens=16 * 512)
    expected = next(upstream_rows(document_stream(tok, source.val_files), 16, 512))
    assert np.array_equal(eval_rows(profile, source, tok), expected)


# ---------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------

def test_an_error_in_the_background_thread_surfaces_in_the_consumer(small_corpus, tmp_path):
    from common.data import local_source
    _, tok = small_corpus
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a_train.jsonl").write_text('{"text": "fine"}\nnot json at all\n')
    (tmp_path / "data" / "b_val.jsonl").write_text('{"text": "validation"}\n')
    loader = make_loader("train", 2, 64, source=local_source(tmp_path / "data"), tokenizer=tok)
    with pytest.raises(ContractError, match="Line 2"):
        next(loader)
    with pytest.raises(ContractError, match="Line 2"):      # and again, instead of waiting forever
        next(loader)


def test_a_training_split_without_documents_is_an_error_not_a_hang(small_corpus, tmp_path):
    """Files that hold no documents (empty or blank) must give a clear error, never an endless loop."""
    from common.tokenizer import tokenizer_dir
    source, _ = small_corpus
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("\n\n   \n")
    (data / "b.txt").write_text("a validation document\n")
    proc = run_with_tokenizer(
        tokenizer_dir(source),
        "from common.data import local_source\nfrom common.loader import make_loader",
        f"next(make_loader('train', 2, 64, source=local_source({str(data)!r}), tokenizer=tok))")
    if proc is None:
        pytest.fail("make_loader hangs (15 s) on a training split with no documents instead of raising")
    assert "ContractError:" in proc.stdout, proc.stdout + proc.stderr


def test_the_packing_check_itself_catches_a_lost_or_moved_token():
    docs = [[BOS, 1, 2, 3], [BOS, 4, 5], [BOS, 6, 7, 8, 9]]
    good = np.array([[BOS, 1, 2, 3, BOS, 4, 5, BOS, 6]])
    assert_rows_are_packed_documents(good, docs)
    for bad in ([[BOS, 1, 3, 2, BOS, 4, 5, BOS, 6]],      # tokens out of order
                [[BOS, 1, 2, 3, BOS, 5, 5, BOS, 6]],      # a token lost
                [[BOS, 1, 2, 3, BOS, 1, 2, 3, BOS]]):     # a document used twice
        with pytest.raises(AssertionError):
            assert_rows_are_packed_documents(np.array(bad), docs)
