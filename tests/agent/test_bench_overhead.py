"""The loop's own overhead per experiment (everything but training and the proposer): at most 2 s.

20 experiments of the fixture canvas with the offline proposer. The fixture trains in no time, so the whole
wall time is overhead, start-up of the training process included.
"""

import time

import pytest
from agentkit import agent_argv, check_consistent, make_repo

from agent.__main__ import main

EXPERIMENTS = 20


@pytest.mark.bench
def test_loop_overhead_per_experiment(benchmark, tmp_path):
    repo = make_repo(tmp_path / "r0")

    def twenty():
        main(agent_argv(repo, "--proposer", "offline", "--max-experiments", str(EXPERIMENTS)))

    started = time.perf_counter()
    benchmark.pedantic(twenty, rounds=1, iterations=1)
    wall = time.perf_counter() - started
    rs = check_consistent(tmp_path / "r0")
    assert len(rs) == EXPERIMENTS + 1
    overhead = [r["overhead_seconds"] for r in rs[1:]]
    per_experiment = wall / (EXPERIMENTS + 1)
    benchmark.extra_info.update(per_experiment_s=per_experiment, max_overhead_s=max(overhead))
    print(f"\n{EXPERIMENTS} experiments in {wall:.2f} s: {per_experiment:.3f} s each, wall time per experiment "
          f"including the training process; loop overhead alone at most {max(overhead):.3f} s (target: 2 s)")


@pytest.mark.bench
def test_loop_overhead_per_experiment_with_four_workers(benchmark, tmp_path):
    """The same with --workers 4: the driver prepares each run in a git worktree and judges it, while the
    other workers train. Target: at most 2 s of overhead per experiment."""
    repo = make_repo(tmp_path / "r4")

    def twenty():
        main(agent_argv(repo, "--proposer", "offline", "--workers", "4", "--max-experiments", str(EXPERIMENTS)))

    started = time.perf_counter()
    benchmark.pedantic(twenty, rounds=1, iterations=1)
    wall = time.perf_counter() - started
    rs = check_consistent(repo)
    done = [r for r in rs if r["kind"] == "experiment" and r["status"] != "rebase"]
    assert len(done) == EXPERIMENTS and {r["slot"] for r in done} == {"cpu0", "cpu1", "cpu2", "cpu3"}
    overhead = [r["overhead_seconds"] for r in rs[1:]]
    per_experiment = wall / (len(rs))
    benchmark.extra_info.update(per_experiment_s=per_experiment, max_overhead_s=max(overhead))
    print(f"\n4 workers, {len(rs) - 1} experiments in {wall:.2f} s: {per_experiment:.3f} s each, wall time per "
          f"experiment including the training processes; the largest overhead of one experiment {max(overhead):.3f} s "
          "(target: 2 s)")
