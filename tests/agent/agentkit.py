"""Helpers for the agent tests: a throwaway git repo holding the project's common/, agent/ and program.md
plus a canvas, and helpers to run the agent in-process or as a real process."""

import json
import os
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = Path(__file__).with_name("fixture_train.py")


def git(repo, *args):
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def make_repo(path, backends=("fixture",), full=False):
    """A git repo at `path` that is a copy of the project: common/, agent/, program.md and backends/<name>/."""
    path.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("common", "agent"):
        shutil.copytree(ROOT / name, path / name, ignore=ignore)
    shutil.copy(ROOT / "program.md", path / "program.md")
    for backend in backends:
        (path / "backends" / backend).mkdir(parents=True)
        if backend == "fixture":
            shutil.copy(FIXTURE, path / "backends" / backend / "train.py")
        else:
            shutil.copytree(ROOT / "backends" / backend, path / "backends" / backend, dirs_exist_ok=True, ignore=ignore)
    (path / ".gitignore").write_text("__pycache__/\n")
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.email", "test@example.com")
    git(path, "config", "user.name", "test")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "start")
    return path


@pytest.fixture
def repo(tmp_path):
    return make_repo(tmp_path / "repo")


def agent_argv(repo, *extra, backend="fixture", tag="t1"):
    return ["--repo", str(repo), "--backend", backend, "--profile", "smoke", "--tag", tag, *extra]


def run_agent(repo, *args, env=None, timeout=300, check=True):
    """python -m agent ... as a real process, from the repo's own copy of the package."""
    full_env = dict(os.environ, **(env or {}))
    full_env.pop("ANTHROPIC_API_KEY", None)
    full_env.pop("OPENAI_API_KEY", None)
    out = subprocess.run([sys.executable, "-m", "agent", *args], cwd=repo, env=full_env, capture_output=True,
                         text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"agent exited {out.returncode}\nstdout:\n{out.stdout}\nstderr:\n{out.stderr}")
    return out


def rows(repo, tag="t1"):
    path = Path(repo) / "runs" / tag / "results.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def tsv(repo, tag="t1"):
    lines = (Path(repo) / "runs" / tag / "results.tsv").read_text().splitlines()
    return [line.split("\t") for line in lines[1:]]


def branch_commits(repo, tag="t1"):
    """Commits on autoresearch/<tag> since main, oldest first."""
    out = git(repo, "rev-list", "--reverse", f"main..autoresearch/{tag}")
    return out.split() if out else []


def check_consistent(repo, tag="t1"):
    """The logs and the branch agree: every kept experiment is on the branch, nothing else is, and the
    tsv is the jsonl's keep/discard/crash rows. Returns the jsonl rows."""
    rs = rows(repo, tag)
    assert [r["n"] for r in rs] == list(range(len(rs))), "rows lost or duplicated"
    done = [r for r in rs if r["status"] in ("keep", "discard", "crash", "rejected")]
    assert [(t[0], t[3]) for t in tsv(repo, tag)] == [(r["commit"][:7], r["status"]) for r in done]
    kept = [r["commit"] for r in rs if r["status"] == "keep" and r["kind"] == "experiment"]
    assert branch_commits(repo, tag) == kept
    assert rs[0]["kind"] == "baseline" and rs[0]["commit"] == git(repo, "rev-parse", "main")
    for r in rs:
        if r["kind"] == "experiment" and r["status"] != "invalid":
            assert (Path(repo) / "runs" / tag / r["diff_files"][-1]).read_text() == r["diff"]
    assert git(repo, "status", "--porcelain", "--untracked-files=no") == ""
    return rs


class ScriptedLLM:
    """A real HTTP server on 127.0.0.1 speaking the OpenAI chat-completions and Anthropic messages APIs,
    answering each request with the next scripted reply. A reply is the text, or an int HTTP status."""

    def __init__(self, replies):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        self.replies, self.requests = list(replies), []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                headers = {k.lower(): v for k, v in self.headers.items()}
                outer.requests.append({"path": self.path, "body": body, "headers": headers})
                reply = outer.replies.pop(0) if outer.replies else 500
                if isinstance(reply, int):
                    data = json.dumps({"error": {"message": "scripted failure", "type": "rate_limit_error"}}).encode()
                    self.send_response(reply)
                    self.send_header("retry-after-ms", "10")  # the SDKs' own retries wait 10 ms
                    self.send_header("retry-after", "0.01")
                else:
                    data = json.dumps(outer.anthropic(reply) if self.path.endswith("/messages")
                                      else outer.openai(reply)).encode()
                    self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    @staticmethod
    def openai(text):
        return {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "scripted",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1000, "completion_tokens": 50, "total_tokens": 1050}}

    @staticmethod
    def anthropic(text):
        return {"id": "msg_1", "type": "message", "role": "assistant", "model": "scripted",
                "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": None,
                "usage": {"input_tokens": 1000, "output_tokens": 50}}

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def edit(description, search, replace, path="backends/fixture/train.py"):
    """A well-formed reply in the agent's protocol."""
    return f"DESCRIPTION: {description}\n{path}\n<<<<<<< SEARCH\n{search}\n=======\n{replace}\n>>>>>>> REPLACE\n"


def check_kept_chain(repo, rs):
    """Each kept experiment starts from the one kept before it: the branch is a line of kept changes."""
    kept = [r for r in rs if r["status"] == "keep"]
    for before, after in zip(kept, kept[1:]):
        assert after["parent"] == before["commit"]
        assert git(repo, "rev-parse", f"{after['commit']}^") == before["commit"]


def reapply_scenario(repo, *where):
    """The first proposal (a large gain, but slow to train) starts beside a second (a small gain, fast). The
    second is kept first; the first then beats the new best from the old parent, so its change is applied
    on top of the new best and re-run there, and kept on that run's result. The proposer is told what runs.
    `where` says where the two run at once (--workers 2, or a Ray cluster); FIXTURE_SECONDS=1.
    The slow run must outlast both fast ones, start-up included: at 4 x the training time it did not once on a
    loaded CI machine (a Ray task's start-up is seconds), the third proposal ended after it and the re-run was
    overtaken again. So it trains 12 x as long."""
    from agent.__main__ import main
    slow_big = (edit("LR 0.02 -> 0.04 (slow)", "LR = 0.02", "LR = 0.04")
                + edit("", "        time.sleep(seconds / steps)", "        time.sleep(12 * seconds / steps)")
                .split("\n", 1)[1])
    replies = [slow_big,
               edit("WARMDOWN_RATIO 0.2 -> 0.6", "WARMDOWN_RATIO = 0.2", "WARMDOWN_RATIO = 0.6"),
               edit("BETA2 0.9 -> 0.95", "BETA2 = 0.9", "BETA2 = 0.95")]
    with ScriptedLLM(replies) as llm:
        main(agent_argv(repo, "--proposer", "openai", "--base-url", llm.url + "/v1", "--model", "scripted",
                        *where, "--max-experiments", "3"))
    assert llm.replies == []
    rs = check_consistent(repo)
    by = {r["description"]: r for r in rs}
    moved = by["LR 0.02 -> 0.04 (slow)"]
    rerun = [r for r in rs if r.get("rerun_of") == moved["n"]]
    assert moved["status"] == "rebase" and moved["parent"] == rs[0]["commit"]
    assert by["WARMDOWN_RATIO 0.2 -> 0.6"]["status"] == "keep"
    assert len(rerun) == 1 and rerun[0]["status"] == "keep" and rerun[0]["parent"] != moved["parent"]
    assert rerun[0]["val_bpb"] < moved["val_bpb"]  # the two gains, together
    check_kept_chain(repo, rs)
    canvas = (Path(repo) / "backends/fixture/train.py").read_text()
    assert "LR = 0.04" in canvas and "WARMDOWN_RATIO = 0.6" in canvas and "BETA2 = 0.95" in canvas
    # the third request was made while the slow change was still training, and says so
    third = llm.requests[2]["body"]["messages"][1]["content"]
    assert "Running now on other workers" in third and "LR 0.02 -> 0.04 (slow)" in third


def overlapping(a, b):
    start = lambda r: datetime.fromisoformat(r["started_at"])  # noqa: E731
    end = lambda r: datetime.fromisoformat(r["finished_at"])  # noqa: E731
    return start(a) < end(b) and start(b) < end(a)
