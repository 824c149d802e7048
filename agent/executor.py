"""Where experiments train when several run at once: one small interface, so the loop does not care whether a
run happens in a subprocess on this host or elsewhere. The driver (agent/parallel.py) alone touches git and the
results; an executor only trains a prepared working copy and reports how it went.

    executor.slots           the names of the places a run can go: GPU indices ('0', '1') or CPU workers
    executor.running         {slot: job} of the jobs in flight
    executor.free()          the slots with nothing running
    executor.submit(job)     start a Job on job.slot (a free one)
    executor.wait()          block until a job ends; returns (job, RunResult, [val_bpb of each run]), or
                             (job, None, []) when the infrastructure failed (the driver queues it again)
    executor.close()         stop whatever still runs (a kill of the driver)

A job is trained once and, when its first result beats job.threshold, re-run as agent.loop.reruns() says
(--confirm K times, or once for a gain within 2 sd of job.noise).
"""

import os
import queue
import socket
import subprocess
import threading
from dataclasses import dataclass

from agent.loop import reruns
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
    threshold: float          # run the confirmations when the first result is below this
    noise: float | None = None    # the run's noise figure (sd), for the noise-aware keep
    text: str = ""            # the canvas to train
    confirm: int = 0
    fixes: int = 0
    rerun_of: int | None = None   # the row n of a candidate whose parent was overtaken, re-run on the new best
    resumed: str | None = None    # the name of the job a kill interrupted, which this one runs again
    slot: str | None = None
    node: str | None = None       # where it ran: host (and Ray node), GPU
    gpu: str | None = None
    infra_error: str | None = None
    started: float = 0.0          # time.monotonic() when it was proposed (or submitted)
    started_at: str = ""          # the same as an ISO time
    propose_seconds: float = 0.0


def train_and_confirm(run, name, confirm, threshold, noise=None):
    """run(name) -> RunResult once and, when its val_bpb is below threshold, reruns() more times (named
    <name>-confirm<k>). Returns (the first result with every run's seconds, [val_bpb of each run]); a crash
    ends it with no values."""
    result = run(name)
    if result.crashed:
        return result, []
    values = [result.summary["val_bpb"]]
    if values[0] < threshold:
        for k in range(1, reruns(values[0], threshold, confirm, noise) + 1):
            again = run(f"{name}-confirm{k}")
            if again.crashed:
                return again, []
            values.append(again.summary["val_bpb"])
            result.seconds += again.seconds
    return result, values


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
        job.node, job.gpu = socket.gethostname(), None if job.slot.startswith("cpu") else job.slot
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

        return train_and_confirm(run, job.name, job.confirm, job.threshold, job.noise)

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


# ---------------------------------------------------------------------------------------------------------
# Ray: each experiment is a task on some node of a cluster
# ---------------------------------------------------------------------------------------------------------

SHIPPED_ENV = ("AUTORESEARCH_", "FIXTURE_", "PYTHONUNBUFFERED")  # the variables a run takes to another node


class DataMismatch(Exception):
    """A node's data is not the data the run's results are recorded against."""


def run_on_node(canvas, text, env, timeout, name, confirm, threshold, noise, data):
    """A Ray task: train the canvas text in a private copy of the project (the job's working directory, which
    Ray ships to every node) in a subprocess on this node, after checking that the node's data has the
    recorded hashes. Returns what the driver needs: the result, every run's val_bpb, the logs, where it ran."""
    import shutil
    import socket
    import tempfile

    import ray
    tmp = tempfile.mkdtemp(prefix="autoresearch-")
    work = os.path.join(tmp, "work")
    shutil.copytree(os.getcwd(), work)  # tasks on one node share the shipped directory; each trains its copy
    with open(os.path.join(work, canvas), "w") as f:
        f.write(text)
    env = {**os.environ, **env, "PYTHONPATH": work}
    for key in ("AUTORESEARCH_DATA", "AUTORESEARCH_CACHE"):  # a node may keep its data elsewhere
        if os.environ.get(f"NODE_{key}"):
            env[key] = os.environ[f"NODE_{key}"]
    node = f"{socket.gethostname()}:{ray.get_runtime_context().get_node_id()[:8]}"
    if data is not None:
        from common.data import get_source
        try:
            here = get_source(env.get("AUTORESEARCH_DATA")).identity()
        except Exception as e:  # noqa: BLE001 -- any failure to read the data is a refusal
            here = f"unreadable ({e})"
        if here != data:
            raise DataMismatch(
                f"Node {node} refused: its data ({env.get('AUTORESEARCH_DATA') or 'climbmix'}) is not the data of "
                f"this run. Recorded: {data}; found there: {here}. Put the same shards on every node (make "
                "prepare DATA=... there, or NODE_AUTORESEARCH_DATA=folder in the environment of `ray start`), "
                "or leave that node out of the cluster.")
    logs = {}

    def run(run_name):
        path = os.path.join(tmp, f"{run_name}.log")
        result = train(work, canvas, env, timeout, path)
        with open(path) as f:
            logs[run_name] = f.read()
        return result

    try:
        result, values = train_and_confirm(run, name, confirm, threshold, noise)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    gpus = [str(g) for g in ray.get_gpu_ids()]
    return dict(result=result.__dict__, values=values, logs=logs, node=node, gpu=",".join(gpus) or None)


class RayExecutor:
    """Each job is a Ray task with num_gpus=1 (num_cpus=1 without GPUs) that receives the canvas text; the
    project (a clean checkout, `package`) is shipped once as the Ray job's working directory. The cluster's
    GPUs (or --workers on a cluster without GPUs) are the slots. A task whose worker or node dies comes back as
    an infrastructure failure (result None): the driver queues it again."""

    def __init__(self, address, workers, package, canvas, env, timeout, folder, data):
        import ray
        try:
            ray.init(address=address, logging_level="ERROR", log_to_driver=False, configure_logging=False,
                     runtime_env={"working_dir": package, "excludes": [".git"]})
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise ContractError(f"Could not reach a Ray cluster at --ray-address {address} ({e}). Start one first "
                                "(`ray start --head` on one machine, `ray start --address=HEAD:6379` on the "
                                "others), then pass --ray-address auto on a node of it, or ray://HEAD:10001.") from None
        gpus = int(ray.cluster_resources().get("GPU", 0))
        self.gpu = gpus > 0
        self.slots = [f"ray{i}" for i in range(gpus if self.gpu else workers)]
        self.canvas, self.timeout, self.folder, self.data = canvas, timeout, folder, data
        self.env = {k: v for k, v in env.items() if k.startswith(SHIPPED_ENV)}
        self.refs = {}  # Ray object ref -> the job it will return
        self.task = ray.remote(run_on_node)

    @property
    def running(self):
        return {job.slot: job for job in self.refs.values()}

    def free(self):
        return [s for s in self.slots if s not in self.running]

    def submit(self, job):
        options = dict(num_gpus=1 if self.gpu else 0, num_cpus=1, max_retries=0)
        ref = self.task.options(**options).remote(self.canvas, job.text, self.env, self.timeout, job.name,
                                                  job.confirm, job.threshold, job.noise, self.data)
        self.refs[ref] = job

    def wait(self):
        import ray
        from ray.exceptions import RayTaskError
        (ref,), _ = ray.wait(list(self.refs), num_returns=1)
        job = self.refs.pop(ref)
        try:
            out = ray.get(ref)
        except RayTaskError as e:
            if isinstance(e.cause, DataMismatch):
                raise ContractError(str(e.cause)) from None
            return job, RunResult(None, 0.0, None, False, f"The experiment's task failed: {e.cause!r}"), []
        except ray.exceptions.RayError as e:  # the worker or its node died: not the idea's fault
            job.infra_error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            return job, None, []
        for run_name, text in out["logs"].items():
            with open(self.folder.log_path(run_name), "w") as f:
                f.write(text)
        job.node, job.gpu = out["node"], out["gpu"]
        return job, RunResult(**out["result"]), out["values"]

    def close(self):
        import ray
        for ref in list(self.refs):
            ray.cancel(ref, force=True)
        ray.shutdown()
