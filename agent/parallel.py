"""The loop with several experiments at once: --gpus 0,1 (or all) puts one run on each GPU, --workers N runs N on
a CPU. One branch of kept changes and one results table, as with one worker.

The rule (also in the README):
- every proposal starts from the current best, the branch tip, and the proposer is told what is running now;
- a result is a candidate when it beats both the value of the commit it started from and the current best;
- a candidate whose parent is still the best is kept: the branch moves to it;
- a candidate whose parent was overtaken while it trained has its change applied on top of the current best
  and re-run there before anything is kept, since two gains need not add up. Its own row has the status
  'rebase'; the re-run's row (rerun_of) carries the verdict. A change that no longer applies is discarded
  with that reason;
- rows are logged as experiments end, numbered in that order; each names its worker, its slot (the GPU), its
  parent and its start and end times;
- runs/<tag>/inflight.json lists the jobs training or queued; after a kill, --resume runs them again first.

This driver alone touches git and the results. Each slot trains in its own git worktree,
runs/<tag>/worktrees/<slot>, checked out at the commit of its current experiment.
"""

import os
import shutil
import statistics
import time

from rich.console import Console

from agent.executor import Job, LocalExecutor
from agent.git import Git, apply_change
from agent.loop import Loop, add_usage, baseline_runs, entry_proposal, journal_entry, make_row, now_iso
from agent.proposers.base import Context, NoProposal
from agent.strategy import parent_summary
from agent.view import PlainView, State
from common.errors import ContractError


class ParallelLoop(Loop):
    def __init__(self, args, slots=None):
        """slots: GPU indices or CPU workers for the local executor; None for --cluster ray (its resources)."""
        super().__init__(args)
        self.slots = slots
        self.gpu = bool(slots) and not slots[0].startswith("cpu")
        self.reruns = []      # prepared jobs (fixes, re-runs on a new best) that go before any new proposal
        self.jobs = 0         # names the runs' logs: j001, j002, ...
        self.ended_because = None

    # -- set-up ---------------------------------------------------------------------------------------------

    def worktree(self, slot):
        return os.path.join(self.folder.path, "worktrees", slot)

    def fresh_worktree(self, name):
        """runs/<tag>/worktrees/<name>, checked out anew at the branch tip (an old one, e.g. from before a
        kill, is removed first)."""
        path = self.worktree(name)
        self.git.run("worktree", "remove", "--force", path, check=False)
        shutil.rmtree(path, ignore_errors=True)
        self.git.run("worktree", "prune")
        self.git.run("worktree", "add", "-q", "--detach", path, self.tip)
        return path

    def run(self):
        self.setup()
        args, p = self.args, self.lab.profile
        names = [r.get("job") or "" for r in self.rows] + [e["name"] for e in self.folder.inflight_jobs()]
        self.jobs = max((int(n[1:]) for n in names if n[:1] == "j" and n[1:].isdigit()), default=0)
        self.ex = executor = self.make_executor()
        if self.slots is None:
            where = f"Ray at {args.ray_address}: " + (f"{len(executor.slots)} GPUs" if executor.gpu
                                                         else f"{len(executor.slots)} CPU tasks")
            self.slots, self.gpu = executor.slots, executor.gpu
        else:
            where = f"GPUs {','.join(self.slots)}" if self.gpu else f"{len(self.slots)} CPU workers"
        title = (f"autoresearch {self.branch} | backend {args.backend} | profile {p.name} ({p.time_budget:g} s) | "
                 f"proposer {self.proposer.name} | {where}")
        self.view = PlainView(State(title, p.time_budget, args.max_experiments), Console())
        with self.view:
            self.view.s.best = self.best
            if self.rows:
                self.view.message(f"resuming: {len(self.rows)} rows in {self.folder.jsonl}, best val_bpb {self.best}")
            try:
                for slot in self.slots:
                    self.fresh_worktree(slot)
                if self.best is None:
                    self.baseline_on(executor)
                self.resume_interrupted()
                self.schedule(executor)
            except KeyboardInterrupt:
                self.stop(executor)
                self.view.message(f"stopped. Nothing logged is lost; continue with: python -m agent --backend "
                                  f"{args.backend} --tag {args.tag} --resume {self.where_args()}")
                raise
            except BaseException:
                self.stop(executor)
                raise
        return self.rows

    def make_executor(self):
        lab = self.lab
        if self.args.cluster == "ray":
            from agent.executor import RayExecutor
            package = self.fresh_worktree("package")  # the project as committed, shipped to every node once
            return RayExecutor(self.args.ray_address, self.args.workers, package, self.canvas, lab.env,
                               lab.timeout, self.folder, lab.data)
        return LocalExecutor(self.slots, self.canvas, lab.env, lab.timeout, self.folder)

    def where_args(self):
        if self.args.cluster == "ray":
            return f"--cluster ray --ray-address {self.args.ray_address}"
        return f"--gpus {','.join(self.slots)}" if self.gpu else f"--workers {len(self.slots)}"

    def stop(self, executor):
        executor.close()
        self.git.reset_hard(self.tip)

    def baseline_on(self, ex):
        """The unchanged canvas, trained where the experiments train (with --confirm K, K more times)."""
        slot = ex.free()[0]
        Git(self.worktree(slot)).run("checkout", "-q", "--force", "--detach", self.tip)
        job = Job(name="000", workdir=self.worktree(slot), commit=self.tip, parent=self.tip,
                  parent_value=float("inf"), description="baseline", proposal=None, diff="",
                  threshold=float("inf"), confirm=baseline_runs(self.args, self.lab.profile) - 1, slot=slot,
                  started=time.monotonic(),
                  started_at=now_iso(), text=self.lab.read_canvas())
        self.view.message(f"[{slot}] baseline ...")
        for attempt in range(3):
            ex.submit(job)
            job, result, values = ex.wait()
            if result is not None:
                break
            self.view.message(f"[{slot}] the baseline lost its worker ({job.infra_error}); again")
        if result is not None:
            result = self.lab.check_result(result)
        if result is None or result.crashed:
            why = result.error if result else job.infra_error
            raise ContractError(f"The baseline run of {self.canvas} failed, so there is nothing to improve on. "
                                f"{why} The log is {self.folder.log_path('000')}.")
        self.best = statistics.fmean(values)
        row = make_row(0, "baseline", "keep", "baseline", self.tip, None, result, values, None, job.started, 0.0,
                       self.info)
        row.update(worker=self.slots.index(slot), slot=slot, gpu=job.gpu, node=job.node, started_at=job.started_at,
                   log="logs/000.log", job="000")
        self.record_baseline(row)

    def resume_interrupted(self):
        super().resume_interrupted()
        for e in self.pending:  # to the front of the queue, as jobs from the current best
            self.reruns.append(self.new_job(e["description"], entry_proposal(e), e["text"], rerun_of=e.get("rerun_of"),
                                            fixes=e.get("fixes", 0), resumed=e["name"]))
        self.pending = []
        self.save_journal()

    def save_journal(self, *current):
        jobs = list(self.ex.running.values()) + self.reruns
        self.folder.save_inflight([journal_entry(j.name, j.proposal, j.text, j.parent, rerun_of=j.rerun_of,
                                                 fixes=j.fixes) for j in jobs])

    def new_job(self, description, proposal, text, parent=None, parent_value=None, **more):
        """The next job in name order, from the current best unless `parent` is given; checked out into a slot's
        worktree when it starts."""
        self.jobs += 1
        return Job(name=f"j{self.jobs:03d}", workdir="", commit="", parent=parent or self.tip,
                   parent_value=self.best if parent_value is None else parent_value, description=description,
                   proposal=proposal, diff="", threshold=self.best, confirm=self.args.confirm, noise=self.noise,
                   text=text, **more)

    # -- scheduling -----------------------------------------------------------------------------------------

    def schedule(self, ex):
        invalid_in_a_row, exhausted = 0, False
        while True:
            waiting = False  # the proposer has nothing new beside what runs: ask again once something ends
            while ex.free() and (self.reruns or (not exhausted and not waiting and self.may_start(len(ex.running)))):
                job = self.next_job(ex)
                if job == "exhausted":
                    exhausted, waiting = not ex.running, bool(ex.running)
                elif job is None:
                    invalid_in_a_row += 1
                    self.check_invalid_streak(invalid_in_a_row)
                else:
                    invalid_in_a_row = 0
                    job.slot = ex.free()[0]
                    self.checkout(job)
                    self.view.message(f"[{job.slot}] start {job.name}: {job.description}")
                    ex.submit(job)
            self.save_journal()
            if not ex.running:
                if self.ended_because:
                    self.view.message(f"done: {self.ended_because}")
                return
            job, result, values = ex.wait()
            if result is None:  # the infrastructure failed, not the idea: run it again
                self.view.message(f"[{job.slot}] {job.name} lost its worker ({job.infra_error}); queued again")
                job.slot, job.infra_error = None, None
                self.reruns.insert(0, job)
                continue
            self.judge(job, result, values)
            self.save_journal()

    def may_start(self, in_flight):
        """Whether a new proposal may start now (re-runs of started experiments always may)."""
        self.ended_because = self.stop_reason(pending=in_flight + len(self.reruns))
        return self.ended_because is None

    def in_flight(self, ex):
        jobs = list(ex.running.values()) + self.reruns
        return [{"description": j.description, "diff": j.diff, "meta": j.proposal.meta} for j in jobs]

    def context(self, ex=None, text=None, parent=None):
        summary = parent_summary(parent, self.rows, self.best) if parent and self.args.strategy == "tree" else None
        return Context(self.lab.root, self.canvas, self.lab.read_canvas() if text is None else text, self.rows,
                       self.program, self.args.backend, self.lab.profile, self.best, self.noise,
                       in_flight=self.in_flight(ex) if ex else [], parent=summary)

    def next_job(self, ex):
        """The next job: a prepared re-run, else a new proposal from the current best. 'exhausted' when the
        proposer has nothing left, None (after logging an 'invalid' row) when it gave nothing applicable."""
        if self.reruns:
            return self.reruns.pop(0)
        started = time.monotonic()
        parent = self.choose_parent([j.parent for j in list(ex.running.values()) + self.reruns])
        if parent["commit"] != self.tip:
            self.lab.write_canvas(self.git.show(parent["commit"], self.canvas))  # --strategy tree
        ctx = self.context(ex, parent=parent)
        try:
            proposal = self.proposer.propose(ctx)
            text = proposal.text if proposal.text is not None else self.lab.read_canvas()
            self.git.run("checkout", "-q", self.tip, "--", self.canvas)  # a command proposer edits in place
            if text == ctx.text:
                raise NoProposal("The proposal leaves the canvas unchanged.")
        except NoProposal as e:
            if e.exhausted:
                self.ended_because = str(e)
                return "exhausted"
            self.record_invalid(e)
            return None
        job = self.new_job(proposal.description, proposal, text, parent["commit"], parent["val_bpb"], started=started,
                           started_at=now_iso(), propose_seconds=time.monotonic() - started)
        self.save_transcript(job.name, proposal)
        return job

    def checkout(self, job):
        """Commit the job's canvas on top of its parent in its slot's worktree (a detached commit)."""
        job.workdir = self.worktree(job.slot)
        wt = Git(job.workdir)
        wt.run("checkout", "-q", "--force", "--detach", job.parent)
        with open(os.path.join(job.workdir, self.canvas), "w") as f:
            f.write(job.text)
        job.commit = wt.commit_file(self.canvas, job.description)
        job.diff = self.git.diff(job.parent, job.commit, self.canvas)
        if not job.started:
            job.started, job.started_at = time.monotonic(), now_iso()

    # -- judging --------------------------------------------------------------------------------------------

    def judge(self, job, result, values):
        bad = self.verify_fixed(Git(job.workdir), job.commit)
        if bad and not result.crashed:
            result.summary, values = None, []
            result.error = f"The run changed fixed files ({', '.join(bad)}); they were restored."
        result = self.lab.check_result(result)
        if result.crashed and not result.rejected and job.fixes < self.args.fix_attempts and self.fix(job, result):
            return
        n = len(self.rows)
        value = statistics.fmean(values) if values else None
        if result.crashed:
            status = "rejected" if result.rejected else "crash"
        elif value < job.parent_value and value < self.best:
            status = "keep" if job.parent == self.tip or self.args.strategy == "tree" else "rebase"
        else:
            status = "discard"
        diff_files = [self.folder.save_diff(f"{n:03d}", job.diff)]
        row = make_row(n, "experiment", status, job.description, job.commit, job.parent, result, values, job.proposal,
                       job.started, job.propose_seconds, self.info, diff=job.diff, diff_files=diff_files, fixes=job.fixes)
        row.update(worker=self.slots.index(job.slot), slot=job.slot, gpu=job.gpu, node=job.node,
                   started_at=job.started_at, log=f"logs/{job.name}.log", rerun_of=job.rerun_of, job=job.name,
                   resumed=job.resumed)
        if status == "rebase" and not self.rebase(job, n):
            row["status"] = status = "discard"
            row["error"] = (f"Its change no longer applies to the current best ({self.tip[:7]}), which moved while "
                            "it trained; dropped.")
        if status == "keep" and job.parent != self.tip:  # --strategy tree: the branch takes the canvas as it is
            row.update(commit=self.git.run("commit-tree", f"{job.commit}^{{tree}}", "-p", self.tip, "-m",
                                           job.description), trained_commit=job.commit)
        self.record(row)  # the log first: a kill between the two steps is repaired by --resume
        if status == "keep":
            self.git.reset_hard(row["commit"])
            self.tip, self.best = row["commit"], value
        self.view.finish(row, self.best)

    def fix(self, job, result):
        """Ask the proposer to fix a crash; queue the fixed canvas from the same parent. False if no fix."""
        ctx = self.context(text=job.text)
        fix = self.proposer.fix(ctx, job.proposal, result.feedback())
        if fix is None:
            return False
        text = fix.text if fix.text is not None else self.lab.read_canvas()
        self.git.run("checkout", "-q", self.tip, "--", self.canvas)
        if text == self.git.show(job.parent, self.canvas):
            return False
        self.jobs += 1
        self.save_transcript(f"j{self.jobs:03d}-fix", fix)
        add_usage(job.proposal, fix)
        self.reruns.insert(0, Job(**{**job.__dict__, "name": f"j{self.jobs:03d}", "text": text, "slot": None,
                                     "fixes": job.fixes + 1}))
        return True

    def rebase(self, job, n):
        """Queue the job's change applied on the current best, to be re-run there. False if it does not apply."""
        new = apply_change(self.git, job.parent, job.text, self.tip, self.canvas)
        if new is None:
            return False
        self.reruns.append(self.new_job(f"{job.description} (re-run of {n} on {self.tip[:7]})", job.proposal, new,
                                        rerun_of=n))
        return True

