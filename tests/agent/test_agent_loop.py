"""The loop with the offline proposer on the fixture canvas: branch and logs, refusals, confirm, noise, report."""

import json
import subprocess
import sys

import pytest
from agentkit import agent_argv, check_consistent, git, rows, run_agent

from agent.__main__ import main, parse_deadline
from common.errors import ContractError


def test_offline_loop_branch_logs_and_report(repo):
    main(agent_argv(repo, "--proposer", "offline", "--max-experiments", "8"))
    rs = check_consistent(repo)
    assert len(rs) == 9
    statuses = {r["status"] for r in rs[1:]}
    assert "keep" in statuses and "discard" in statuses
    best = [r["val_bpb"] for r in rs if r["status"] == "keep"]
    assert best == sorted(best, reverse=True)  # every keep improved on the one before
    assert all(r["proposer"] == "offline" and r["meta"]["name"] for r in rs[1:])
    assert len({r["description"] for r in rs[1:]}) == 8  # never the same change twice
    assert git(repo, "rev-parse", "--abbrev-ref", "HEAD") == "autoresearch/t1"
    assert "/runs/" in (repo / ".git/info/exclude").read_text()

    main(["report", "--repo", str(repo), "--tag", "t1"])
    md = (repo / "runs/t1/report.md").read_text()
    assert (repo / "runs/t1/progress.png").stat().st_size > 10_000
    assert f"{rs[0]['val_bpb']:.6f}" in md and f"{best[-1]:.6f}" in md
    assert "Kept changes, ranked by gain" in md and "keep rate" in md


def test_offline_is_deterministic_and_learns(tmp_path):
    from agentkit import make_repo
    a, b = make_repo(tmp_path / "a"), make_repo(tmp_path / "b")
    for r in (a, b):
        main(agent_argv(r, "--proposer", "offline", "--max-experiments", "5", "--seed", "3"))
    assert [x["description"] for x in rows(a)] == [x["description"] for x in rows(b)]
    assert rows(a)[-1]["val_bpb"] is not None


def test_crash_is_logged_and_reverted(repo):
    canvas = repo / "backends/fixture/train.py"
    canvas.write_text(canvas.read_text().replace("DEPTH = 3", "DEPTH = 8").replace("if DEPTH > 8", "if DEPTH != 8"))
    git(repo, "commit", "-qam", "any other depth crashes")
    main(agent_argv(repo, "--proposer", "offline", "--max-experiments", "6", "--seed", "1"))
    rs = check_consistent(repo)
    crash = [r for r in rs if r["status"] == "crash"]
    assert crash and crash[0]["description"].startswith("DEPTH 8 -> ") and "does not fit in memory" in crash[0]["error"]
    assert crash[0]["val_bpb"] is None and "DEPTH = 8" in canvas.read_text()


def test_refusals_are_one_clear_paragraph(repo):
    main(agent_argv(repo, "--proposer", "offline", "--max-experiments", "1"))
    again = run_agent(repo, *agent_argv(repo, "--proposer", "offline"), check=False)
    assert again.returncode == 2 and "already exists" in again.stderr and "--resume" in again.stderr
    assert "Traceback" not in again.stderr
    missing = run_agent(repo, *agent_argv(repo, "--resume", tag="nope"), check=False)
    assert missing.returncode == 2 and "no branch autoresearch/nope" in missing.stderr
    nokey = run_agent(repo, *agent_argv(repo, "--proposer", "openai", tag="x"), env={"OPENAI_BASE_URL": ""},
                      check=False)
    assert nokey.returncode == 2 and "needs OPENAI_API_KEY" in nokey.stderr
    nobackend = run_agent(repo, *agent_argv(repo, backend="tpu", tag="x"), check=False)
    assert nobackend.returncode == 2 and "found: fixture" in nobackend.stderr
    for i in range(2):  # commits by hand on the agent's branch: resume must not reset them away
        (repo / "notes.md").write_text(str(i))
        git(repo, "add", "notes.md")
        git(repo, "commit", "-qm", f"by hand {i}")
    moved = run_agent(repo, *agent_argv(repo, "--resume"), check=False)
    assert moved.returncode == 2 and "changed by hand" in moved.stderr
    (repo / "backends/fixture/train.py").write_text("# edited by hand\n")
    dirty = run_agent(repo, *agent_argv(repo, tag="t2"), check=False)
    assert dirty.returncode == 2 and "uncommitted changes" in dirty.stderr
    with pytest.raises(ContractError, match="not a time"):
        parse_deadline("tomorrow-ish")


def test_no_key_means_offline(repo, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    main(agent_argv(repo, "--max-experiments", "1"))
    assert rows(repo)[1]["proposer"] == "offline"


def test_deadline_stops_the_loop(repo):
    main(agent_argv(repo, "--proposer", "offline", "--deadline", "0s", "--max-experiments", "5"))
    assert len(rows(repo)) == 1  # the baseline only


def test_confirm_and_noise_reach_the_report(repo):
    env_noise = {"FIXTURE_NOISE": "0.002"}
    run_agent(repo, "noise", "--runs", "4", "--repo", str(repo), "--backend", "fixture", "--profile", "smoke",
              "--tag", "t1", env=env_noise)
    run_agent(repo, *agent_argv(repo, "--proposer", "offline", "--max-experiments", "3", "--confirm", "2"),
              env=env_noise)
    rs = check_consistent(repo)
    assert len(rs[0]["val_bpb_runs"]) == 3
    for r in rs[1:]:
        if r["status"] == "keep":
            assert len(r["val_bpb_runs"]) == 3 and r["val_bpb"] == pytest.approx(sum(r["val_bpb_runs"]) / 3)
    out = run_agent(repo, "report", "--repo", str(repo))  # the latest run, found without --tag
    assert "runs/t1/report.md" in out.stdout
    md = (repo / "runs/t1/report.md").read_text()
    assert "baseline noise | std" in md and "over 4 runs" in md and "confirmation reruns | 2" in md


def test_plain_output_when_not_a_tty(repo):
    out = subprocess.run([sys.executable, "-m", "agent", *agent_argv(repo, "--proposer", "offline",
                                                                        "--max-experiments", "2")],
                         cwd=repo, capture_output=True, text=True, check=True)
    lines = out.stdout.splitlines()
    assert lines[0].startswith("autoresearch autoresearch/t1") and "\x1b[" not in out.stdout
    assert any(line.startswith("[002] ") and "best" in line for line in lines)


def test_a_budget_override_is_recorded_in_the_profile_name(repo):
    """--budget (BUDGET= for make) derives the profile smoke@2s: the runs get it and every row records it."""
    run_agent(repo, "noise", "--runs", "1", "--repo", str(repo), "--backend", "fixture", "--profile", "smoke",
              "--budget", "2", "--tag", "t1")
    run_agent(repo, *agent_argv(repo, "--proposer", "offline", "--max-experiments", "1", "--budget", "2"))
    noise = [json.loads(line) for line in (repo / "runs/t1/noise.jsonl").read_text().splitlines()]
    assert [r["profile"] for r in noise] == ["smoke@2s"]
    assert {r["profile"] for r in rows(repo)} == {"smoke@2s"}


def test_the_live_view_labels_the_untimed_phase():
    """While a run compiles and takes its untimed steps (no progress reported yet) the view says so, rather
    than counting those seconds against the budget ('7 s of 3 s budget'); then it shows the budget's share."""
    import time as _time

    from rich.console import Console

    from agent.view import State, training_status
    s = State("t", 3, None)
    s.phase, s.started, s.fraction = "training", _time.monotonic() - 7, None
    console = Console(width=200, record=True)
    console.print(training_status(s))
    assert "untimed start-up 7 s" in console.export_text() and "of 3 s budget" not in console.export_text()
    s.fraction = 0.5
    console.print(training_status(s))
    assert "50.0% of the 3 s budget" in console.export_text()
