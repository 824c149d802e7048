"""make bench-anchor: upstream autoresearch's own train.py beside one of our backends, on the same data, the same
budget and the same kind of GPU, in one table.

    python bench/anchor.py [--backend cuda] [--budget 60] [--repeat 3] [--gpus 0,1] [--data FOLDER]
                           [--upstream DIR] [--variant NAME ...] [--no-upstream] [--warmup SECONDS]
                           [--deadline SECONDS] [--no-pin] [--out DIR]

Upstream's code is never part of this project: it is fetched at run time with git into the git-ignored folder
.upstream/<commit> at the pinned commit UPSTREAM_COMMIT, or read from --upstream DIR (a folder holding its
prepare.py and train.py) where there is no network. It runs unchanged but for its TIME_BUDGET constant, with
bench/upstream_kernels.py standing in for the FlashAttention-3 kernel it would download, under a private
HOME whose cache holds the same data files as ours (the last file is its pinned validation shard). rustbpe must
be importable: upstream's prepare.py trains its own tokenizer, once per set of data files (that HOME is kept in
our cache, $AUTORESEARCH_CACHE/upstream/).

Jobs (upstream, our backend, each --variant of bench/ablations.py, --repeat times each, interleaved) go to
the GPUs of --gpus one at a time per GPU, so with two GPUs upstream and ours train side by side. Each GPU's
runs are pinned to their own share of the CPUs (--no-pin shares them all). A job that could not finish before
--deadline seconds is skipped and listed. --warmup first runs each trainer once for that many seconds,
outside the table, so that no measured run trains beside another's cold compile. Logs, results.jsonl (a line
as each run ends) and anchor.md (the table) are written to --out.

Columns: steps; tokens/s over the timed steps; MFU (upstream's and ours both divide by 989.5 TFLOP/s on an
H100 or H200); peak GPU memory; val_bpb; total - training = process wall time not spent training (start-up,
compilation, untimed steps, evaluation). Then per group: mean and sd of val_bpb, the difference to upstream's
mean and to cuda's (each also in units of that group's sd), and the difference at equal steps (equal_step_fit:
the step count follows the host, and a step is worth about 0.0005 at 60 s).

    python bench/anchor.py table runs/a/results.jsonl runs/b/results.jsonl   # one table over several calls
"""

import argparse
import dataclasses
import datetime
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from ablations import VARIANTS, apply  # noqa: E402
from common.errors import ContractError, run_cli  # noqa: E402

UPSTREAM_URL = "https://github.com/karpathy/autoresearch.git"
UPSTREAM_COMMIT = "228791fb499afffb54b46200aca536f79142f117"  # master on 2026-11-29
UPSTREAM_UNTIMED_STEPS = 11    # upstream's loop times steps 11 onwards
UPSTREAM_VAL_SHARD = "shard_06542.parquet"


# ---------------------------------------------------------------------------------------------------------
# Upstream's code and data
# ---------------------------------------------------------------------------------------------------------

def upstream_code(folder=None, commit=UPSTREAM_COMMIT):
    """A folder with upstream's prepare.py and train.py: `folder`, else .upstream/<commit>, cloned if missing."""
    if folder:
        folder = Path(folder).resolve()
        missing = [f for f in ("prepare.py", "train.py") if not (folder / f).is_file()]
        if missing:
            raise ContractError(f"{folder} has no {' or '.join(missing)}: --upstream must name a folder with "
                                f"upstream autoresearch's prepare.py and train.py (a checkout of {UPSTREAM_URL}).")
        return folder
    dest = REPO / ".upstream" / commit[:12]
    if (dest / "train.py").is_file():
        return dest
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"Fetching upstream autoresearch {commit[:12]} into {dest} (git-ignored) ...", flush=True)
    try:
        subprocess.run(["git", "clone", "--quiet", UPSTREAM_URL, str(tmp)], check=True, timeout=300)
        subprocess.run(["git", "-C", str(tmp), "checkout", "--quiet", commit], check=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        raise ContractError(f"Could not fetch {UPSTREAM_URL} at {commit[:12]} ({e}). Without network, clone it "
                            "elsewhere and name the folder with --upstream DIR (UPSTREAM=DIR for make).") from None
    tmp.rename(dest)
    return dest


def upstream_data_files(data_folder):
    """(training files, validation file) in upstream's terms: parquet shards, the last one validation."""
    from common.data import get_source
    source = get_source(data_folder)
    files = source.train_files + source.val_files
    if any(f.suffix != ".parquet" for f in files):
        raise ContractError(f"{source.name} holds files other than parquet shards; upstream's loader reads "
                            "parquet shards with a `text` column only. Compare on parquet data (e.g. "
                            "DATA=../shared/corpus).")
    return source.train_files, source.val_files[0]


def upstream_home(code, train_files, val_file):
    """Upstream's private HOME, kept in our cache between calls of the harness (its tokenizer takes 20-30 s to
    train on a GPU's host, each call, else): one per set of data files (path, size, time) and prepare.py."""
    from common.data import cache_dir
    key = hashlib.sha256((code / "prepare.py").read_bytes())
    for f in [*train_files, val_file]:
        stat = f.stat()
        key.update(f"{f.resolve()} {stat.st_size} {stat.st_mtime_ns}\n".encode())
    return cache_dir() / "upstream" / key.hexdigest()[:16]


def prepare_upstream(code, data_folder, work, budget):
    """A runnable copy of upstream under `work`: its code with TIME_BUDGET = budget and the kernels stand-in,
    and a private HOME (upstream_home) whose cache holds the data (links) and upstream's own tokenizer. Returns
    (dir, env)."""
    train_files, val_file = upstream_data_files(data_folder)
    home = upstream_home(code, train_files, val_file)
    data = home / ".cache" / "autoresearch" / "data"
    if not data.is_dir():
        data.mkdir(parents=True)
        for i, f in enumerate(train_files):
            (data / f"shard_{i:05d}.parquet").symlink_to(f.resolve())
        (data / UPSTREAM_VAL_SHARD).symlink_to(val_file.resolve())
    run_dir = work / f"code_{budget:g}s"
    run_dir.mkdir(parents=True, exist_ok=True)
    prepare_py = (code / "prepare.py").read_text()
    patched, n = re.subn(r"^TIME_BUDGET = 300\b", f"TIME_BUDGET = {budget:g}", prepare_py, flags=re.M)
    if n != 1:
        raise ContractError(f"{code / 'prepare.py'} has no line 'TIME_BUDGET = 300': not the upstream this "
                            f"harness knows ({UPSTREAM_COMMIT[:12]}); pass --upstream with that commit.")
    (run_dir / "prepare.py").write_text(patched)
    shutil.copy(code / "train.py", run_dir / "train.py")
    shutil.copy(REPO / "bench" / "upstream_kernels.py", run_dir / "kernels.py")
    env = dict(os.environ, HOME=str(home), PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
    tokenizer = home / ".cache" / "autoresearch" / "tokenizer" / "tokenizer.pkl"
    if not tokenizer.exists():
        print("Upstream: training its tokenizer (its own prepare.py) ...", flush=True)
        proc = subprocess.run([sys.executable, "prepare.py", "--num-shards", str(len(train_files))], cwd=run_dir,
                              env=env, capture_output=True, text=True)
        (work / "upstream_prepare.log").write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            raise ContractError(f"Upstream's prepare.py failed (exit {proc.returncode}); its log is "
                                f"{work / 'upstream_prepare.log'}. It needs rustbpe, pyarrow, tiktoken and torch.")
    return run_dir, env


def parse_upstream(text):
    """Upstream's summary block ('---' then 'key: value'), numbers only."""
    block = text[text.rfind("\n---\n"):] if "\n---\n" in text else ""
    values = {k: float(v) for k, v in re.findall(r"^(\w+):\s+([-+\d.eE]+)\s*$", block, re.M)}
    if "val_bpb" not in values:
        raise ContractError("upstream's output has no summary block: the run crashed; see its log")
    steps = int(values["num_steps"])
    per_step = values["total_tokens_M"] * 1e6 / steps
    values["tokens_per_sec"] = (steps - UPSTREAM_UNTIMED_STEPS) * per_step / values["training_seconds"]
    values["num_steps"] = steps
    return values


# ---------------------------------------------------------------------------------------------------------
# Jobs
# ---------------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Job:
    group: str        # "upstream", the backend ("cuda"), or "cuda:<variant>"
    budget: float
    index: int        # repeat number, from 1
    command: list
    cwd: Path
    env: dict
    parse: object     # text -> summary dict
    slot: int = None  # which of the listed GPUs must run it (side-by-side pairs swap GPUs); None = any

    @property
    def name(self):
        return f"{self.group.replace(':', '-')}_{self.budget:g}s_{self.index}"


def our_job(args, backend, variant, index, out, budget):
    """A run of a backend's canvas (with a variant's edits) in a fresh process, under the profile with `budget`
    (and the variant's profile overrides)."""
    from common.summary import parse_summary
    canvas = (REPO / "backends" / backend / "train.py").read_text()
    group, overrides, env = backend, {}, dict(os.environ, PYTHONUNBUFFERED="1")
    if variant:
        canvas = apply(VARIANTS[variant], canvas)
        group, overrides = f"{backend}:{variant}", VARIANTS[variant].profile
        if VARIANTS[variant].cuda_init is not None:
            env["AUTORESEARCH_INIT_WEIGHTS"] = str(cuda_init_path(out, VARIANTS[variant].cuda_init))
    path = out / "canvases" / f"{group.replace(':', '-')}.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(canvas)
    command = [sys.executable, str(Path(__file__).resolve()), "child", "--canvas", str(path), "--backend",
               backend, "--profile", args.profile, "--budget", str(budget), "--override", json.dumps(overrides)]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    if args.data:
        env["AUTORESEARCH_DATA"] = str(Path(args.data).resolve())
    return Job(group, budget, index, command, REPO, env, parse_summary)


def cuda_init_path(out, seed):
    return out / f"cuda_init_{seed}.npz"


def export_cuda_init(args, seed, path):
    """The cuda backend's initial weights for `seed` at the profile's size, built where it trains (the GPU when
    there is one: CUDA draws other numbers than the CPU), saved in the exchange format for the from-cuda-init
    variants."""
    code = ("import sys, numpy as np, torch; sys.path.insert(0, 'bench'); from anchor import load_canvas; "
            "from common.platform import get_profile; from common.tokenizer import Tokenizer; "
            "t = load_canvas('backends/cuda/train.py'); "
            f"p = get_profile({args.profile!r}); c = t.model_config(p.depth, p.max_seq_len, Tokenizer.load().vocab_size); "
            f"m = t.build_model(c, 'cuda' if torch.cuda.is_available() else 'cpu', seed={int(seed)}); "
            f"np.savez({str(path)!r}, **t.export_weights(m))")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    if args.data:
        env["AUTORESEARCH_DATA"] = str(Path(args.data).resolve())
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ContractError(f"Could not export the cuda backend's initial weights:\n{proc.stderr[-2000:]}")


def load_canvas(path, backend="cuda"):
    """A backend's train.py (or a variant's copy of it) as a module named <backend>_train."""
    spec = importlib.util.spec_from_file_location(f"{backend}_train", path)
    train = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = train  # torch.compile imports what it traces (an autograd.Function, say) by module name
    spec.loader.exec_module(train)
    return train


def child(args):
    """Runs one canvas's main() under the profile, with the budget and overrides applied (a fresh process)."""
    from common.platform import get_profile
    profile = get_profile(args.profile, args.budget)
    # The loader's budget guard reads the profile from the environment, as the agent fixes it for a run.
    os.environ.update(AUTORESEARCH_PROFILE=profile.name, AUTORESEARCH_BUDGET=f"{profile.time_budget:g}")
    overrides = json.loads(args.override)
    if overrides:
        profile = dataclasses.replace(profile, **overrides)
    run_cli(load_canvas(args.canvas, args.backend).main, profile)


def cpu_shares(n):
    """This process's CPUs in n disjoint, contiguous shares, one per GPU, or None for one GPU. Side by side, a
    trainer's host work (upstream tokenizes on its training thread; a cold compile takes every core it may)
    must not take the other's cores: on 2026-11-30 upstream ran host-bound beside ours, 175-186 steps to 200."""
    cpus = sorted(os.sched_getaffinity(0))
    if n < 2 or len(cpus) < n:
        return None
    size = len(cpus) // n
    return [cpus[k * size:(k + 1) * size] for k in range(n)]


def cpu_list(cpus):
    """[0, 1, 2, 5] -> '0-2,5', as taskset writes it."""
    spans = []
    for c in cpus:
        if spans and c == spans[-1][1] + 1:
            spans[-1][1] = c
        else:
            spans.append([c, c])
    return ",".join(f"{a}-{b}" if b > a else f"{a}" for a, b in spans)


def run_job(job, gpu, out, timeout, cpus=None):
    """Runs a job on one GPU ('' = whatever is visible), on `cpus` alone if given; returns its row for the table."""
    env = dict(job.env)
    if gpu != "":
        env["CUDA_VISIBLE_DEVICES"] = gpu
    log = out / "logs" / f"{job.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with open(log, "w") as f:
        with subprocess.Popen(job.command, cwd=job.cwd, env=env, stdout=f, stderr=subprocess.STDOUT) as proc:
            if cpus:  # the interpreter has only just started: every thread it makes from here inherits the set
                os.sched_setaffinity(proc.pid, cpus)
            try:
                status = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                status = "timeout"
    wall = time.time() - t0
    row = dict(name=job.name, group=job.group, budget=job.budget, index=job.index, gpu=gpu, wall=round(wall, 1),
               started=datetime.datetime.fromtimestamp(t0, datetime.timezone.utc).isoformat(timespec="seconds"))
    if cpus:
        row["cpus"] = cpu_list(cpus)
    text = log.read_text(errors="replace").replace("\r", "\n")
    try:
        if status != 0:
            raise ContractError(f"exit {status}")
        s = job.parse(text)
        row.update(steps=s["num_steps"], tokens_per_sec=s["tokens_per_sec"], mfu=s["mfu_percent"],
                   peak_gb=s["peak_vram_mb"] / 1024, val_bpb=s["val_bpb"], training_s=s["training_seconds"],
                   overhead_s=wall - s["training_seconds"])
    except ContractError as e:
        row["error"] = f"{e} (log: {log})"
    return row


def run_all(jobs, gpus, out, deadline, timeout, progress=print, record=None, pin=True):
    """Each GPU takes the next job when it is free (of those whose slot is its place in `gpus`, or that have
    none), on its own share of the CPUs if `pin`; a job that could not end before the deadline is skipped (a
    job is reckoned to take what its group's last run took: a warm jax run at 60 s takes 75 s, a cold cuda one
    215 s).
    `record(row)` is called as each row is done (so a killed call keeps what finished). Returns the rows in
    job order."""
    t0, lock, rows, pending = time.time(), threading.Lock(), {}, list(jobs)
    took = {}  # group -> seconds its last finished run took, start-up included
    shares = cpu_shares(len(gpus)) if pin else None

    def done(row):
        with lock:
            rows[row["name"]] = row
            if "val_bpb" in row:
                took[row["group"]] = row["wall"]
            if record:
                record(row)

    def worker(k, gpu):  # the k-th listed GPU
        while True:
            with lock:
                if not pending:
                    return
                job = next((j for j in pending if j.slot is None or j.slot % len(gpus) == k), None)
                if job:
                    pending.remove(job)
                    # as long as its group's last run took, or its budget and a minute before one has ended
                    late = deadline and time.time() - t0 + took.get(job.group, job.budget + 60) > deadline
            if job is None:  # only the other GPUs' halves of pairs are left: they take them
                time.sleep(1)
                continue
            if late:
                done(dict(name=job.name, group=job.group, budget=job.budget, index=job.index, gpu=gpu,
                          error="skipped: would end after the deadline"))
                continue
            progress(f"[{time.time() - t0:6.0f}s] gpu {gpu or '-'}: {job.name} ...")
            row = run_job(job, gpu, out, timeout, shares and shares[k])
            done(row)
            shown = f"val_bpb {row['val_bpb']:.4f}, {row['steps']} steps" if "val_bpb" in row else row["error"]
            progress(f"[{time.time() - t0:6.0f}s] gpu {gpu or '-'}: {job.name}: {shown}")

    threads = [threading.Thread(target=worker, args=(k, g)) for k, g in enumerate(gpus)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [rows[j.name] for j in jobs if j.name in rows]


# ---------------------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------------------

def allow_bytecode():
    """If this machine forbids writing Python bytecode (PYTHONDONTWRITEBYTECODE, as this workplace's GPU machines
    do, with a torch that has no .pyc files), let every trainer this process starts write it once, to our cache,
    and read it back: else each compiles torch's Python again, about 10 s of its start-up that a pip install
    does not spend (docs/notes/fidelity.md section 24). Returns a note for the table's heading, or ''."""
    if not os.environ.pop("PYTHONDONTWRITEBYTECODE", None):
        return ""
    from common.data import cache_dir
    os.environ.setdefault("PYTHONPYCACHEPREFIX", str(cache_dir() / "pycache"))
    return f"bytecode cached in {os.environ['PYTHONPYCACHEPREFIX']} (the machine set PYTHONDONTWRITEBYTECODE)"


def machine():
    """The card, its driver, and the frameworks' versions, for the table's heading."""
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10).stdout.strip().splitlines()
    except (OSError, subprocess.SubprocessError):
        smi = []
    cards = f"{len(smi)} x {smi[0]}" if smi else "no NVIDIA GPU"
    versions = []
    for package in ("torch", "jax"):
        try:
            versions.append(f"{package} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    return f"{cards} (name, driver) | {', '.join(versions)}"


def equal_step_fit(rows):
    """{budget: (slope, residual sd, runs, {group: (val_bpb minus upstream's at equal steps, its standard error)})}.

    A run's val_bpb depends on how many steps its host allowed in the budget (about -0.0005 a step at 60 s), so
    raw means mix the trainers' difference with their speed. One line per group with a common slope, fitted by
    least squares over every run of a budget, reads them at equal steps. Only where upstream ran, and where the
    slope can be told apart from the groups (step counts vary within groups) with a residual left to measure."""
    import numpy as np
    fits = {}
    for budget in sorted({r["budget"] for r in rows if "val_bpb" in r}):
        runs = [r for r in rows if "val_bpb" in r and r["budget"] == budget]
        names = sorted({r["group"] for r in runs}, key=lambda g: g != "upstream")  # upstream first
        if names[0] != "upstream" or len(runs) <= len(names) + 1:
            continue
        mean_steps = statistics.fmean(r["steps"] for r in runs)
        X = np.array([[float(r["group"] == g) for g in names] + [r["steps"] - mean_steps] for r in runs])
        y = np.array([r["val_bpb"] for r in runs])
        if np.linalg.matrix_rank(X) < X.shape[1]:
            continue
        coef, *_ = np.linalg.lstsq(X, y, rcond=None)
        residual_var = float(((y - X @ coef) ** 2).sum()) / (len(runs) - X.shape[1])
        cov = residual_var * np.linalg.inv(X.T @ X)
        diffs = {g: (float(coef[i] - coef[0]), float(max(cov[i, i] + cov[0, 0] - 2 * cov[i, 0], 0.0)) ** 0.5)
                 for i, g in enumerate(names) if i}
        fits[budget] = (float(coef[-1]), residual_var ** 0.5, len(runs), diffs)
    return fits


def difference(mean, reference):
    """mean minus the reference runs' mean, and in units of their sd (issue 10 reads 'within 2 sd' so)."""
    if not reference:
        return ""
    ref_mean = statistics.fmean(reference)
    ref_sd = statistics.stdev(reference) if len(reference) > 1 else 0.0
    return f"{mean - ref_mean:+.4f}" + (f" ({(mean - ref_mean) / ref_sd:+.1f} sd)" if ref_sd > 0 else "")


def table(rows, heading):
    lines = [heading, "",
             "| run | GPU | steps | tokens/s | MFU % | peak GB | val_bpb | total - training s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['name']} | {r.get('gpu', '')} | {r['error']} | | | | | |")
        else:
            lines.append(f"| {r['name']} | {r['gpu']} | {r['steps']} | {r['tokens_per_sec']:,.0f} | {r['mfu']:.2f} | "
                         f"{r['peak_gb']:.1f} | {r['val_bpb']:.4f} | {r['overhead_s']:.1f} |")
    groups = {}
    for r in rows:
        if "val_bpb" in r:
            groups.setdefault((r["group"], r["budget"]), []).append(r["val_bpb"])
    fits = equal_step_fit(rows)
    lines += ["", "| group | budget s | runs | val_bpb mean | sd | vs upstream | vs cuda | at equal steps |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for (group, budget), values in groups.items():
        mean = statistics.fmean(values)
        sd = statistics.stdev(values) if len(values) > 1 else float("nan")
        vs = {ref: difference(mean, groups.get((ref, budget))) if group not in ("upstream", ref) else ""
              for ref in ("upstream", "cuda")}
        diff = fits.get(budget, (0, 0, 0, {}))[3].get(group)
        at_equal = f"{diff[0]:+.4f} ± {diff[1]:.4f}" if diff else ""
        lines.append(f"| {group} | {budget:g} | {len(values)} | {mean:.4f} | {sd:.4f} | {vs['upstream']} | "
                     f"{vs['cuda']} | {at_equal} |")
    for budget, (slope, resid_sd, n, _) in fits.items():
        lines.append(f"\nAt equal steps ({budget:g} s): one line per group with a common slope, {slope:+.5f} val_bpb "
                     f"per step, fitted over {n} runs (residual sd {resid_sd:.5f}).")
    return "\n".join(lines)


def pooled_table(files):
    """Prints one table over the runs of several results.jsonl files (the calls of one GPU session, say)."""
    rows, headings = [], []
    for path in files:
        if not path.is_file():
            raise ContractError(f"{path} is not a file. Name the results.jsonl files that bench/anchor.py wrote "
                                "(in its --out folder, runs/anchor by default).")
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ContractError(f"{path}, line {number}, is not JSON ({e.msg}): name the results.jsonl files "
                                    "that bench/anchor.py wrote, one run a line.") from None
            rows.append(row)
            if row.get("heading") not in headings:
                headings.append(row.get("heading"))
    print(table(rows, "\n".join(h for h in headings if h) or "pooled runs"))
    return 0


def plan(args, code, out, budget, repeat, variant_repeat):
    """The runs at `budget`: upstream's (from `code`, unless None) and our backend's interleaved, so that with two
    GPUs they train side by side, then the --extra backends' (without upstream: ours and the extras take turns),
    then the variants'. The pairs swap GPUs from one
    repeat to the next: two GPUs of one host can differ by a percent of speed (2026-11-30: our runs made 201-202
    steps on one and 199 on the other), which would otherwise fall on one side of the comparison."""
    upstream_jobs = []
    if code:
        run_dir, env = prepare_upstream(code, args.data, out / "upstream", budget)
        upstream_jobs = [Job("upstream", budget, i + 1, [sys.executable, "train.py"], run_dir, env, parse_upstream)
                         for i in range(repeat)]
    ours = [our_job(args, args.backend, None, i + 1, out, budget) for i in range(repeat)]
    if upstream_jobs:
        for i, (theirs, mine) in enumerate(zip(upstream_jobs, ours)):
            theirs.slot, mine.slot = i % 2, (i + 1) % 2
    extras = [[our_job(args, backend, None, i + 1, out, budget) for i in range(repeat)] for backend in args.extra]
    if upstream_jobs:
        jobs = [j for pair in zip(upstream_jobs, ours) for j in pair] + [j for runs in extras for j in runs]
    else:  # our backends take turns, so that a drift of the machine's speed falls on each alike
        jobs = [j for turn in zip(ours, *extras) for j in turn]
    for i in range(variant_repeat):
        jobs += [our_job(args, VARIANTS[v].backend, v, i + 1, out, budget) for v in args.variant]
    return jobs


def warm_up(jobs, gpus, out, pin):
    """One short run of each trainer before the measured ones, left out of the table and of results.jsonl:
    it fills the compile caches, so that no measured run trains beside another's cold compile (which takes
    the host's cores: upstream's first 60-s run lost 17 of its ~198 steps beside ours, 2026-11-30)."""
    print(f"warm-up: {len(jobs)} run(s) of {jobs[0].budget:g} s, not in the table", flush=True)
    for row in run_all(jobs, gpus, out, None, timeout=jobs[0].budget + 900, pin=pin):
        if "error" in row:
            print(f"warm-up {row['name']} failed: {row['error']}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd")
    c = sub.add_parser("child", help=argparse.SUPPRESS)
    for flag in ("--canvas", "--backend", "--profile", "--budget", "--override"):
        c.add_argument(flag, required=True)
    pooled = sub.add_parser("table", help="one table over the results.jsonl files of earlier calls")
    pooled.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--backend", default="cuda", choices=["cuda", "jax"], help="our backend to compare")
    parser.add_argument("--profile", default="h100", help="our profile (h100 = upstream's constants)")
    parser.add_argument("--budget", type=float, default=60, help="training seconds of every run (upstream's too)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each kind")
    parser.add_argument("--gpus", default=os.environ.get("GPUS", "0"),
                        help="GPU indices to spread the runs over, e.g. 0,1 (side by side); '' = as visible")
    parser.add_argument("--data", default=os.environ.get("AUTORESEARCH_DATA"),
                        help="a folder of parquet shards (default: the downloaded climbmix shards)")
    parser.add_argument("--upstream", help="a folder with upstream's prepare.py and train.py (else fetched)")
    parser.add_argument("--no-upstream", action="store_true", help="run only our backend (and variants)")
    parser.add_argument("--variant", action="append", default=[], choices=sorted(VARIANTS),
                        help="also run this ablation of bench/ablations.py, on its backend (repeatable)")
    parser.add_argument("--variant-repeat", type=int, default=1, help="runs of each variant")
    parser.add_argument("--extra", action="append", default=[], choices=["cuda", "jax"],
                        help="also run this backend (e.g. jax beside cuda)")
    parser.add_argument("--warmup", type=float, default=0,
                        help="first a run of this many seconds of each trainer, not in the table (fills the caches)")
    parser.add_argument("--deadline", type=float, help="start no run that could end after this many seconds")
    parser.add_argument("--no-pin", action="store_true",
                        help="let side-by-side runs share all CPUs (by default each GPU's runs get their own share)")
    parser.add_argument("--out", default=str(REPO / "runs" / "anchor"), help="logs, results.jsonl and anchor.md")
    args = parser.parse_args()
    if args.cmd == "child":
        return child(args)
    if args.cmd == "table":
        return pooled_table(args.files)

    from common.prepare import prepare
    bytecode = allow_bytecode()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    prepare(args.data, if_needed=True)
    code = None if args.no_upstream else upstream_code(args.upstream)
    jobs = plan(args, code, out, args.budget, args.repeat, args.variant_repeat)
    for seed in sorted({VARIANTS[v].cuda_init for v in args.variant} - {None}):
        export_cuda_init(args, seed, cuda_init_path(out, seed))
    gpus = [g.strip() for g in args.gpus.split(",")]
    started = time.time()
    if args.warmup:
        warm_up(plan(args, code, out, args.warmup, 1, 1), gpus, out, not args.no_pin)
    deadline = args.deadline and max(args.deadline - (time.time() - started), 1e-3)
    t0 = datetime.datetime.now(datetime.timezone.utc)
    shares = None if args.no_pin else cpu_shares(len(gpus))
    heading = (f"bench-anchor {t0:%Y-%m-%d %H:%M} UTC | {machine()} | profile {args.profile}, budget {args.budget:g} s"
               f" | data {args.data or 'climbmix'} | upstream {'-' if args.no_upstream else UPSTREAM_COMMIT[:12]}"
               f" | {f'{len(shares[0])} CPU(s) per GPU' if shares else 'CPUs shared'}"
               f"{f' | {bytecode}' if bytecode else ''}")

    def record(row):
        with open(out / "results.jsonl", "a") as f:
            f.write(json.dumps(dict(row, heading=heading)) + "\n")

    rows = run_all(jobs, gpus, out, deadline, timeout=2 * args.budget + 600, record=record, pin=not args.no_pin)
    text = table(rows, heading)
    (out / "anchor.md").write_text(text + "\n")
    with tarfile.open(out / "logs.tar.gz", "w:gz") as tar:
        tar.add(out / "logs", arcname="logs")
    print("\n" + text)
    return 0 if all("val_bpb" in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(run_cli(main))
