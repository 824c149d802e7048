"""Where experiments train when several run at once: one small interface, so the loop does not care whether a
run happens in a subprocess on this host or elsewhere. The driver (agent/parallel.py) alone touches git and the
results; an executor only trains a prepared working copy and reports how it went.

    executor.slots           the names of the places a run can go: GPU indices ('0', '1') or CPU workers
    executor.free()          the slots with nothing running
    executor.submit(job)     start a Job on job.slot (a free one)
    executor.wait()          block until a job ends; returns (job, RunResult, [val_bpb of each run])
    executor.close()         stop whatever still runs (a kill of the driver)

A job is trained once and, when its first result beats job.threshold, job.confirm more times (--confirm).
"""

import os
import queue
import subprocess
import threading
from dataclasses import dataclass, field

from agent.runner import RunResult, kill_group, train
from common.errors import ContractError


@dataclass
class Job:
    name: str                 # names its log files: logs/<name>.log, logs/<name>-confirm<k>.log
    workdir: str              # a git worktree holding the commit to train
    commit: str
    parent: str               # the best commit it started from
    parent_value: float       # that commit's val_bpb
    description: str
    proposal: object          # the proposer's Proposal (for fixes, transcripts and the row)
    diff: str
    threshold: float
    text: str = ""            # the canvas to train          # run the confirmations when the first result is below this
    confirm: int = 0
    fixes: int = 0
    diff_files: list = field(default_factory=list)
    rerun_of: int | None = None   # the row n of a candidate whose parent was overtaken, re-run on the new best
    slot: str | None = None
    started: float = 0.0          # time.monotonic() at submit
    started_at: str = ""          # ISO time at submit
    propose_seconds: float = 0.0


def visible_gpus():
    """The NVIDIA GPUs' indices, from nvidia-smi (no framework import); [] when there is none."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip().isdigit()] if out.returncode == 0 else []


def parse_slots(gpus, workers):
    """--gpus 0,1 | all, or --workers N: the slot names. GPU slots pin each run with CUDA_VISIBLE_DEVICES."""
    if gpus:
        if gpus.strip() == "all":
            found = visible_gpus()
            if not found:
                raise ContractError("--gpus all: nvidia-smi lists no GPU on this machine. Name the GPUs (--gpus 0,1), "
                                    "or run several CPU workers with --workers N.")
            return found
        slots = [g.strip() for g in gpus.split(",") if g.strip()]
        if not slots or not all(s.isdigit() for s in slots) or len(set(slots)) != len(slots):
            raise ContractError(f"--gpus '{gpus}' is not a list of distinct GPU indices. Give e.g. --gpus 0,1 or "
                                "--gpus all.")
        return slots
    if workers < 1:
        raise ContractError("--workers must be at least 1.")
    return [f"cpu{i}" for i in range(workers)]


class LocalExecutor:
    """Each job trains in a subprocess on this host, from a thread of the driver; a GPU slot sets
    CUDA_VISIBLE_DEVICES for its run."""

    def __init__(self, slots, canvas, env, timeout, folder, on_line=None):
        self.slots, self.canvas, self.env, self.timeout, self.folder = list(slots), canvas, env, timeout, folder
        self.on_line = on_line or (lambda job, fraction, line: None)
        self.running, self.procs, self.done = {}, {}, queue.Queue()
        self.stopping = threading.Event()

    def free(self):
        return [s for s in self.slots if s not in self.running]

    def submit(self, job):
        assert job.slot in self.free(), f"slot {job.slot} is busy"
        self.running[job.slot] = job
        threading.Thread(target=self._run, args=(job,), daemon=True).start()

    def _env(self, job):
        env = dict(self.env, PYTHONPATH=os.pathsep.join(p for p in (job.workdir, self.env.get("PYTHONPATH")) if p))
        if not job.slot.startswith("cpu"):
            env["CUDA_VISIBLE_DEVICES"] = job.slot
        return env

    def _run(self, job):
        try:
            result, values = self._train(job)
        except Exception as e:  # never lose a job: report it as a failure of the infrastructure
            result, values = RunResult(None, 0.0, None, False, f"The executor failed: {e!r}"), []
        self.done.put((job, result, values))

    def _train(self, job):
        env = self._env(job)

        def run(name):
            if self.stopping.is_set():
                return RunResult(None, 0.0, None, False, "The loop was stopped before this run.")
            return train(job.workdir, self.canvas, env, self.timeout, self.folder.log_path(name),
                         on_progress=lambda fraction, line: self.on_line(job, fraction, line),
                         on_start=lambda proc: self.procs.__setitem__(job.slot, proc))

        result = run(job.name)
        if result.crashed:
            return result, []
        values = [result.summary["val_bpb"]]
        if values[0] < job.threshold:
            for k in range(1, job.confirm + 1):
                again = run(f"{job.name}-confirm{k}")
                if again.crashed:
                    return again, []
                values.append(again.summary["val_bpb"])
                result.seconds += again.seconds
        return result, values

    def wait(self):
        job, result, values = self.done.get()
        del self.running[job.slot]
        self.procs.pop(job.slot, None)
        return job, result, values

    def close(self):
        """Stop every run still going (their process groups), e.g. when the driver is interrupted."""
        self.stopping.set()
        for proc in list(self.procs.values()):
            if proc.poll() is None:
                kill_group(proc)
