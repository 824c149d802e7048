"""--strategy tree: experiments start from a frontier of good canvases, the parent picked by the UCB rule in
agent/strategy.py, while the branch keeps only the line of best canvases (fixture canvas, real processes).

The fixture's val_bpb is a known formula, so the rule's picks can be worked out by hand (no noise measured:
the scale is the frontier's spread):
  0 baseline 1.28325;  1 LR 0.02 -> 0.04: 1.13325, kept;  2 (from 1) DEPTH 3 -> 2: 1.18325, discarded;
  3: the rule picks 2 (1.18325 - 0.3 sqrt(ln 3) = 0.869 beats 1's 1.13325 - 0.3 sqrt(ln 3 / 2) = 0.911);
     BETA2 0.9 -> 0.95 there: 1.18300, discarded;
  4: the rule picks 3 (0.830 against 1's 0.884); DEPTH 2 -> 5 there: 1.09300, the new best, kept.
"""

from agentkit import ScriptedLLM, agent_argv, check_consistent, edit, git

from agent.__main__ import main

CANVAS = "backends/fixture/train.py"


def test_tree_explores_a_canvas_other_than_the_best_and_keeps_what_it_finds_there(repo, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    replies = [edit("LR 0.02 -> 0.04", "LR = 0.02", "LR = 0.04"),
               edit("DEPTH 3 -> 2", "DEPTH = 3", "DEPTH = 2"),
               edit("BETA2 0.9 -> 0.95", "BETA2 = 0.9", "BETA2 = 0.95"),
               edit("DEPTH 2 -> 5", "DEPTH = 2", "DEPTH = 5")]
    with ScriptedLLM(replies) as llm:
        main(agent_argv(repo, "--proposer", "openai", "--base-url", llm.url + "/v1", "--model", "scripted",
                        "--strategy", "tree", "--max-experiments", "4"))
    assert llm.replies == []
    rs = check_consistent(repo)  # the branch holds exactly the kept experiments, in order
    assert [r["status"] for r in rs] == ["keep", "keep", "discard", "discard", "keep"]
    assert [round(r["val_bpb"], 5) for r in rs] == [1.28325, 1.13325, 1.18325, 1.183, 1.093]
    commit = [r["commit"] for r in rs]
    assert [r["parent"] for r in rs[1:]] == [commit[0], commit[1], commit[2], commit[3]]
    # each diff is the one change against the canvas it was made on, not against the best
    changed = [[line for line in r["diff"].splitlines() if line[:1] in "+-" and line[:3] not in ("+++", "---")]
               for r in rs[3:]]
    assert changed == [["-BETA2 = 0.9", "+BETA2 = 0.95"], ["-DEPTH = 2", "+DEPTH = 5"]]
    # the prompt said which canvas was edited, and what had been tried from it
    third, fourth = (llm.requests[i]["body"]["messages"][1]["content"] for i in (2, 3))
    assert "you edit: experiment 2's (val_bpb 1.183250), not the best" in third
    assert "you edit: experiment 3's (val_bpb 1.183000), not the best" in fourth
    assert "the best version so far" in llm.requests[1]["body"]["messages"][1]["content"]
    # the branch ends at the new best, the canvas found on the explored line
    final = git(repo, "show", f"autoresearch/t1:{CANVAS}")
    assert "DEPTH = 5" in final and "BETA2 = 0.95" in final and "LR = 0.04" in final
    assert git(repo, "rev-parse", "autoresearch/t1") == commit[4]
    # the report says which canvas each experiment edited
    main(["report", "--repo", str(repo), "--tag", "t1"])
    table = (repo / "runs/t1/report.md").read_text().split("## Every experiment")[1]
    assert [line.split("|")[2].strip() for line in table.splitlines() if line.startswith("| ")][1:] == \
        ["-", "0", "1", "2", "3"]


def test_tree_with_two_workers_keeps_the_branch_and_the_logs_consistent(repo, monkeypatch):
    monkeypatch.setenv("FIXTURE_SECONDS", "0.3")
    main(agent_argv(repo, "--proposer", "offline", "--strategy", "tree", "--workers", "2", "--max-experiments", "8"))
    rs = check_consistent(repo)
    best = min((r for r in rs if r["status"] == "keep"), key=lambda r: r["val_bpb"])
    assert git(repo, "rev-parse", "autoresearch/t1") == best["commit"]
    assert len({r["parent"] for r in rs[1:]}) > 1  # experiments started from more than one canvas
