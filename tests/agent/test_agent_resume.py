"""Kill the loop mid-experiment (Ctrl-C, then SIGKILL), resume, and lose or duplicate no row."""

import json
import os
import signal
import subprocess
import sys
import time

from agentkit import agent_argv, check_consistent, git, rows, run_agent


def start(repo, *extra):
    env = dict(os.environ, FIXTURE_SECONDS="2.0")
    env.pop("ANTHROPIC_API_KEY", None)
    env.pop("OPENAI_API_KEY", None)
    return subprocess.Popen([sys.executable, "-m", "agent", *agent_argv(repo, "--proposer", "offline", *extra)],
                            cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_mid_experiment(repo, proc, min_rows):
    """Block until experiment `min_rows` (or later) is training, then return its number."""
    jsonl = repo / "runs/t1/results.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        n = len(jsonl.read_text().splitlines()) if jsonl.exists() else 0
        if n >= min_rows and (repo / f"runs/t1/logs/{n:03d}.log").exists():
            time.sleep(0.5)  # well inside the 2 s run
            return n
        time.sleep(0.05)
    raise AssertionError("the loop did not get there in time")


def test_interrupt_and_resume_lose_nothing(repo):
    proc = start(repo, "--max-experiments", "6")
    n = wait_mid_experiment(repo, proc, 2)
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "--resume" in out, (out, err)
    assert len(rows(repo)) == n
    assert git(repo, "status", "--porcelain", "--untracked-files=no") == ""
    check_consistent(repo)

    proc = start(repo, "--max-experiments", "6", "--resume")
    n = wait_mid_experiment(repo, proc, n + 1)
    proc.kill()  # no chance to clean up
    proc.communicate()
    assert len(rows(repo)) == n
    [interrupted] = json.loads((repo / "runs/t1/inflight.json").read_text())

    run_agent(repo, *agent_argv(repo, "--proposer", "offline", "--max-experiments", "6"), "--resume")
    rs = check_consistent(repo)
    assert len(rs) == 7
    assert len({r["description"] for r in rs[1:]}) == 6
    assert rs[n]["resumed"] == interrupted["name"] and rs[n]["description"] == interrupted["description"]
    assert all((repo / f"runs/t1/logs/{r['n']:03d}.log").exists() for r in rs)


def test_a_change_made_on_an_older_canvas_is_applied_on_the_new_best(repo):
    """What a re-run after a kill (or a re-apply on a new best) does with a change whose parent was overtaken:
    the change lands on the new best, even next to a line the best changed, and a clash gives None."""
    from agent.git import Git, apply_change
    canvas = "backends/fixture/train.py"
    g = Git(repo)
    parent, text = g.head(), (repo / canvas).read_text()
    (repo / canvas).write_text(text.replace("WARMDOWN_RATIO = 0.2", "WARMDOWN_RATIO = 0.6"))
    best = g.commit_file(canvas, "the new best")
    merged = apply_change(g, parent, text.replace("BETA2 = 0.9", "BETA2 = 0.95"), best, canvas)
    assert "WARMDOWN_RATIO = 0.6" in merged and "BETA2 = 0.95" in merged
    assert apply_change(g, parent, text.replace("WARMDOWN_RATIO = 0.2", "WARMDOWN_RATIO = 0.3"), best, canvas) is None
