"""The few git operations the loop needs, through the git CLI. Only the canvas is ever committed."""

import difflib
import hashlib
import os
import subprocess
import tempfile

from common.errors import ContractError


class Git:
    def __init__(self, root):
        self.root = str(root)
        self.env = dict(os.environ)
        # Commits are bookkeeping: never block on a missing identity or a user's hooks.
        if not self.run("config", "user.email", check=False):
            self.env.update(GIT_AUTHOR_NAME="autoresearch", GIT_AUTHOR_EMAIL="autoresearch@localhost",
                            GIT_COMMITTER_NAME="autoresearch", GIT_COMMITTER_EMAIL="autoresearch@localhost")

    def run(self, *args, check=True):
        out = subprocess.run(["git", *args], cwd=self.root, capture_output=True, text=True,
                             env=getattr(self, "env", None))
        if check and out.returncode != 0:
            why = out.stderr.strip() or out.stdout.strip()
            raise ContractError(f"git {' '.join(args)} failed in {self.root}: {why}")
        return out.stdout.strip()

    @staticmethod
    def toplevel(path):
        out = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=path, capture_output=True, text=True)
        if out.returncode != 0:
            raise ContractError(f"{path} is not inside a git repository. The agent keeps its experiments on a git "
                                "branch: run it from a clone of the project (git init; git add -A; git commit).")
        return out.stdout.strip()

    def head(self):
        return self.run("rev-parse", "HEAD")

    def has_commits(self):
        return bool(self.run("rev-parse", "--verify", "-q", "HEAD", check=False))

    def current_branch(self):
        return self.run("rev-parse", "--abbrev-ref", "HEAD")

    def branch_exists(self, branch):
        return bool(self.run("rev-parse", "--verify", "-q", f"refs/heads/{branch}", check=False))

    def dirty_tracked(self):
        """Tracked files with uncommitted changes."""
        return [p for p in self.run("diff", "--name-only", "HEAD").splitlines() if p]

    def untracked(self):
        out = self.run("ls-files", "--others", "--exclude-standard")
        return set(out.splitlines())

    def tracked(self):
        return self.run("ls-files").splitlines()

    def commit_file(self, path, message):
        self.run("add", "--", path)
        self.run("commit", "--no-verify", "-q", "-m", message, "--", path)
        return self.head()

    def amend_file(self, path, message):
        self.run("add", "--", path)
        self.run("commit", "--no-verify", "-q", "--amend", "-m", message, "--", path)
        return self.head()

    def reset_hard(self, rev):
        self.run("reset", "-q", "--hard", rev)

    def diff(self, old, new, path):
        return self.run("diff", old, new, "--", path) + "\n"

    def show(self, rev, path):
        return subprocess.run(["git", "show", f"{rev}:{path}"], cwd=self.root, capture_output=True,
                              text=True, check=True).stdout

    def is_ancestor(self, a, b):
        return subprocess.run(["git", "merge-base", "--is-ancestor", a, b], cwd=self.root).returncode == 0

    def exclude(self, pattern):
        """Ignore a path in this clone only (.git/info/exclude), so run folders never show up as changes."""
        path = self.run("rev-parse", "--git-path", "info/exclude")
        path = os.path.join(self.root, path) if not os.path.isabs(path) else path
        os.makedirs(os.path.dirname(path), exist_ok=True)
        existing = open(path).read().split("\n") if os.path.exists(path) else []
        if pattern not in existing:
            with open(path, "a") as f:
                f.write(("" if not existing or existing[-1] == "" else "\n") + pattern + "\n")

    def checksums(self, skip):
        """sha256 of every tracked file except `skip`: the fixed files that no experiment may change."""
        sums = {}
        for rel in self.tracked():
            if rel == skip:
                continue
            full = os.path.join(self.root, rel)
            try:
                with open(full, "rb") as f:
                    sums[rel] = hashlib.sha256(f.read()).hexdigest()
            except (FileNotFoundError, IsADirectoryError):
                sums[rel] = None
        return sums


def apply_change(git, parent, text, base, path):
    """The text of `path` at commit `base` with the change from its text at `parent` to `text` applied, or None
    when it does not apply: first as a patch with context (found even where lines moved), then without
    context for changes next to lines the new best changed too (one constant edit beside another)."""
    old, new = git.show(parent, path).splitlines(keepends=True), text.splitlines(keepends=True)
    for context in (3, 0):
        diff = "".join(difflib.unified_diff(old, new, f"a/{path}", f"b/{path}", n=context))
        with tempfile.TemporaryDirectory() as tmp:
            target = os.path.join(tmp, path)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "w") as f:
                f.write(git.show(base, path))
            out = subprocess.run(["git", "apply", "--whitespace=nowarn", *(["--unidiff-zero"] if context == 0 else []),
                                  "-"], cwd=tmp, input=diff, text=True, capture_output=True)
            if out.returncode == 0:
                with open(target) as f:
                    return f.read()
    return None
