"""The command proposer: an external coding agent (e.g. `claude -p`, `codex exec`) edits the canvas itself.

The command line is the user's, split with shlex and run without a shell; the prompt goes on stdin and into a
file named by $AUTORESEARCH_PROMPT_FILE (and by `{prompt_file}` in the command, if present). Afterwards every
change outside the canvas is undone: tracked files restored, new files removed, commits it made unwound.
"""

import os
import re
import shlex
import subprocess
import tempfile
import time

from agent.git import Git
from agent.proposers import prompt
from agent.proposers.base import NoProposal, Proposal
from agent.runner import kill_group

DESCRIPTION = re.compile(r"^\s*\**DESCRIPTION:?\**\s*(.+)$", re.IGNORECASE | re.MULTILINE)


class CommandProposer:
    name = "command"

    def __init__(self, command, timeout=1800, retries=1):
        self.argv = shlex.split(command)
        self.model = command
        self.timeout, self.retries = timeout, retries

    def propose(self, ctx):
        return self._run(ctx, prompt.command_prompt(ctx))

    def fix(self, ctx, proposal, feedback):
        text = prompt.command_prompt(ctx) + "\n\n" + prompt.fix_prompt(ctx, proposal.description, feedback)
        try:
            return self._run(ctx, text)
        except NoProposal:
            return None

    def _run(self, ctx, text):
        git = Git(ctx.root)
        started = time.monotonic()
        error = None
        for _ in range(1 + self.retries):
            again = text if error is None else text + f"\n\nYour last attempt failed: {error}"
            out, error = self._once(git, ctx, again)
            if error is None:
                m = DESCRIPTION.findall(out)
                description = m[-1].strip() if m else "edit by " + os.path.basename(self.argv[0])
                return Proposal(description[:200], None, meta={"command": self.model},
                                seconds=time.monotonic() - started)
        raise NoProposal(f"The command '{self.model}' made no usable change: {error}")

    def _once(self, git, ctx, text):
        """(stdout, None) when the canvas changed and nothing else did, else (stdout, error)."""
        head, untracked = git.head(), git.untracked()
        with tempfile.NamedTemporaryFile("w", suffix=".md", prefix="autoresearch-prompt-", delete=False) as f:
            f.write(text)
        argv = [a.replace("{prompt_file}", f.name) for a in self.argv]
        env = dict(os.environ, AUTORESEARCH_PROMPT_FILE=f.name)
        try:
            proc = subprocess.Popen(argv, cwd=ctx.root, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, start_new_session=True)
        except OSError as e:
            os.unlink(f.name)
            raise NoProposal(f"Cannot start '{self.model}': {e}") from None
        try:
            out, _ = proc.communicate(text, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            out = ""
        except BaseException:
            kill_group(proc)
            raise
        finally:
            os.unlink(f.name)
        error = None if proc.returncode == 0 else f"it exited with status {proc.returncode}"
        if git.head() != head:
            git.run("reset", "-q", "--soft", head)  # keep its edits, drop its commits
            git.run("reset", "-q")
        strays = [p for p in git.dirty_tracked() if p != ctx.canvas]
        if strays:
            git.run("checkout", "-q", head, "--", *strays)
            error = error or f"it changed {', '.join(strays)}; only {ctx.canvas} may change (restored)"
        for p in sorted(git.untracked() - untracked):
            os.unlink(os.path.join(ctx.root, p))
            error = error or f"it created {p}; only {ctx.canvas} may change (removed)"
        if error is None and ctx.canvas not in git.dirty_tracked():
            error = f"it did not change {ctx.canvas}"
        if error is not None:
            git.run("checkout", "-q", head, "--", ctx.canvas)
        return out or "", error
