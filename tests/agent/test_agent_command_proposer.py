"""The command proposer runs a real external program that edits the working tree itself."""

import sys
from pathlib import Path

from agentkit import ROOT, agent_argv, check_consistent, git

from agent.__main__ import main

AGENT_SCRIPT = '''
import os, subprocess, sys
from pathlib import Path
prompt = sys.stdin.read()
assert "Research program" in prompt and "LR = 0.02" in prompt and os.path.exists(os.environ["AUTORESEARCH_PROMPT_FILE"])
count = Path(sys.argv[1])
calls = int(count.read_text()) + 1 if count.exists() else 1
count.write_text(str(calls))
canvas = Path("backends/fixture/train.py")
canvas.write_text(canvas.read_text().replace("LR = 0.02", "LR = 0.04"))
if calls == 1:  # misbehave: touch a fixed file, leave a stray file, commit
    Path("common/summary.py").write_text("# gone\\n")
    Path("notes.txt").write_text("scratch")
    subprocess.run(["git", "commit", "-qam", "sneaky"], check=True)
print("thinking...")
print("DESCRIPTION: raise LR 0.02 -> 0.04")
'''


def test_command_edits_only_the_canvas(repo, tmp_path):
    script = tmp_path / "fake_agent.py"
    script.write_text(AGENT_SCRIPT)
    counter = tmp_path / "calls"
    main(agent_argv(repo, "--proposer", "command", "--command", f"{sys.executable} {script} {counter}",
                    "--max-experiments", "1"))
    assert counter.read_text() == "2"  # the first attempt was refused and retried
    rs = check_consistent(repo)
    assert [(r["status"], r["description"]) for r in rs] == [("keep", "baseline"), ("keep", "raise LR 0.02 -> 0.04")]
    assert (repo / "common/summary.py").read_text() == (ROOT / "common/summary.py").read_text()
    assert not (repo / "notes.txt").exists()
    assert "sneaky" not in git(repo, "log", "--format=%s", "autoresearch/t1")
    assert "+LR = 0.04" in rs[1]["diff"] and "summary.py" not in rs[1]["diff"]


def test_command_that_changes_nothing(repo, tmp_path):
    script = tmp_path / "lazy.py"
    script.write_text("import sys; sys.stdin.read(); print('DESCRIPTION: nothing')\n")
    from common.errors import run_cli
    try:
        run_cli(main, agent_argv(repo, "--proposer", "command", "--command", f"{sys.executable} {script}",
                                 "--max-experiments", "2"))
        code = 0
    except SystemExit as e:
        code = e.code
    assert code == 2
    rs = check_consistent(repo)
    assert [r["status"] for r in rs] == ["keep", "invalid", "invalid", "invalid"]
    assert "did not change" in rs[1]["description"]
    assert (repo / "backends/fixture/train.py").read_text() == Path(__file__).with_name("fixture_train.py").read_text()
