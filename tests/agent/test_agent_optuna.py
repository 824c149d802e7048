"""The offline proposer on Optuna (--search optuna): its search space, its study rebuilt from the log, two workers
and a resume, with real loop processes on the fixture canvas (smoke profile)."""

import ast
import math
import os
import signal
import subprocess
import sys
import time
from argparse import Namespace
from datetime import datetime
from pathlib import Path

import pytest
from agentkit import agent_argv, check_consistent, git, make_repo, rows, run_agent

from agent.__main__ import main
from agent.proposers import make_proposer
from agent.proposers.base import Context, NoProposal
from agent.proposers.offline import constants
from agent.proposers.optuna_search import Dim, OptunaProposer, search_space
from common.errors import ContractError
from common.platform import get_profile

CANVAS = "backends/fixture/train.py"
OPTUNA = ("--proposer", "offline", "--search", "optuna")

SRC = '''"""doc"""
MATRIX_LR = 0.04  # comment kept
EMBEDDING_LR = 0.6
WEIGHT_DECAY = 0.0
WARMUP_RATIO = 0.0
WARMDOWN_RATIO = 0.5
ADAM_BETA2 = 0.95
ASPECT_RATIO = 64
HEAD_DIM = 128
DEPTH = 8
TOTAL_BATCH_SIZE = 2**19
DEVICE_BATCH_SIZE = 128
MOMENTUM_RAMP_STEPS = 300
WINDOW = 3
SCALE = 1.5
OFFSET = -2.0
SEED = 42
ADAM_BETAS = (0.8, 0.95)
'''


def context(root, text, history, in_flight=()):
    return Context(str(root), CANVAS, text, list(history), "", "fixture", get_profile("smoke"), None,
                   in_flight=list(in_flight))


def tip_context(repo, rs, in_flight=()):
    """The context the loop gives the proposer after the rows rs: the canvas at the last kept commit."""
    tip = [r for r in rs if r["status"] == "keep"][-1]["commit"]
    return context(repo, git(repo, "show", f"{tip}:{CANVAS}") + "\n", rs, in_flight)


def in_range(dim, value):
    return dim.low <= value <= dim.high and (dim.kind not in ("int", "log-int", "pow2") or isinstance(value, int)) \
        and (dim.kind != "pow2" or value & (value - 1) == 0)


def test_the_search_space_table():
    space = search_space(SRC)
    got = {n: (d.kind, d.low, d.high) + ((d.step,) if d.step != 1 else ()) for n, d in space.items()}
    assert got == {
        "MATRIX_LR": ("log", 0.01, 0.16), "EMBEDDING_LR": ("log", 0.15, 2.4),
        "WARMUP_RATIO": ("float", 0.0, 0.3), "WARMDOWN_RATIO": ("float", 0.0, 1.0),
        "ADAM_BETA2": ("float", 0.5, 0.999), "ASPECT_RATIO": ("int", 32, 128, 16), "HEAD_DIM": ("pow2", 64, 256),
        "DEPTH": ("int", 4, 16), "TOTAL_BATCH_SIZE": ("pow2", 2**17, 2**21), "DEVICE_BATCH_SIZE": ("pow2", 32, 512),
        "MOMENTUM_RAMP_STEPS": ("log-int", 75, 1200), "WINDOW": ("log-int", 1, 12), "SCALE": ("log", 0.375, 6.0)}
    # left out: a log range around 0 (WEIGHT_DECAY = 0.0), a negative float, SEED, a tuple
    # literals: ints as ints, 2**k where the canvas writes it so, floats short but inside the range
    assert space["TOTAL_BATCH_SIZE"].literal(20, "2**19") == "2**20"
    assert space["DEVICE_BATCH_SIZE"].literal(8, "128") == "256"
    assert space["DEPTH"].literal(9, "8") == "9"
    assert space["MATRIX_LR"].literal(0.0123456, "0.04") == "0.0123"
    assert space["WARMDOWN_RATIO"].literal(1.0, "0.5") == "1.0"
    edge = Dim("X_LR", "log", 0.01234, 0.04936)
    assert edge.literal(0.049358, "0.02") == "0.04936" and edge.literal(0.012341, "0.02") == "0.01234"
    # told to the study: on its grid, inside its range
    assert space["TOTAL_BATCH_SIZE"].internal(3 * 2**18) == 20 and space["DEPTH"].internal(40) == 16
    assert space["ASPECT_RATIO"].internal(49) == 48 and space["ASPECT_RATIO"].internal(7) == 32


def test_search_needs_the_offline_proposer():
    args = Namespace(seed=0, search="optuna", command=None)
    assert make_proposer("offline", args).name == "optuna"
    assert make_proposer("offline", Namespace(seed=0, search="coordinate")).name == "offline"
    with pytest.raises(ContractError, match="--search optuna"):
        make_proposer("command", Namespace(seed=0, search="optuna", command="cat"))


def test_a_pure_function_of_the_log_in_flight_trials_differ_and_an_exhausted_space_stops(tmp_path):
    """No git here: the rows' meta params are the trials (the ranges come from this canvas, as no baseline row)."""
    text = (Path(__file__).with_name("fixture_train.py")).read_text()
    p = OptunaProposer(seed=3)
    history = []
    for i in range(4):
        prop = p.propose(context(tmp_path, text, history))
        assert prop.description == OptunaProposer(seed=3).propose(context(tmp_path, text, history)).description
        history.append({"n": i + 1, "kind": "experiment", "status": "discard", "commit": f"c{i}",
                        "val_bpb": 1.0 + i / 10, "meta": prop.meta})
    assert OptunaProposer(seed=4).propose(context(tmp_path, text, history)).meta != prop.meta
    # three asked at once (each told the ones before it is in flight): three different trials
    flight = []
    for _ in range(3):
        prop = p.propose(context(tmp_path, text, history, flight))
        flight.append({"description": prop.description, "diff": "", "meta": prop.meta})
    assert len({tuple(sorted(f["meta"]["params"].items())) for f in flight}) == 3
    assert [f["meta"]["trial"] for f in flight] == [4, 5, 6]
    study = p.study(context(tmp_path, text, history, flight))[0]
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4 + ["RUNNING"] * 3
    # a one-constant canvas whose every value was measured: nothing left, said so
    tiny = "DEPTH = 2\n"
    done = [{"n": i, "kind": "experiment", "status": "discard", "commit": f"d{i}", "val_bpb": 1.0,
             "meta": {"params": {"DEPTH": d}}} for i, d in enumerate((1, 3, 4))]
    with pytest.raises(NoProposal, match="exhausted") as e:
        p.propose(context(tmp_path, tiny, done))
    assert e.value.exhausted
    with pytest.raises(NoProposal, match="no module-level numeric constant"):
        p.propose(context(tmp_path, "X = 'a'\n", []))


def test_two_workers_distinct_changes_in_range_and_every_outcome_in_the_study(repo, monkeypatch):
    """Four constants (BETA2 and WEIGHT_DECAY hidden from the search); any change of DEPTH crashes."""
    monkeypatch.setenv("FIXTURE_SECONDS", "1.0")
    canvas = (repo / CANVAS).read_text()
    for name, value in (("BETA2", "0.9"), ("WEIGHT_DECAY", "0.1")):
        canvas = canvas.replace(f"\n{name} = {value}\n", f"\n{name} = eval('{value}')\n")
    canvas = canvas.replace("if DEPTH > 8:", "if DEPTH != 3:")
    (repo / CANVAS).write_text(canvas)
    git(repo, "commit", "-qam", "four constants; DEPTH must stay 3")
    main(agent_argv(repo, *OPTUNA, "--workers", "2", "--max-experiments", "6"))
    rs = check_consistent(repo)
    space = search_space(git(repo, "show", f"{rs[0]['commit']}:{CANVAS}"))
    assert sorted(space) == ["BATCH", "DEPTH", "LR", "WARMDOWN_RATIO"]
    experiments = [r for r in rs if r["kind"] == "experiment"]
    assert len([r for r in experiments if r["status"] != "rebase"]) == 6
    assert {r["worker"] for r in experiments} == {0, 1}
    proposed = [r for r in experiments if not r.get("rerun_of")]
    for r in proposed:
        meta = r["meta"]
        assert r["proposer"] == "optuna" and r["description"].startswith(f"optuna trial {meta['trial']}: ")
        assert all(in_range(space[n], v) for n, v in meta["params"].items())
        # applicable: the canvas it trained holds the trial's values, changed from its parent as described
        trained = constants(git(repo, "show", f"{r['commit']}:{CANVAS}"))
        parent = constants(git(repo, "show", f"{r['parent']}:{CANVAS}"))
        assert {n: trained[n].value for n in space} == meta["params"]
        assert meta["changed"] and {n for n in space if trained[n].value != parent[n].value} == set(meta["changed"])
        for n, (old, new) in meta["changed"].items():
            assert parent[n].src == old and trained[n].src == new and f"{n} {old} -> {new}" in r["description"]
    # distinct: no two trials alike, and some ran at the same time
    assert len({tuple(sorted(r["meta"]["params"].items())) for r in proposed}) == len(proposed)
    assert len({r["meta"]["trial"] for r in proposed}) == len(proposed)
    start = lambda r: datetime.fromisoformat(r["started_at"])  # noqa: E731
    end = lambda r: datetime.fromisoformat(r["finished_at"])  # noqa: E731
    assert any(start(a) < end(b) and start(b) < end(a) for i, a in enumerate(experiments) for b in experiments[i + 1:])
    # every finished outcome is in the study rebuilt from results.jsonl: a crash as FAIL, the rest with their value
    crashed = [r for r in experiments if r["status"] == "crash"]
    assert crashed and all("DEPTH" in r["meta"]["changed"] for r in crashed)
    study = OptunaProposer(seed=0).study(tip_context(repo, rs))[0]
    assert len(study.trials) == len(rs)
    for r, t in zip(rs, study.trials):
        trained = constants(git(repo, "show", f"{r['commit']}:{CANVAS}"))
        assert t.params == {n: space[n].internal(trained[n].value) for n in space}
        if r["status"] == "crash":
            assert t.state.name == "FAIL" and t.value is None
        else:
            assert t.state.name == "COMPLETE" and t.value == r["val_bpb"]
    # what runs now is in it too, as RUNNING; the next proposal differs from it
    flight = [{"description": r["description"], "diff": "", "meta": r["meta"]} for r in proposed[-2:]]
    ctx = tip_context(repo, rs[:-2], flight)
    assert [t.state.name for t in OptunaProposer(seed=0).study(ctx)[0].trials][-2:] == ["RUNNING", "RUNNING"]
    nxt = OptunaProposer(seed=0).propose(ctx).meta["params"]
    assert all(nxt != f["meta"]["params"] for f in flight)


def test_resume_proposes_what_an_uninterrupted_run_would(tmp_path):
    """Uninterrupted: 4 experiments. Interrupted: killed while the 3rd trains, resumed to 4. The same 4 changes;
    and each one is what the proposer makes of the rows before it (a pure function of the log)."""
    k = 4
    one = make_repo(tmp_path / "one")
    run_agent(one, *agent_argv(one, *OPTUNA, "--max-experiments", str(k)), env={"FIXTURE_SECONDS": "0"})
    rs = check_consistent(one)
    assert len(rs) == k + 1
    p = OptunaProposer(seed=0)
    for n in range(1, k + 1):
        prop = p.propose(tip_context(one, rs[:n]))
        assert (prop.description, prop.meta) == (rs[n]["description"], rs[n]["meta"])

    two = make_repo(tmp_path / "two")
    env = dict(os.environ, FIXTURE_SECONDS="1.0")
    for key in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY"):
        env.pop(key, None)
    proc = subprocess.Popen([sys.executable, "-m", "agent", *agent_argv(two, *OPTUNA, "--max-experiments", str(k))],
                            cwd=two, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    jsonl, deadline = two / "runs/t1/results.jsonl", time.monotonic() + 60
    while not (jsonl.exists() and len(jsonl.read_text().splitlines()) >= 3 and (two / "runs/t1/logs/003.log").exists()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # while the 3rd experiment trains
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and len(rows(two)) == 3, (out, err)
    run_agent(two, *agent_argv(two, *OPTUNA, "--max-experiments", str(k)), "--resume", env={"FIXTURE_SECONDS": "0"})
    resumed = check_consistent(two)
    assert [(r["description"], r["meta"], r["status"]) for r in resumed] == \
        [(r["description"], r["meta"], r["status"]) for r in rs]
    assert math.isclose(resumed[-1]["val_bpb"], rs[-1]["val_bpb"])
    ast.parse((two / CANVAS).read_text())
