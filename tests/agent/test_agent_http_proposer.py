"""The LLM proposers against a real HTTP server on 127.0.0.1 with scripted replies (fixture canvas)."""

from pathlib import Path

from agentkit import ScriptedLLM, agent_argv, check_consistent, edit, git

from agent.__main__ import main

CANVAS = "backends/fixture/train.py"
SUMMARY_CALL = "    print_summary(val_bpb=bpb"


def test_openai_compatible_scripted_replies(repo, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    replies = [
        # 1: a rate limit, then a good edit (kept)
        429,
        edit("raise LR 0.02 -> 0.04", "LR = 0.02", "LR = 0.04"),
        # 2: a malformed reply, then an edit outside the canvas, both sent back; then a good edit (kept)
        "I would raise the warmdown ratio, it should help.",
        edit("cheat", "import math", "import math  # changed", path="common/summary.py"),
        edit("raise WARMDOWN_RATIO 0.2 -> 0.4", "WARMDOWN_RATIO = 0.2", "WARMDOWN_RATIO = 0.4"),
        # 3: an edit that crashes training, and a fix that does not fix it (logged as a crash, reverted)
        edit("crash", SUMMARY_CALL, "    raise RuntimeError('boom')\n" + SUMMARY_CALL),
        edit("crash, fixed?", "    raise RuntimeError('boom')", "    raise RuntimeError('boom again')"),
        # 4: an edit that hangs past the timeout; its fix removes the hang (trained, no gain: discarded)
        edit("hang", SUMMARY_CALL, "    time.sleep(60)\n" + SUMMARY_CALL)
        + edit("", "LR = 0.04", "LR = 0.03").split("\n", 1)[1],
        edit("hang, fixed", "    time.sleep(60)\n", ""),
    ]
    with ScriptedLLM(replies) as llm:
        main(agent_argv(repo, "--proposer", "openai", "--base-url", llm.url + "/v1", "--model", "scripted",
                        "--max-experiments", "4", "--fix-attempts", "1", "--retries", "2", "--timeout", "3",
                        "--price", "1,10"))
    assert llm.replies == []
    rs = check_consistent(repo)
    assert [(r["status"], r["description"]) for r in rs] == [
        ("keep", "baseline"), ("keep", "raise LR 0.02 -> 0.04"), ("keep", "raise WARMDOWN_RATIO 0.2 -> 0.4"),
        ("crash", "crash"), ("discard", "hang")]
    assert rs[2]["val_bpb"] < rs[1]["val_bpb"] < rs[0]["val_bpb"] and rs[4]["val_bpb"] > rs[2]["val_bpb"]

    bodies = [r["body"]["messages"] for r in llm.requests]
    # the model reads program.md, the canvas and the history
    assert "Research program" in bodies[0][0]["content"] and "LR = 0.02" in bodies[0][1]["content"]
    assert "raise LR 0.02 -> 0.04" in bodies[2][1]["content"]
    # the malformed reply and the edit outside the canvas went back with the error
    assert "no edit blocks" in bodies[3][-1]["content"]
    assert "Only backends/fixture/train.py may be changed" in bodies[4][-1]["content"]
    # the crash's traceback and the timeout reached the proposer
    assert "RuntimeError: boom" in bodies[6][-1]["content"]
    assert "hard timeout" in bodies[8][-1]["content"]
    assert rs[3]["fix_attempts"] == 1 and "boom again" in rs[3]["error"]
    assert rs[4]["fix_attempts"] == 1 and "time.sleep" not in rs[4]["diff"] and "+LR = 0.03" in rs[4]["diff"]

    # nothing outside the canvas changed; the reverted canvas has neither the crash nor the hang
    assert (repo / "common/summary.py").read_text() == (Path(__file__).parents[2] / "common/summary.py").read_text()
    canvas = (repo / CANVAS).read_text()
    assert "WARMDOWN_RATIO = 0.4" in canvas and "boom" not in canvas and "sleep(60)" not in canvas
    # every diff kept, with the fix attempts; tokens and cost counted
    diffs = sorted(p.name for p in (repo / "runs/t1/diffs").iterdir())
    assert diffs == ["001.diff", "002.diff", "003-fix1.diff", "003.diff", "004-fix1.diff", "004.diff"]
    assert rs[2]["tokens_in"] == 3000 and rs[2]["tokens_out"] == 150
    assert abs(rs[2]["cost_usd"] - (3000 * 1 + 150 * 10) / 1e6) < 1e-12
    assert "llm" in {p.name for p in (repo / "runs/t1").iterdir()}
    # no key was sent but the placeholder, and none is in the logs
    assert all(r["headers"].get("authorization") == "Bearer not-needed" for r in llm.requests)


def test_anthropic_sdk_against_local_server(repo, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test-secret-key")
    with ScriptedLLM([edit("raise LR", "LR = 0.02", "LR = 0.03")]) as llm:
        main(agent_argv(repo, "--proposer", "anthropic", "--base-url", llm.url, "--model", "claude-sonnet-4-6",
                        "--max-experiments", "1"))
    rs = check_consistent(repo)
    assert [r["status"] for r in rs] == ["keep", "keep"]
    assert llm.requests[0]["path"] == "/v1/messages"
    assert "sk-test-secret-key" in " ".join(llm.requests[0]["headers"].values())
    assert rs[1]["cost_usd"] == (1000 * 3 + 50 * 15) / 1e6
    for path in (repo / "runs").rglob("*"):
        if path.is_file():
            assert "sk-test-secret-key" not in path.read_text(errors="replace")


def test_api_outage_backs_off_and_recovers(repo, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    # five server errors: more than the SDK's own 3 retries, so the agent's backoff takes over
    with ScriptedLLM([500] * 5 + [edit("raise LR", "LR = 0.02", "LR = 0.03")]) as llm:
        main(agent_argv(repo, "--proposer", "openai", "--base-url", llm.url + "/v1", "--model", "m",
                        "--max-experiments", "1", "--api-backoff", "0.01"))
    assert llm.replies == [] and len(llm.requests) == 6
    assert [r["status"] for r in check_consistent(repo)] == ["keep", "keep"]


def test_replies_that_never_apply_are_bounded(repo, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with ScriptedLLM(["no blocks here"] * 9) as llm:
        out = _run_cli(main, agent_argv(repo, "--proposer", "openai", "--base-url", llm.url + "/v1",
                                         "--model", "m", "--retries", "2", "--max-experiments", "5"))
    assert out == 2 and llm.replies == []
    rs = check_consistent(repo)
    assert [r["status"] for r in rs] == ["keep", "invalid", "invalid", "invalid"]
    assert git(repo, "rev-parse", "HEAD") == rs[0]["commit"]


def _run_cli(fn, argv):
    from common.errors import run_cli
    try:
        run_cli(fn, argv)
    except SystemExit as e:
        return e.code
    return 0


def test_prompt_holds_program_canvas_history_and_noise():
    from agent.proposers import prompt
    from agent.proposers.base import Context
    from common.platform import get_profile
    history = [{"n": 0, "status": "keep", "val_bpb": 1.5, "description": "baseline"},
               {"n": 1, "status": "discard", "val_bpb": 1.6, "description": "LR up", "diff": "-LR = 1\n+LR = 2\n"},
               {"n": 2, "status": "invalid", "val_bpb": None, "description": "no blocks"}]
    ctx = Context("/", "backends/x/train.py", "LR = 1\n", history, "# Research program\n", "x", get_profile("smoke"),
                  1.5, noise=0.0123)
    user, system = prompt.user_prompt(ctx), prompt.system_prompt(ctx)
    assert system.startswith("# Research program") and "Only backends/x/train.py may be edited" in system
    assert "1 | discard | 1.600000 | LR up" in user and "no blocks" not in user and "+LR = 2" in user
    assert "noise of an unchanged canvas: 0.012300" in user and user.count("LR = 1") == 2
