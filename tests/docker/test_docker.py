"""Containers with a real Docker engine: build the CPU image from a locally made base, train in it with no
network and read-only data, and reproduce a commit that the agent logged.

.ci/docker-engine starts a private engine (DOCKER_HOST=unix:///run/autoresearch-docker.sock) and imports the
base image autoresearch-base:bookworm made by debootstrap; .ci/run fills docker/wheelhouse. Without an engine
these tests skip with the reason.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from common.summary import parse_summary

ROOT = Path(__file__).resolve().parents[2]
BASE_IMAGE = os.environ.get("AUTORESEARCH_TEST_BASE_IMAGE", "autoresearch-base:bookworm")
PY = sys.executable


def docker_client():
    try:
        import docker
        client = docker.from_env()
        client.ping()
        return client
    except Exception as e:  # noqa: BLE001 - any failure means: no engine here
        pytest.skip(f"no Docker engine answers ({e}); .ci/docker-engine start makes one")


@pytest.fixture(scope="module")
def cpu_image():
    client = docker_client()
    try:
        client.images.get(BASE_IMAGE)
    except Exception:  # noqa: BLE001
        pytest.skip(f"no local base image {BASE_IMAGE}; .ci/docker-engine start makes it with debootstrap")
    if not any((ROOT / "docker" / "wheelhouse").glob("*.whl")):
        pytest.skip("docker/wheelhouse is empty; make docker-wheelhouse fills it (.ci/run does)")
    from agent.container import build
    return build("cpu", base_image=BASE_IMAGE, offline=True, log=lambda line: None)


@pytest.fixture(scope="module")
def prepared(corpus, tmp_path_factory):
    cache = tmp_path_factory.mktemp("docker-cache")
    env = dict(os.environ, AUTORESEARCH_CACHE=str(cache))
    subprocess.run([PY, "-m", "common.prepare", "--data", str(corpus)], cwd=ROOT, env=env, check=True,
                   capture_output=True, timeout=600)
    subprocess.run(["chmod", "-R", "a+rX", str(cache)], check=True)  # the image's user (uid 1000) reads it
    return cache


def run(args, cwd, env, timeout=900):
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_smoke_training_in_container_without_network(cpu_image, prepared, corpus, monkeypatch):
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(prepared))
    from agent.container import train_in_container
    lines = []
    code, output = train_in_container("cpu", "cuda", "smoke", corpus, log=lines.append)
    assert code == 0, output[-3000:]
    summary = parse_summary(output)
    assert summary["profile"] == "smoke" and summary["backend"] == "cuda"
    assert 0 < summary["val_bpb"] < 20


@pytest.fixture(scope="module")
def agent_repo(tmp_path_factory, prepared, corpus):
    """A copy of the project in which the agent ran a baseline and one experiment, then measured noise."""
    repo = tmp_path_factory.mktemp("agent-repo")
    for name in ("common", "agent", "backends"):
        shutil.copytree(ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("program.md", "Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, repo / name)
    (repo / ".gitignore").write_text("__pycache__/\n/runs/\n")
    for args in (["init", "-q", "-b", "main"], ["config", "user.email", "t@example.com"],
                 ["config", "user.name", "t"], ["add", "-A"], ["commit", "-q", "-m", "start"]):
        subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)
    env = dict(os.environ, AUTORESEARCH_CACHE=str(prepared), PYTHONPATH=str(repo))
    common = ["--backend", "cuda", "--profile", "smoke", "--data", str(corpus), "--tag", "dock"]
    out = run([PY, "-m", "agent", "run", *common, "--proposer", "offline", "--max-experiments", "1"], repo, env)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    out = run([PY, "-m", "agent", "noise", *common, "--runs", "2"], repo, env)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return repo, env


def results_digest(repo):
    return hashlib.sha256((repo / "runs" / "dock" / "results.jsonl").read_bytes()).hexdigest()


def test_make_reproduce_gives_a_verdict_on_an_agent_commit(cpu_image, agent_repo):
    repo, env = agent_repo
    rows = [json.loads(line) for line in (repo / "runs" / "dock" / "results.jsonl").read_text().splitlines()]
    baseline = next(r for r in rows if r["status"] == "keep")
    before = results_digest(repo)
    # -o: use this interpreter as it is; the copy's Makefile must not reinstall the project into it.
    out = run(["make", "-o", ".venv/.installed-dev", "reproduce", f"PY={PY}", f"COMMIT={baseline['commit'][:10]}"],
              repo, env)
    text = out.stdout + out.stderr
    assert "logged val_bpb" in text, text[-3000:]
    logged = float(text.split("logged val_bpb")[1].split()[0])
    reproduced = float(text.split("reproduced val_bpb")[1].split()[0])
    assert logged == pytest.approx(baseline["val_bpb"], abs=1e-6)
    assert 0 < reproduced < 20
    verdict = text.split("verdict")[-1].strip().split(":")[0]
    assert verdict in ("REPRODUCED", "NOT REPRODUCED")
    assert (out.returncode == 0) == (verdict == "REPRODUCED")
    assert results_digest(repo) == before


def bad(repo, env, *args):
    out = run([PY, "-m", "agent.container", *args], repo, env, timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    return out.stderr


def test_bad_input_is_explained_and_changes_no_results(cpu_image, agent_repo, tmp_path):
    repo, env = agent_repo
    before = results_digest(repo)
    assert "is not a commit" in bad(repo, env, "reproduce", "--commit", "0123456789abcdef")
    unlogged = subprocess.run(["git", "commit-tree", "HEAD^{tree}", "-m", "never trained"], cwd=repo,
                              capture_output=True, text=True, check=True).stdout.strip()
    assert "has no results record" in bad(repo, env, "reproduce", "--commit", unlogged)
    assert "does not exist" in bad(repo, env, "run", "--profile", "smoke", "--data", str(tmp_path / "nowhere"))
    no_engine = dict(env, DOCKER_HOST=f"unix://{tmp_path}/no.sock")
    assert "No Docker engine" in bad(repo, no_engine, "run", "--profile", "smoke")
    if shutil.which("nvidia-smi") is None:
        assert "needs an NVIDIA GPU" in bad(repo, env, "run", "--image", "cuda", "--profile", "smoke")
    assert results_digest(repo) == before
