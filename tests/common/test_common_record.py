"""The run record and the guards behind it: what evaluate_bpb records, its causality probe, the loader's
budget guard, and the validation split kept out of training."""

import dataclasses
import hashlib
import json
import math
import time

import numpy as np
import pytest

from common import record
from common.errors import ContractError, IntegrityError, run_cli
from common.evaluate import eval_rows, evaluate_bpb
from common.loader import BudgetedBatches, make_loader
from common.platform import PROFILES, get_profile
from common.summary import print_summary
from test_common_summary import VALUES

pytestmark = pytest.mark.timeout(180)

V = 8192
SMOKE = PROFILES["smoke"]                                     # T = 64, 8192 tokens -> 128 rows
KEYS = ["nonce", "profile", "eval_tokens", "max_seq_len", "val_bpb", "tokens_scored", "bytes_scored", "eval_rows",
        "eval_fingerprint", "causal_check", "train", "val_read_before_eval", "rejected", "trick"]


@pytest.fixture
def record_file(tmp_path, monkeypatch):
    """Where the agent asks for the record, with this run's nonce."""
    path = tmp_path / "run" / "record.json"
    monkeypatch.setenv("AUTORESEARCH_RECORD", str(path))
    monkeypatch.setenv("AUTORESEARCH_NONCE", "f00dcafe")
    return path


def read(path):
    data = json.loads(path.read_text())
    assert list(data) == KEYS
    return data


def prefix_mean(inputs, targets):
    """A causal 'model' in float32: the loss at position p depends on inputs[:p + 1] and targets[p] only."""
    seen = np.cumsum(inputs, axis=1) / np.arange(1, inputs.shape[1] + 1)
    return (math.log(V) + np.sin(seen) + 0.01 * (targets % 5)).astype(np.float32)


def peeks_one_ahead(inputs, targets):
    """Position p also sees input p + 1, which is its own target: the smallest leak there is."""
    ahead = np.concatenate([inputs[:, 1:], inputs[:, -1:]], axis=1)
    return prefix_mean(inputs, targets) + (ahead / V).astype(np.float32)


def sees_the_whole_row(inputs, targets):
    """Attention without a mask: every position mixes in the whole row."""
    return prefix_mean(inputs, targets) + np.sin(inputs.mean(axis=1, keepdims=True)).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------
# What evaluate_bpb records
# ---------------------------------------------------------------------------------------------------------

def test_evaluate_bpb_writes_the_record_of_what_it_scored(small_corpus, record_file):
    source, tok = small_corpus
    bpb = evaluate_bpb(prefix_mean, 16, SMOKE, source=source)
    got = read(record_file)
    rows = eval_rows(SMOKE, source, tok)                     # read after: a read before would be recorded
    assert got["nonce"] == "f00dcafe"
    assert (got["profile"], got["eval_tokens"], got["max_seq_len"]) == ("smoke", 8192, 64)
    assert got["val_bpb"] == bpb and 0 < bpb < 20
    assert (got["eval_rows"], got["tokens_scored"]) == (128, 128 * 64)
    assert got["bytes_scored"] == int(tok.token_bytes[rows[:, 1:]].sum())
    assert got["eval_fingerprint"] == hashlib.sha256(rows.tobytes()).hexdigest()[:16]
    check = got["causal_check"]
    assert check["ok"] is True and check["max_diff"] == 0.0 and 0 < check["tolerance"] < 1e-4
    assert check["position"] == 32
    assert got["train"] is None and got["val_read_before_eval"] is False
    assert got["rejected"] is None and got["trick"] is None
    assert [p.name for p in record_file.parent.iterdir()] == ["record.json"]   # written by atomic replace


def test_the_fingerprint_tells_other_rows_apart(small_corpus, record_file):
    source, _ = small_corpus
    evaluate_bpb(prefix_mean, 16, SMOKE, source=source)
    smoke = read(record_file)
    evaluate_bpb(prefix_mean, 16, dataclasses.replace(SMOKE, name="small", eval_tokens=SMOKE.eval_tokens // 2),
                 source=source)
    small = read(record_file)
    assert (small["profile"], small["eval_rows"], small["tokens_scored"]) == ("small", 64, 64 * 64)
    assert small["eval_fingerprint"] != smoke["eval_fingerprint"]


def test_validation_rows_read_before_evaluation_are_recorded(small_corpus, record_file):
    source, tok = small_corpus
    evaluate_bpb(prefix_mean, 16, SMOKE, source=source)
    assert read(record_file)["val_read_before_eval"] is False     # evaluate_bpb's own read does not count
    eval_rows(SMOKE, source, tok)
    evaluate_bpb(prefix_mean, 16, SMOKE, source=source)
    assert read(record_file)["val_read_before_eval"] is True


def test_without_a_record_path_nothing_is_written_and_the_guards_still_act(small_corpus, tmp_path, monkeypatch):
    source, _ = small_corpus
    monkeypatch.chdir(tmp_path)
    evaluate_bpb(prefix_mean, 16, SMOKE, source=source)
    with pytest.raises(IntegrityError):
        evaluate_bpb(sees_the_whole_row, 16, SMOKE, source=source)
    assert not list(tmp_path.rglob("*.json*"))


# ---------------------------------------------------------------------------------------------------------
# The causality probe
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("leaky", [peeks_one_ahead, sees_the_whole_row])
def test_a_loss_fn_that_sees_future_tokens_is_rejected(small_corpus, record_file, leaky):
    source, _ = small_corpus
    with pytest.raises(IntegrityError, match="attention sees future tokens") as raised:
        evaluate_bpb(leaky, 16, SMOKE, source=source)
    got = read(record_file)
    assert got["trick"] == "causality" and got["rejected"] == str(raised.value)
    assert got["val_bpb"] is None and got["tokens_scored"] is None
    assert got["profile"] == "smoke" and got["eval_fingerprint"]
    check = got["causal_check"]
    assert check["ok"] is False and check["max_diff"] > check["tolerance"]
    assert f"after position {check['position']}" in got["rejected"]


def test_a_rejected_run_gets_no_score_afterwards(small_corpus, record_file):
    source, _ = small_corpus
    with pytest.raises(IntegrityError):
        evaluate_bpb(sees_the_whole_row, 16, SMOKE, source=source)
    with pytest.raises(IntegrityError, match="attention sees future tokens"):   # caught and tried again
        evaluate_bpb(prefix_mean, 16, SMOKE, source=source)
    assert read(record_file)["trick"] == "causality"


def test_nondeterministic_kernels_do_not_raise_a_false_alarm(small_corpus, record_file):
    """Losses that wobble by up to 1e-4 from call to call (atomics, split reductions) are still causal."""
    source, _ = small_corpus
    rng = np.random.default_rng(0)

    def wobbly(inputs, targets):
        return prefix_mean(inputs, targets) + rng.uniform(0, 1e-4, inputs.shape).astype(np.float32)

    evaluate_bpb(wobbly, 16, SMOKE, source=source)
    check = read(record_file)["causal_check"]
    assert check["ok"] and 1e-5 < check["tolerance"] < 1e-3


def test_a_batch_of_one_row_is_probed_too(small_corpus, record_file):
    source, _ = small_corpus
    tiny = dataclasses.replace(SMOKE, name="tiny", eval_tokens=3 * 64)
    evaluate_bpb(prefix_mean, 1, tiny, source=source)
    assert read(record_file)["causal_check"]["ok"] is True
    with pytest.raises(IntegrityError):
        evaluate_bpb(peeks_one_ahead, 1, tiny, source=source)


def test_a_rejection_is_one_paragraph_and_exit_status_2(small_corpus, capsys):
    source, _ = small_corpus
    with pytest.raises(SystemExit) as exited:
        run_cli(evaluate_bpb, sees_the_whole_row, 16, SMOKE, source=source)
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: The model's attention sees future tokens") and "\n" not in err


# ---------------------------------------------------------------------------------------------------------
# The loader: the budget guard, and the training split only
# ---------------------------------------------------------------------------------------------------------

def smoke_loader(small_corpus, monkeypatch, budget):
    """A training loader under the smoke profile with `budget` seconds, fixed in the environment as the agent
    fixes it. Its batches are 2 x 64 tokens: 16 of them make the profile's 2 untimed steps of 1024 tokens."""
    source, tok = small_corpus
    monkeypatch.setenv("AUTORESEARCH_PROFILE", "smoke")
    monkeypatch.setenv("AUTORESEARCH_BUDGET", str(budget))
    return make_loader("train", 2, 64, source=source, tokenizer=tok)


def test_the_loader_stops_serving_once_training_runs_past_the_budget(small_corpus, monkeypatch, record_file):
    loader = smoke_loader(small_corpus, monkeypatch, 0.5)
    for _ in range(16):                                          # the untimed steps
        next(loader)
    assert record.train["timed_start_at"] is None
    next(loader)                                                 # the first timed batch
    train = record.train
    assert train["deadline_at"] == pytest.approx(train["timed_start_at"] + 0.5 + 5.0)  # slack: at least 5 s
    next(loader)
    time.sleep(max(0.0, train["deadline_at"] - time.time()) + 0.05)
    with pytest.raises(IntegrityError, match=r"past its budget.*budget is 0\.5 s.*fixed by the profile") as raised:
        next(loader)
    with pytest.raises(IntegrityError):                          # and it stays stopped
        next(loader)
    got = read(record_file)
    assert got["trick"] == "budget" and got["rejected"] == str(raised.value) and got["nonce"] == "f00dcafe"
    assert got["val_bpb"] is None
    assert got["train"]["stopped"] is True
    assert (got["train"]["batches"], got["train"]["tokens"]) == (18, 18 * 128)


def test_an_honest_run_within_the_budget_is_served_and_counted(small_corpus, monkeypatch, record_file):
    loader = smoke_loader(small_corpus, monkeypatch, 1)
    t0 = time.time()
    served = 0
    while time.time() - t0 < 1.5:                                # the budget, and a last step begun in time
        next(loader)
        served += 1
    source, _ = small_corpus
    evaluate_bpb(prefix_mean, 16, SMOKE, source=source)
    train = read(record_file)["train"]
    assert (train["batches"], train["tokens"], train["stopped"]) == (served, served * 128, False)
    assert t0 <= train["first_batch_at"] <= train["timed_start_at"] <= train["last_batch_at"] < train["deadline_at"]
    assert train["deadline_at"] - train["timed_start_at"] == pytest.approx(1 + 5.0)


def batches_every(seconds):
    """Endless (inputs, targets, epoch) of 2 x 64 tokens, each made `seconds` after the last: a packer that slow."""
    while True:
        time.sleep(seconds)
        yield np.zeros((2, 64), np.int32), np.zeros((2, 64), np.int32), 1


def test_timed_training_counts_its_wait_for_a_slow_loader(monkeypatch, record_file, capsys):
    monkeypatch.setenv("AUTORESEARCH_PROFILE", "smoke")
    loader = BudgetedBatches(batches_every(0.05), 4, 128, get_profile())
    for _ in range(16):                                          # untimed: waits there are not counted
        next(loader)
    assert record.train["data_wait_s"] == 0.0
    for _ in range(10):                                          # timed: each batch ~0.05 s late
        next(loader)
    assert 0.3 < record.train["data_wait_s"] < 1.5
    print_summary(**VALUES)
    assert f"data_wait_seconds: {record.train['data_wait_s']:.1f}\n---\n" in capsys.readouterr().out


def test_a_loader_that_keeps_up_costs_timed_training_no_wait(monkeypatch, record_file):
    monkeypatch.setenv("AUTORESEARCH_PROFILE", "smoke")
    loader = BudgetedBatches(batches_every(0.0), 4, 128, get_profile())
    for _ in range(17):                                          # the untimed steps and the first timed batch
        next(loader)
    time.sleep(0.2)                                              # a training step: the thread packs ahead
    for _ in range(4):
        next(loader)
    assert record.train["data_wait_s"] < 0.05


def test_a_fresh_loader_buys_no_fresh_untimed_steps(small_corpus, monkeypatch):
    first = smoke_loader(small_corpus, monkeypatch, 1)
    for _ in range(16):
        next(first)
    second = smoke_loader(small_corpus, monkeypatch, 1)
    next(second)
    assert record.train["timed_start_at"] is not None and record.train["batches"] == 17


def test_the_loader_refuses_the_validation_split(small_corpus, record_file):
    source, tok = small_corpus
    with pytest.raises(IntegrityError, match="serves the training split only") as raised:
        make_loader("val", 16, 64, source=source, tokenizer=tok)
    assert isinstance(raised.value, ContractError)                # run_cli: one paragraph, exit status 2
    got = read(record_file)
    assert got["trick"] == "validation" and got["rejected"] == str(raised.value) and got["train"] is None
