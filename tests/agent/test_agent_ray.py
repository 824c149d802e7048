"""--cluster ray against a real local Ray cluster: a head and a second node (their own raylets and worker
processes), each declaring one GPU that is not there, so each experiment is a task with num_gpus=1."""

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
from agentkit import agent_argv, check_consistent, make_repo, overlapping, reapply_scenario

from agent.__main__ import main
from common.errors import ContractError

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(monkeypatch):
    from ray.cluster_utils import Cluster
    monkeypatch.setenv("FIXTURE_SECONDS", "1.0")
    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 1})
    yield nodes
    ray.shutdown()
    nodes.shutdown()


def local_data(tmp_path, name, text):
    """A small local dataset: parquet shards, the last one validation."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "common"))
    from commonkit import write_shards
    folder = tmp_path / name
    write_shards(folder, [[f"{text} document {i} " + "word " * (i % 50) for i in range(200)]] * 2
                 + [["the validation document"]])
    return folder


def test_two_nodes_one_gpu_each(cluster, tmp_path):
    cluster.add_node(num_cpus=2, num_gpus=1)
    repo = make_repo(tmp_path / "repo")
    main(agent_argv(repo, "--proposer", "offline", "--cluster", "ray", "--ray-address", cluster.address,
                    "--max-experiments", "6"))
    rs = check_consistent(repo)
    experiments = [r for r in rs if r["kind"] == "experiment" and r["status"] != "rebase"]
    assert len(experiments) == 6 and {r["slot"] for r in rs} == {"ray0", "ray1"}
    assert len({r["node"] for r in rs}) == 2, "both nodes ran experiments"
    assert all(r["gpu"] == "0" for r in rs)  # Ray gave each task its node's one GPU
    assert all((repo / "runs/t1" / r["log"]).read_text().count("val_bpb") >= 1 for r in rs)
    pairs = [(a, b) for a in experiments for b in experiments if a["n"] < b["n"] and overlapping(a, b)]
    assert pairs and all(a["description"] != b["description"] for a, b in pairs)  # in flight together: different


def test_a_gain_whose_parent_was_overtaken_is_reapplied_and_rerun_on_the_cluster(cluster, tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    cluster.add_node(num_cpus=2, num_gpus=1)
    repo = make_repo(tmp_path / "repo")
    reapply_scenario(repo, "--cluster", "ray", "--ray-address", cluster.address)


def test_a_worker_killed_mid_experiment_is_queued_again_and_nothing_is_lost(cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("FIXTURE_SECONDS", "3.0")
    cluster.add_node(num_cpus=2, num_gpus=1)
    repo = make_repo(tmp_path / "repo")
    killed = []

    def kill_one_worker():
        """Once experiments run (after the baseline), SIGKILL one Ray worker process running one."""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            jsonl = repo / "runs/t1/results.jsonl"
            if jsonl.exists() and jsonl.read_text().count("\n") >= 1:
                for pid in os.listdir("/proc"):
                    try:
                        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
                    except OSError:
                        continue
                    if cmd.startswith("ray::run_on_node"):
                        time.sleep(1.0)
                        os.kill(int(pid), signal.SIGKILL)
                        killed.append(pid)
                        return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_one_worker, daemon=True)
    killer.start()
    main(agent_argv(repo, "--proposer", "offline", "--cluster", "ray", "--ray-address", cluster.address,
                    "--max-experiments", "4"))
    killer.join(timeout=5)
    assert killed, "no Ray worker was found running an experiment"
    rs = check_consistent(repo)
    experiments = [r for r in rs if r["kind"] == "experiment" and r["status"] != "rebase"]
    assert len(experiments) == 4 and all(r["status"] in ("keep", "discard") for r in experiments)
    assert len({r["description"] for r in experiments}) == 4  # the lost one ran again, once


def test_a_node_with_other_data_is_refused(tmp_path, monkeypatch):
    ours = local_data(tmp_path, "ours", "our")
    theirs = local_data(tmp_path, "theirs", "their")
    cache = tmp_path / "cache"
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(cache))
    from common.data import get_source
    for folder in (ours, theirs):
        get_source(str(folder)).verify()  # records the files' hashes: the data's identity
    from ray.cluster_utils import Cluster
    # the only node with a GPU keeps other shards at the same path's place
    bad = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "num_gpus": 1, "env_vars": {"NODE_AUTORESEARCH_DATA": str(theirs)}})
    try:
        repo = make_repo(tmp_path / "repo")
        with pytest.raises(ContractError, match="refused: its data"):
            main(agent_argv(repo, "--proposer", "offline", "--cluster", "ray", "--ray-address", bad.address,
                            "--data", str(ours), "--max-experiments", "2"))
    finally:
        ray.shutdown()
        bad.shutdown()
