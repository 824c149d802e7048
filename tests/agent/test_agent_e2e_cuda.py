"""End to end on the real reference trainer: baseline + 3 offline experiments under PROFILE=smoke on the CPU.

The project is copied into a temporary git repo, so the agent's branch never touches the working clone.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from agentkit import ROOT, check_consistent, make_repo, run_agent

CORPUS = ROOT.parent / "shared" / "corpus"


@pytest.mark.slow
def test_offline_agent_on_the_cuda_trainer(tmp_path):
    if not CORPUS.is_dir():
        pytest.skip(f"no local corpus at {CORPUS}")
    repo = make_repo(tmp_path / "repo", backends=("cuda",))
    env = {"AUTORESEARCH_CACHE": str(tmp_path / "cache"), "AUTORESEARCH_DATA": str(CORPUS)}
    subprocess.run([sys.executable, "-m", "common.prepare"], cwd=repo, env=dict(os.environ, **env), check=True,
                   capture_output=True, timeout=600)

    run_agent(repo, "--repo", str(repo), "--backend", "cuda", "--profile", "smoke", "--tag", "t1",
              "--proposer", "offline", "--max-experiments", "3", env=env, timeout=900)
    rs = check_consistent(repo)
    assert len(rs) == 4 and rs[0]["status"] == "keep" and rs[0]["val_bpb"] > 0
    for r in rs:
        if r["status"] != "crash":
            assert r["summary"]["backend"] == "cuda" and r["summary"]["profile"] == "smoke"
            assert r["summary"]["num_steps"] > 0 and r["memory_gb"] > 0
        assert r["data"]["source"] == f"local:{CORPUS.resolve()}" and all(r["data"]["sha256"].values())
    assert all(r["meta"]["name"] for r in rs[1:])

    out = run_agent(repo, "report", "--repo", str(repo), "--tag", "t1")
    assert "progress.png" in out.stdout
    assert Path(repo / "runs/t1/progress.png").stat().st_size > 10_000
    assert "best val_bpb" in Path(repo / "runs/t1/report.md").read_text()
