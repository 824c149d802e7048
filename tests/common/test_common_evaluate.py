"""evaluate_bpb: the hand-computable uniform case, batch-size independence, special tokens masked."""

import dataclasses
import math

import numpy as np
import pytest

from common.evaluate import eval_rows, evaluate_bpb
from common.platform import PROFILES
from commonkit import upstream_rows

pytestmark = pytest.mark.timeout(180)      # a hang fails the test instead of CI (pytest-timeout)

V = 8192
BOS = 8188
SMOKE = PROFILES["smoke"]                                     # T = 64, 8192 tokens -> 128 rows
TINY = dataclasses.replace(SMOKE, name="tiny", eval_tokens=5 * 64)   # 5 rows
WIDE = dataclasses.replace(SMOKE, name="wide", max_seq_len=2048, eval_tokens=8 * 2048)   # rows of many documents


def uniform(inputs, targets):
    """A model that predicts uniformly over V tokens: log(V) nats for every token."""
    return np.full(targets.shape, math.log(V))


def varied(inputs, targets):
    """A deterministic loss that differs per token, so that any mistake in which rows count shows."""
    return ((targets.astype(np.int64) * 2654435761) % 1000) / 100.0 + (inputs % 7) * 0.01


def reference_bpb(loss_fn, rows, token_bytes):
    """Bits per byte over all rows at once, the straightforward way."""
    inputs, targets = rows[:, :-1], rows[:, 1:]
    nbytes = token_bytes[targets]
    losses = np.asarray(loss_fn(inputs, targets), dtype=np.float64)
    return losses[nbytes > 0].sum() / (math.log(2) * nbytes.sum())


@pytest.fixture(scope="module")
def smoke_rows(small_corpus):
    source, tok = small_corpus
    return eval_rows(SMOKE, source, tok)


def test_uniform_prediction_scores_log2V_times_tokens_over_bytes(small_corpus, smoke_rows):
    source, tok = small_corpus
    nbytes = tok.token_bytes[smoke_rows[:, 1:]]
    scored_tokens, total_bytes = int((nbytes > 0).sum()), int(nbytes.sum())
    expected = math.log2(V) * scored_tokens / total_bytes
    assert evaluate_bpb(uniform, 16, SMOKE, source=source) == pytest.approx(expected, rel=1e-12)
    assert 1.0 < expected < 13.0


@pytest.mark.parametrize("batch_size", [1, 3, 8, 16, 128, 200])
def test_the_result_does_not_depend_on_batch_size(small_corpus, smoke_rows, batch_size):
    source, tok = small_corpus
    expected = reference_bpb(varied, smoke_rows, tok.token_bytes)
    assert evaluate_bpb(varied, batch_size, SMOKE, source=source) == pytest.approx(expected, rel=1e-12, abs=0)


def test_a_batch_larger_than_the_validation_rows_still_works(small_corpus):
    source, tok = small_corpus
    rows = eval_rows(TINY, source, tok)
    assert len(rows) == 5
    expected = reference_bpb(varied, rows, tok.token_bytes)
    for batch_size in (3, 8, 16):
        assert evaluate_bpb(varied, batch_size, TINY, source=source) == pytest.approx(expected, rel=1e-12)


def test_special_tokens_are_masked(small_corpus):
    source, tok = small_corpus
    rows = eval_rows(WIDE, source, tok)
    assert (rows[:, 1:] == BOS).sum() > 0, "no BOS among the targets: the test would prove nothing"

    def huge_on_specials(inputs, targets):
        return np.where(targets >= BOS, 1e6, math.log(V))

    nbytes = tok.token_bytes[rows[:, 1:]]
    expected = math.log2(V) * (nbytes > 0).sum() / nbytes.sum()
    assert evaluate_bpb(huge_on_specials, 4, WIDE, source=source) == pytest.approx(expected, rel=1e-12)


def test_loss_fn_always_gets_the_same_int32_shape(small_corpus):
    source, _ = small_corpus
    shapes, shifted = [], []

    def recording(inputs, targets):
        shapes.append((inputs.shape, targets.shape, inputs.dtype, targets.dtype))
        shifted.append(np.array_equal(inputs[:, 1:], targets[:, :-1]))
        return uniform(inputs, targets)

    evaluate_bpb(recording, 48, SMOKE, source=source)            # 128 rows: 48 + 48 + 32 topped up
    assert len(shapes) == 3 + 2                                  # the causality probe's repeat and perturbed batch
    assert set(shapes) == {((48, 64), (48, 64), np.dtype(np.int32), np.dtype(np.int32))}
    assert shifted == [True, True, False, True, True]            # only the perturbed batch breaks the shift


def test_eval_rows_are_fixed_by_the_profile(small_corpus, smoke_rows):
    source, tok = small_corpus
    assert smoke_rows.shape == (SMOKE.eval_tokens // SMOKE.max_seq_len, SMOKE.max_seq_len + 1)
    assert smoke_rows.dtype == np.int32
    assert (smoke_rows[:, 0] == BOS).all()
    assert np.array_equal(eval_rows(SMOKE, source, tok), smoke_rows)


def test_eval_rows_are_upstreams_validation_rows(small_corpus, smoke_rows):
    """Upstream evaluates on make_dataloader(..., 'val'): the validation documents in order, per row group
    in slices of 128, packed best-fit. The same rows here make val_bpb comparable with upstream's."""
    import pyarrow.parquet as pq
    source, tok = small_corpus

    def val_stream():
        epoch = 1
        while True:
            for path in source.val_files:
                pf = pq.ParquetFile(path)
                for rg in range(pf.num_row_groups):
                    texts = pf.read_row_group(rg, columns=["text"]).column("text").to_pylist()
                    for i in range(0, len(texts), 128):
                        yield tok.encode_batch(texts[i:i + 128]), epoch
            epoch += 1

    expected = next(upstream_rows(val_stream(), len(smoke_rows), SMOKE.max_seq_len))
    assert np.array_equal(smoke_rows, expected)


def test_a_validation_split_without_documents_is_an_error_not_a_hang(small_corpus, tmp_path):
    from common.tokenizer import tokenizer_dir
    from commonkit import run_with_tokenizer
    source, _ = small_corpus
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("a training document\n\nand another one\n")
    (data / "b.txt").write_text("\n   \n\n")
    proc = run_with_tokenizer(
        tokenizer_dir(source),
        "from common.data import local_source\nfrom common.evaluate import eval_rows\nfrom common.platform import PROFILES",
        f"eval_rows(PROFILES['smoke'], local_source({str(data)!r}), tok)")
    if proc is None:
        pytest.fail("eval_rows hangs (15 s) on a validation split with no documents instead of raising")
    assert "ContractError:" in proc.stdout, proc.stdout + proc.stderr
