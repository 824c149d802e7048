"""The experiment loop: baseline, then propose -> commit -> train -> keep or revert -> log, until told to stop.

Git state always follows the log: the branch tip is the last row with status 'keep'. After any interruption,
--resume resets the branch to that commit and carries on, so no row is lost or written twice. The experiments
that were training (runs/<tag>/inflight.json) are run again first, and any training a killed driver left
running is stopped.
"""

import json
import os
import statistics
import time
from datetime import datetime, timezone

from agent.git import Git, apply_change
from agent.integrity import rejection
from agent.proposers import make_proposer
from agent.proposers.base import Context, NoProposal, Proposal
from agent.results import RunFolder, noise_figure
from agent.runner import stop_leftovers, train
from agent.strategy import parent_summary, pick_parent
from agent.view import make_view
from common.errors import ContractError
from common.platform import get_profile

MAX_INVALID_IN_A_ROW = 3


def now_iso():
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Lab:
    """What the loop and the noise command share: the repo, the canvas, the profile, the run folder, training."""

    def __init__(self, args):
        self.args = args
        self.root = Git.toplevel(args.repo or os.getcwd())
        self.git = Git(self.root)
        if not self.git.has_commits():
            raise ContractError(f"The repository at {self.root} has no commits yet. Commit the project first "
                                "(git add -A && git commit -m start); the agent branches from the current commit.")
        self.canvas = f"backends/{args.backend}/train.py"
        if not os.path.exists(os.path.join(self.root, self.canvas)):
            have = sorted(d for d in os.listdir(os.path.join(self.root, "backends"))
                          if os.path.exists(os.path.join(self.root, "backends", d, "train.py"))) \
                if os.path.isdir(os.path.join(self.root, "backends")) else []
            raise ContractError(f"There is no canvas {self.canvas} in {self.root}. Pick a backend with --backend "
                                f"(found: {', '.join(have) or 'none'}).")
        if self.canvas not in self.git.tracked():
            raise ContractError(f"{self.canvas} is not committed in git. Commit it first: the agent keeps every "
                                "experiment as a commit on top of it.")
        self.profile = get_profile(args.profile, args.budget)
        self.timeout = args.timeout or 2 * self.profile.time_budget + args.startup_allowance
        self.folder = RunFolder(os.path.join(self.root, args.runs_dir, args.tag))
        # The canvas imports the experiment repo's own common/, whatever is installed.
        pythonpath = os.pathsep.join(p for p in (self.root, os.environ.get("PYTHONPATH")) if p)
        self.env = dict(os.environ, AUTORESEARCH_PROFILE=self.profile.name, PYTHONUNBUFFERED="1",
                        PYTHONPATH=pythonpath)
        if args.data:
            self.env["AUTORESEARCH_DATA"] = os.path.abspath(args.data)
        self.data = data_identity(self.env.get("AUTORESEARCH_DATA"))
        self.fingerprint = None  # the baseline's evaluation rows, which every later run must score

    def read_canvas(self):
        with open(os.path.join(self.root, self.canvas)) as f:
            return f.read()

    def write_canvas(self, text):
        with open(os.path.join(self.root, self.canvas), "w") as f:
            f.write(text)

    def train_once(self, name, view):
        return self.check_result(train(self.root, self.canvas, self.env, self.timeout, self.folder.log_path(name),
                                       on_progress=view.line))

    def check_result(self, result):
        """The run's result, with its summary dropped if agent.integrity rejects it (result.rejected names the
        trick) or if it reports another backend or profile (a crash)."""
        verdict = rejection(result.summary, result.record, result.nonce, self.profile, self.fingerprint)
        if verdict:
            result.rejected, reason = verdict
            result.summary, result.error = None, f"Rejected ({result.rejected}): {reason}"
            return result
        s = result.summary
        if s and (s["profile"] != self.profile.name or s["backend"] != self.args.backend):
            result.summary = None
            result.error = (f"The run reported backend '{s['backend']}' and profile '{s['profile']}', but the "
                            f"experiment is on backend '{self.args.backend}' under profile '{self.profile.name}'. "
                            "The profile is fixed; do not override it in the canvas.")
        return result


def data_identity(folder):
    """The dataset's source and shard hashes, recorded with every result (None when it is not prepared yet)."""
    from common.data import get_source
    try:
        return get_source(folder).identity()
    except (ContractError, OSError):
        return None


class Loop:
    """One run of the loop on the branch autoresearch/<tag>. The branch tip is always the last kept commit."""

    def __init__(self, args):
        self.args, self.lab = args, Lab(args)
        self.git, self.folder, self.canvas = self.lab.git, self.lab.folder, self.lab.canvas
        self.branch = f"autoresearch/{args.tag}"
        self.proposer = make_proposer(args.proposer, args)
        path = os.path.join(self.lab.root, "program.md")
        self.program = open(path).read() if os.path.exists(path) else ""
        if not self.program and getattr(self.proposer, "needs_program", True):
            raise ContractError(f"{path} is missing. The LLM proposers read the research direction from it; "
                                "restore it from git or write one.")
        self.info = {"proposer": self.proposer.name, "profile": self.lab.profile.name, "backend": args.backend,
                     "tag": args.tag, "data": self.lab.data}

    def setup(self):
        """Check out the branch (new, or resumed from the logs) and reset it to the last kept commit."""
        args, git, folder, branch = self.args, self.git, self.folder, self.branch
        dirty = git.dirty_tracked()
        if args.resume and dirty == [self.canvas]:
            dirty = []  # an interrupted experiment's edit: the reset to the last kept commit below drops it
        if dirty:
            raise ContractError(f"The working tree has uncommitted changes ({', '.join(dirty[:5])}). The agent resets "
                                "the canvas between experiments; commit or stash your changes first.")
        exists = git.branch_exists(branch)
        if exists and not args.resume:
            raise ContractError(f"The branch {branch} already exists. Continue that run with --resume, or start a new "
                                f"one with another --tag (e.g. --tag {args.tag}b).")
        if not exists and args.resume:
            raise ContractError(f"--resume: there is no branch {branch} to continue. Leave out --resume to start it.")
        if not exists and folder.exists():
            raise ContractError(f"{folder.path} already holds results but the branch {branch} is gone. Move that "
                                "folder away or pick another --tag.")
        git.run("checkout", "-q", *(() if exists else ("-b",)), branch)
        git.exclude(f"/{args.runs_dir.strip('/')}/")
        folder.create()
        self.rows = folder.rows()
        folder.write_tsv(self.rows)
        kept = [r for r in self.rows if r["status"] == "keep"]
        if kept:
            tip = kept[-1]["commit"]
            before = git.run("rev-parse", f"{tip}^", check=False)  # a kill between logging a keep and moving
            logged_not_moved = bool(before) and before in (git.head(), git.run("rev-parse", "HEAD^", check=False))
            if not logged_not_moved and (not git.is_ancestor(tip, "HEAD")
                                         or int(git.run("rev-list", "--count", f"{tip}..HEAD")) > 1):
                raise ContractError(f"{branch} does not end at the last kept commit {tip[:7]} of {folder.jsonl} (or "
                                    "one interrupted experiment after it): it was changed by hand. Restore it "
                                    "(git reset) or start a new --tag.")
            git.reset_hard(tip)  # drops an experiment that was interrupted before it was logged
        self.tip = git.head()
        self.best = kept[-1]["val_bpb"] if kept else None
        self.lab.fingerprint = baseline_fingerprint(self.rows)
        self.fixed = git.checksums(skip=self.canvas)
        self.noise = noise_figure(self.rows, folder.noise_rows())[0]
        self.leftovers = stop_leftovers(folder.logs, self.canvas) if args.resume else 0
        self.pending = []   # interrupted experiments to run again, as journal entries (see resume_interrupted)
        self.blobs = {}     # commit -> the canvas's blob id (canvas_id)

    def resume_interrupted(self):
        """The experiments a kill interrupted (in inflight.json, not logged), set up to run again from the current
        best, first of all; one whose change no longer applies there is logged as 'invalid' with that reason."""
        if self.leftovers:
            self.view.message(f"stopped {self.leftovers} training(s) that the killed driver had left running")
        logged = {r.get("job") for r in self.rows}
        for e in self.folder.inflight_jobs() if self.args.resume else []:
            if e["name"] in logged:
                continue
            text = e["text"] if e["parent"] == self.tip else \
                apply_change(self.git, e["parent"], e["text"], self.tip, self.canvas)
            if text is None:
                self.record_invalid(NoProposal(
                    f"{e['description']}: interrupted by a kill, and its change no longer applies to the current "
                    f"best ({self.tip[:7]})", e.get("tokens_in", 0), e.get("tokens_out", 0), e.get("cost_usd")))
                continue
            self.pending.append({**e, "text": text, "parent": self.tip})
            self.view.message(f"interrupted by the kill, run again: {e['description']}")
        self.save_journal()

    def save_journal(self, *current):
        """inflight.json: the experiment training now (if any) and the interrupted ones still to run."""
        self.folder.save_inflight([*current, *self.pending])

    def run(self):
        self.setup()
        args, p = self.args, self.lab.profile
        title = (f"autoresearch {self.branch} | backend {args.backend} | profile {p.name} ({p.time_budget:g} s) | "
                 f"proposer {self.proposer.name}" + (f" ({self.proposer.model})" if self.proposer.model else ""))
        with make_view(title, p.time_budget, args.max_experiments) as self.view:
            self.view.s.best = self.best
            for r in self.rows:
                if r["status"] in self.view.s.counts and r.get("kind") == "experiment":
                    self.view.s.counts[r["status"]] += 1
            if self.rows:
                self.view.message(f"resuming: {len(self.rows)} rows in {self.folder.jsonl}, best val_bpb {self.best}")
            try:
                if self.best is None:
                    self.baseline()
                self.resume_interrupted()
                invalid_in_a_row = 0
                while not self.should_stop():
                    outcome = self.experiment(len(self.rows))
                    if outcome == "exhausted":
                        break
                    invalid_in_a_row = invalid_in_a_row + 1 if outcome == "invalid" else 0
                    self.check_invalid_streak(invalid_in_a_row)
            except KeyboardInterrupt:
                self.git.reset_hard(self.tip)
                self.view.message(f"stopped. Nothing logged is lost; continue with: python -m agent --backend "
                                  f"{args.backend} --tag {args.tag} --resume")
                raise
            except BaseException:
                self.git.reset_hard(self.tip)  # whatever failed, leave the branch at the last kept commit
                raise
        return self.rows

    def stop_reason(self, pending=0):
        """Why no new experiment may start, or None: --max-experiments reached (counting `pending` ones started
        but not logged yet), or the next one would end past the deadline."""
        args = self.args
        done = pending + sum(1 for r in self.rows
                             if r.get("kind") == "experiment" and r["status"] not in ("invalid", "rebase"))
        if args.max_experiments is not None and done >= args.max_experiments:
            return f"{done} experiments (--max-experiments {args.max_experiments})"
        if args.deadline is not None and time.time() + typical_seconds(self.rows) > args.deadline:
            return "the next experiment would end past the deadline"
        return None

    def should_stop(self):
        reason = self.stop_reason()
        if reason:
            self.view.message(f"done: {reason}")
        return reason is not None

    def check_invalid_streak(self, count):
        if count >= MAX_INVALID_IN_A_ROW:
            raise ContractError(
                f"The {self.proposer.name} proposer failed {count} times in a row to give an applicable edit; the "
                f"last error: {self.rows[-1]['description']} Check the model and program.md, then resume with "
                "--resume.")

    def record_invalid(self, e):
        """Log a proposal that gave nothing applicable (NoProposal e) and put the canvas back."""
        n = len(self.rows)
        self.git.reset_hard(self.tip)
        self.record({"n": n, "kind": "experiment", "status": "invalid", "description": str(e)[:300],
                     "commit": None, "val_bpb": None, "proposer": self.proposer.name, "tokens_in": e.tokens_in,
                     "tokens_out": e.tokens_out, "cost_usd": e.cost_usd, "finished_at": now_iso()})
        self.view.message(f"[{n:03d}] no valid proposal: {e}")

    def record(self, row):
        self.rows.append(row)
        self.folder.append(row)

    def baseline(self):
        started = time.monotonic()
        self.view.start(0, "baseline")
        result, values = self.measure(0, baseline=True)
        if result.crashed:
            raise ContractError(f"The baseline run of {self.canvas} failed, so there is nothing to improve on. "
                                f"{result.error} The log is {self.folder.log_path('000')}; its end:\n"
                                + "\n".join(result.tail[-15:]))
        self.best = statistics.fmean(values)
        self.record_baseline(make_row(0, "baseline", "keep", "baseline", self.tip, None, result, values, None,
                                      started, 0.0, self.info))

    def record_baseline(self, row):
        """Log the baseline; its record fixes the evaluation rows, its runs the noise figure (without make noise)."""
        self.lab.fingerprint = baseline_fingerprint([row])
        self.noise = noise_figure([row], self.folder.noise_rows())[0]
        self.record(row)
        self.view.finish(row, self.best)

    def experiment(self, n):
        """Propose, commit, train (fixing crashes), keep or revert, log.
        Returns the status, or 'exhausted' / 'invalid' when there was nothing to train."""
        git, canvas, lab = self.git, self.canvas, self.lab
        started = time.monotonic()
        self.view.start(n, "(proposing)")
        parent = self.choose_parent(greedy=bool(self.pending))
        if parent["commit"] != self.tip:
            lab.write_canvas(git.show(parent["commit"], canvas))  # --strategy tree: edit another canvas
        ctx = self.context(parent=parent)
        resumed = self.pending[0]["name"] if self.pending else None
        try:
            proposal = entry_proposal(self.pending.pop(0)) if resumed else self.proposer.propose(ctx)
            if (proposal.text if proposal.text is not None else lab.read_canvas()) == ctx.text:
                raise NoProposal("The proposal leaves the canvas unchanged.")
        except NoProposal as e:
            if e.exhausted:
                self.view.message(f"done: {e}")
                return "exhausted"
            self.record_invalid(e)
            self.save_journal()
            return "invalid"
        propose_s = time.monotonic() - started
        self.save_transcript(f"{n:03d}", proposal)
        self.view.s.description = proposal.description
        if proposal.text is not None:
            lab.write_canvas(proposal.text)
        commit = git.commit_file(canvas, proposal.description)
        self.save_journal(journal_entry(f"{n:03d}", proposal, lab.read_canvas(), parent["commit"]))
        diff = git.diff(parent["commit"], commit, canvas)
        diff_files = [self.folder.save_diff(f"{n:03d}", diff)]
        result, values = self.measure(n)

        fixes = 0
        while result.crashed and not result.rejected and fixes < self.args.fix_attempts:
            self.view.phase(f"fixing {fixes + 1}/{self.args.fix_attempts}")
            t = time.monotonic()
            fix = self.proposer.fix(self.context(), proposal, result.feedback())
            propose_s += time.monotonic() - t
            if fix is None:
                break
            fixes += 1
            add_usage(proposal, fix)
            self.save_transcript(f"{n:03d}-fix{fixes}", fix)
            if fix.text is not None:
                lab.write_canvas(fix.text)
            if lab.read_canvas() == ctx.text:
                result.error += " The proposed fix undid the whole change, so the experiment ends here."
                break
            commit = git.amend_file(canvas, proposal.description)
            diff = git.diff(parent["commit"], commit, canvas)
            diff_files.append(self.folder.save_diff(f"{n:03d}-fix{fixes}", diff))
            result, values = self.measure(n)

        if result.crashed:
            status = "rejected" if result.rejected else "crash"
        else:
            status = "keep" if statistics.fmean(values) < self.best else "discard"
        row = make_row(n, "experiment", status, proposal.description, commit, parent["commit"], result, values, proposal,
                       started, propose_s, self.info, diff=diff, diff_files=diff_files, fixes=fixes)
        row.update(job=f"{n:03d}", resumed=resumed)
        self.record(row)  # the log first: a kill between the two steps is repaired by --resume
        self.save_journal()
        if status == "keep":
            self.tip, self.best = commit, row["val_bpb"]
        else:
            git.reset_hard(self.tip)
        self.view.finish(row, self.best)
        return status

    def context(self, parent=None):
        """What the proposer reads: the canvas as it is in the working tree, and under --strategy tree which
        parent that is."""
        summary = parent_summary(parent, self.rows, self.best) if parent and self.args.strategy == "tree" else None
        return Context(self.lab.root, self.canvas, self.lab.read_canvas(), self.rows, self.program,
                       self.args.backend, self.lab.profile, self.best, self.noise, parent=summary)

    def choose_parent(self, in_flight_parents=(), greedy=False):
        """The row whose canvas the next experiment edits: the best (the tip) under --strategy greedy (and for
        an interrupted experiment run again), the UCB rule's pick among the frontier under tree (strategy.py)."""
        if self.args.strategy == "tree" and not greedy:
            return pick_parent(self.rows, self.canvas_id, self.noise, in_flight_parents)
        return {"n": None, "commit": self.tip, "val_bpb": self.best}

    def canvas_id(self, commit):
        """The canvas's git blob at a commit: equal canvases, equal ids."""
        if commit not in self.blobs:
            self.blobs[commit] = self.git.run("rev-parse", f"{commit}:{self.canvas}", check=False) or commit
        return self.blobs[commit]

    def verify_fixed(self, git=None, rev=None):
        """Restore any fixed file that changed in a working tree (the repo's, else git's) from rev (the tip,
        else); return their names."""
        git, rev = git or self.git, rev or self.tip
        now = git.checksums(skip=self.canvas)
        changed = sorted(p for p in self.fixed if now.get(p) != self.fixed[p])
        if changed:
            git.run("checkout", "-q", rev, "--", *changed)
        return changed

    def measure(self, n, baseline=False):
        """Train once, plus reruns: for the baseline, up to --baseline-runs in all; for a candidate gain, see
        reruns(). Returns (result, [val_bpb, ...])."""
        bad = self.verify_fixed()
        if bad:
            self.view.message(f"restored fixed files before training: {', '.join(bad)}")
        self.view.phase("training")
        result = self.lab.train_once(f"{n:03d}", self.view)
        bad = self.verify_fixed()
        if bad and not result.crashed:
            result.summary, result.error = None, f"The run changed fixed files ({', '.join(bad)}); they were restored."
        if result.crashed:
            return result, []
        values = [result.summary["val_bpb"]]
        confirm = baseline_runs(self.args, self.lab.profile) - 1 if baseline else \
            reruns(values[0], self.best, self.args.confirm, self.noise)
        if confirm:
            for k in range(1, confirm + 1):
                self.view.phase(f"confirming {k}/{confirm}")
                again = self.lab.train_once(f"{n:03d}-confirm{k}", self.view)
                if again.crashed:
                    return again, []
                values.append(again.summary["val_bpb"])
                result.seconds += again.seconds
        return result, values

    def save_transcript(self, name, proposal):
        transcript = proposal.meta.pop("transcript", None)
        if transcript:
            path = os.path.join(self.folder.path, "llm")
            os.makedirs(path, exist_ok=True)
            with open(os.path.join(path, f"{name}.json"), "w") as f:
                json.dump(transcript, f, indent=1)


def run(args):
    if args.cluster == "ray":
        from agent.parallel import ParallelLoop
        return ParallelLoop(args).run()
    from agent.executor import parse_slots
    slots = parse_slots(args.gpus, args.workers)
    if len(slots) == 1:
        if not slots[0].startswith("cpu"):
            os.environ["CUDA_VISIBLE_DEVICES"] = slots[0]  # read by Lab into the runs' environment
        return Loop(args).run()
    from agent.parallel import ParallelLoop
    return ParallelLoop(args, slots).run()


def journal_entry(name, proposal, text, parent, **more):
    """What inflight.json keeps of a started (or queued) experiment, enough to run it again after a kill: its
    canvas text and the commit that text was made from."""
    return {"name": name, "description": proposal.description, "text": text, "parent": parent,
            "meta": proposal.meta, "tokens_in": proposal.tokens_in, "tokens_out": proposal.tokens_out,
            "cost_usd": proposal.cost_usd, **more}


def entry_proposal(entry):
    return Proposal(entry["description"], entry["text"], entry.get("meta") or {}, entry.get("tokens_in", 0),
                    entry.get("tokens_out", 0), entry.get("cost_usd"))


def baseline_runs(args, profile):
    """How many times the baseline trains: --baseline-runs K (default 2 on GPU profiles, where runs are long
    and the noise matters, 1 on the cpu and smoke ones), at least 1 + --confirm."""
    k = args.baseline_runs
    if k is None:
        k = 1 if profile.name.split("@")[0] in ("cpu", "smoke") else 2
    return max(k, 1 + args.confirm)


def reruns(value, best, confirm, noise):
    """The noise-aware keep: a result that beats the best is re-run before it is kept (and kept on the mean)
    --confirm K times, or, without --confirm, once when its gain is smaller than 2 sd of the noise."""
    if value >= best:
        return 0
    if confirm:
        return confirm
    return 1 if noise and best - value < 2 * noise else 0


def add_usage(proposal, fix):
    """Count a fix's tokens and cost into the proposal it fixes."""
    proposal.tokens_in += fix.tokens_in
    proposal.tokens_out += fix.tokens_out
    if fix.cost_usd is not None:
        proposal.cost_usd = (proposal.cost_usd or 0.0) + fix.cost_usd


def make_row(n, kind, status, description, commit, parent, result, values, proposal, started, propose_s, run_info,
             diff=None, diff_files=(), fixes=0):
    s = result.summary or {}
    train_s = result.seconds
    total_s = time.monotonic() - started
    return {
        "n": n, "kind": kind, "status": status, "description": description,
        "commit": commit, "parent": parent,
        "val_bpb": statistics.fmean(values) if values else None,
        "val_bpb_runs": values,
        "memory_gb": round(s["peak_vram_mb"] / 1024, 3) if s else None,
        "summary": s or None,
        "error": None if not result.crashed else result.feedback()[-4000:],
        "rejected": result.rejected,
        "score_record": result.record,
        "timed_out": result.timed_out,
        "fix_attempts": fixes,
        "proposer": run_info["proposer"] if proposal else None,
        "model": (proposal.meta.get("model") or proposal.meta.get("command")) if proposal else None,
        "meta": proposal.meta if proposal else None,
        "tokens_in": proposal.tokens_in if proposal else 0,
        "tokens_out": proposal.tokens_out if proposal else 0,
        "cost_usd": proposal.cost_usd if proposal else None,
        "diff": diff, "diff_files": list(diff_files),
        "propose_seconds": round(propose_s, 3), "train_seconds": round(train_s, 3),
        "overhead_seconds": round(max(total_s - propose_s - train_s, 0.0), 3),
        "total_seconds": round(total_s, 3),
        "profile": run_info["profile"], "backend": run_info["backend"], "tag": run_info["tag"],
        "data": run_info["data"], "finished_at": now_iso(),
    }


def baseline_fingerprint(rows):
    """The evaluation rows' fingerprint recorded by the baseline run, or None (no baseline yet, or an old log)."""
    for r in rows:
        if r.get("kind") == "baseline":
            return (r.get("score_record") or {}).get("eval_fingerprint")
    return None


def typical_seconds(rows):
    times = [r["total_seconds"] for r in rows if r.get("total_seconds")]
    return statistics.median(times[-10:]) if times else 0.0


def noise(args):
    """Train the current canvas K times, unchanged, and record the spread of val_bpb."""
    lab = Lab(args)
    lab.folder.create()
    head = lab.git.head()
    title = f"noise: {args.runs} runs of {lab.canvas} at {head[:7]} | profile {lab.profile.name}"
    values = []
    with make_view(title, lab.profile.time_budget, args.runs) as view:
        for i in range(args.runs):
            view.start(i + 1, "baseline, unchanged")
            view.phase("training")
            result = lab.train_once(f"noise-{i + 1:03d}", view)
            row = {"run": i + 1, "commit": head, "val_bpb": None if result.crashed else result.summary["val_bpb"],
                   "seconds": round(result.seconds, 3), "profile": lab.profile.name, "backend": args.backend,
                   "data": lab.data,
                   "error": result.error, "finished_at": now_iso()}
            lab.folder.append_noise(row)
            if result.crashed:
                log = lab.folder.log_path(f"noise-{i + 1:03d}")
                raise ContractError(f"Noise run {i + 1} failed: {result.error} See {log}.")
            values.append(row["val_bpb"])
            view.message(f"run {i + 1}: val_bpb {row['val_bpb']:.6f}")
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    print(f"val_bpb over {len(values)} runs: mean {statistics.fmean(values):.6f}, std {spread:.6f}, "
          f"range {max(values) - min(values):.6f}. Written to {lab.folder.noise}.")
    return values
