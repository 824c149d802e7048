"""Several experiments at once (--workers N on the CPU; --gpus on a GPU host): real processes, fixture canvas."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from agentkit import (agent_argv, check_consistent, check_kept_chain, git, overlapping, reapply_scenario, rows,
                      run_agent)

from agent.__main__ import main
from agent.executor import parse_slots
from common.errors import ContractError

CANVAS = "backends/fixture/train.py"


def test_two_workers_offline(repo, monkeypatch):
    monkeypatch.setenv("FIXTURE_SECONDS", "1.0")
    main(agent_argv(repo, "--proposer", "offline", "--workers", "2", "--max-experiments", "6"))
    rs = check_consistent(repo)
    experiments = [r for r in rs if r["kind"] == "experiment"]
    assert len([r for r in experiments if r["status"] != "rebase"]) == 6
    assert {r["worker"] for r in experiments} == {0, 1} and {r["slot"] for r in experiments} == {"cpu0", "cpu1"}
    assert all(r["gpu"] is None and r["node"] and r["parent"] for r in experiments)
    check_kept_chain(repo, rs)
    # runs in flight at the same time were different changes, and some did run at the same time
    pairs = [(a, b) for i, a in enumerate(experiments) for b in experiments[i + 1:] if overlapping(a, b)]
    assert pairs and all(a["description"] != b["description"] for a, b in pairs)
    # each run's log is named in its row; each worker trained in its own worktree, at its last commit
    assert all((repo / "runs/t1" / r["log"]).exists() for r in experiments)
    worktrees = git(repo, "worktree", "list")
    assert "runs/t1/worktrees/cpu0" in worktrees and "runs/t1/worktrees/cpu1" in worktrees
    last_kept = [r for r in rs if r["status"] == "keep"][-1]["commit"]
    assert git(repo, "rev-parse", "HEAD") == last_kept
    # the report counts experiments per hour in all and per worker, and each worker's idle time
    main(["report", "--repo", str(repo), "--tag", "t1"])
    report = (repo / "runs/t1/report.md").read_text()
    assert "## Workers" in report and "per hour** in all" in report
    for slot in ("cpu0", "cpu1"):
        line = next(line for line in report.splitlines() if line.startswith(f"| {slot} |"))
        assert int(line.split("|")[2]) == sum(1 for r in rs if r.get("slot") == slot)  # the baseline too
    assert (repo / "runs/t1/progress.png").stat().st_size > 10_000


def test_a_gain_whose_parent_was_overtaken_is_reapplied_on_the_new_best_and_rerun(repo, monkeypatch):
    monkeypatch.setenv("FIXTURE_SECONDS", "1.0")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    reapply_scenario(repo, "--workers", "2")


def test_a_killed_driver_with_two_busy_workers_resumes_without_losing_a_row(repo):
    env = dict(os.environ, FIXTURE_SECONDS="3.0")
    for key in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY"):
        env.pop(key, None)
    argv = [sys.executable, "-m", "agent", *agent_argv(repo, "--proposer", "offline", "--workers", "2",
                                                       "--max-experiments", "6")]
    proc = subprocess.Popen(argv, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    jsonl = repo / "runs/t1/results.jsonl"
    deadline = time.monotonic() + 60
    while not (jsonl.exists() and len(jsonl.read_text().splitlines()) >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    time.sleep(1.0)  # both workers are training now
    logged = len(rows(repo))
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "--resume" in out and "--workers 2" in out, (out, err)
    assert len(rows(repo)) == logged
    check_consistent(repo)

    run_agent(repo, *agent_argv(repo, "--proposer", "offline", "--workers", "2", "--max-experiments", "6"),
              "--resume", env={"FIXTURE_SECONDS": "0.5"})
    rs = check_consistent(repo)
    assert [r["n"] for r in rs] == list(range(len(rs)))
    assert len([r for r in rs if r["kind"] == "experiment" and r["status"] != "rebase"]) == 6
    check_kept_chain(repo, rs)


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has finished
    except OSError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the trainings through /proc")
def test_after_kill_9_resume_stops_the_orphaned_trainings_and_runs_them_again(repo):
    env = dict(os.environ, FIXTURE_SECONDS="60")
    for key in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY"):
        env.pop(key, None)
    argv = [sys.executable, "-m", "agent", *agent_argv(repo, "--proposer", "offline", "--workers", "2",
                                                       "--max-experiments", "4", "--baseline-runs", "1")]
    proc = subprocess.Popen(argv, cwd=repo, env={**env, "FIXTURE_SECONDS": "0"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.communicate(timeout=120)  # a first run: baseline and 4 quick experiments
    run = [sys.executable, "-m", "agent", *agent_argv(repo, "--proposer", "offline", "--workers", "2",
                                                      "--max-experiments", "6"), "--resume"]
    proc = subprocess.Popen(run, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    logs = repo / "runs/t1/logs"
    deadline = time.monotonic() + 60
    while len(list(logs.glob("*.pid"))) < 2:  # both workers are training (for 60 s)
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    pids = [int(p.read_text()) for p in logs.glob("*.pid")]
    inflight = {e["name"]: e["description"] for e in json.loads((repo / "runs/t1/inflight.json").read_text())}
    proc.kill()  # kill -9: no clean-up, the two trainings go on
    proc.communicate()
    assert all(alive(pid) for pid in pids) and len(inflight) == 2

    run_agent(repo, *run[3:], env={"FIXTURE_SECONDS": "0.2"})
    assert not any(alive(pid) for pid in pids)
    rs = check_consistent(repo)
    resumed = {r["resumed"]: r["description"] for r in rs if r.get("resumed")}
    assert resumed == inflight  # both interrupted experiments ran again, under their own descriptions
    assert len([r for r in rs if r["kind"] == "experiment" and r["status"] != "rebase"]) == 6
    check_kept_chain(repo, rs)


def test_gpus_and_workers_are_checked():
    assert parse_slots("0,1", 1) == ["0", "1"] and parse_slots(None, 3) == ["cpu0", "cpu1", "cpu2"]
    for bad in ("0,0", "a,b", ","):
        with pytest.raises(ContractError, match="--gpus"):
            parse_slots(bad, 1)
    with pytest.raises(ContractError, match="--workers"):
        parse_slots(None, 0)


def test_the_offline_search_waits_for_runs_in_flight_when_it_has_nothing_else_to_try(repo, monkeypatch):
    """With DEPTH its only constant, the offline search has two moves from the baseline: both go to the two
    workers. DEPTH 2 trains faster here and is discarded while DEPTH 4 still runs, so a worker is free and
    the search has nothing left. It must wait, not stop: the kept DEPTH 4 opens new moves from the new best."""
    monkeypatch.setenv("FIXTURE_SECONDS", "1.0")
    canvas = (repo / CANVAS).read_text()
    for name, value in (("LR", "0.02"), ("WARMDOWN_RATIO", "0.2"), ("BETA2", "0.9"), ("WEIGHT_DECAY", "0.1"),
                        ("BATCH", "2**4")):
        canvas = canvas.replace(f"\n{name} = {value}\n", f"\n{name} = eval('{value}')\n")
    canvas = canvas.replace("time.sleep(seconds / steps)", "time.sleep(seconds * DEPTH / 3 / steps)")
    (repo / CANVAS).write_text(canvas)
    git(repo, "commit", "-qam", "only DEPTH is a constant, and deeper is slower")
    main(agent_argv(repo, "--proposer", "offline", "--workers", "2", "--max-experiments", "4"))
    rs = check_consistent(repo)
    assert [r["description"] for r in rs[1:3]] in (["DEPTH 3 -> 4", "DEPTH 3 -> 2"], ["DEPTH 3 -> 2", "DEPTH 3 -> 4"])
    assert len([r for r in rs if r["kind"] == "experiment"]) == 4 and "DEPTH 4 -> 5" in {r["description"] for r in rs}
