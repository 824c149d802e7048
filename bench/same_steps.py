"""python bench/same_steps.py [--steps 200] [--run cuda --run jax --run jax:VARIANT ...] [--gpus 0,1]
                             [--profile h100] [--data FOLDER] [--deadline SECONDS] [--out DIR]

Each --run (a backend, or backend:variant of bench/ablations.py) trains for exactly --steps optimizer steps,
from the same initial weights (the cuda backend's for --seed, exported on the GPU: upstream's draws) and on the same
batches (the loader's order), with the schedules on step progress (step / steps: the LR constant, then the
warmdown over the second half; weight decay to zero; the Muon momentum ramp by step), as a 60-s run's ~200
steps see them on the clock. Then every run's final weights are scored by both backends' evaluation (the
real evaluate_bpb, each backend's forward pass and kernels).

What bench/anchor.py cannot separate, this does: a budget in seconds gives each run the steps its GPU allows
(about 0.0006 val_bpb a step at 60 s), the schedule follows each run's clock, and a difference between two
backends may be in training or in evaluation. The table gives, per run: the median step time; the mean
training loss over the last quarter of the steps, and its mean paired difference from the first run's on the
same batches; val_bpb by the cuda evaluation and by the jax evaluation. A variant acts only through what the
model, the optimizer and train_step read (its edits must lie outside main(), which this does not run).
`--run jax-own-init` is jax from its canvas's own build_model for SEED (what its main() trains from): until
2026-12-01 jax.random's draws, the control for what the draws are worth; since then the host's reproduction of
torch's CUDA draws (common/cuda_draws.py), so on a GPU it checks that jax starts where cuda starts.

Runs go to the GPUs of --gpus in the order given, one at a time per GPU, each on its own share of the CPUs,
each in its own process (jax takes most of a GPU's memory); then the evaluations (--evaluations), one per GPU. A run that
could not end before --deadline (seconds from the start, leaving time for the evaluations) is skipped and
listed. Per-step losses and the table go to --out; the final weights stay there too (about 200 MB a run).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from ablations import VARIANTS, apply  # noqa: E402
from anchor import cpu_shares, export_cuda_init, load_canvas  # noqa: E402
from common.errors import ContractError, run_cli  # noqa: E402

EVAL_RESERVE_S = 75  # per evaluation at the end, each a fresh process with its compile
OWN_INIT = "jax-own-init"  # the one run that does not load the exported cuda weights: jax's build_model


def slug(run):
    """A run's name in file names: 'jax:jax-plain-head' -> 'jax-jax-plain-head'."""
    return run.replace(":", "-")


def canvas_for(run, out):
    """The path of run's canvas ('cuda', 'jax', 'jax-own-init' or 'backend:variant'), written under out/canvases."""
    backend, _, variant = ("jax", "", "") if run == OWN_INIT else run.partition(":")
    if backend not in ("cuda", "jax"):
        raise ContractError(f"--run {run!r}: the backend must be cuda or jax, as in 'jax' or 'jax:jax-plain-head' "
                            f"(or {OWN_INIT}).")
    text = (REPO / "backends" / backend / "train.py").read_text()
    if variant:
        v = VARIANTS.get(variant)
        if v is None or v.backend != backend:
            raise ContractError(f"--run {run!r}: bench/ablations.py has no {backend} variant {variant!r}; its "
                                f"{backend} variants are {sorted(n for n, x in VARIANTS.items() if x.backend == backend)}.")
        in_main = [f for f, _ in v.edits if text.find(f) > text.find("\ndef main(")]
        if in_main or v.profile:
            raise ContractError(f"--run {run!r}: the variant edits main() or the profile, which this harness does "
                                "not run (it drives the model, the optimizer and train_step itself). Use bench/"
                                "anchor.py for it.")
        text = apply(v, text)
    path = out / "canvases" / f"{slug(run)}.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def setup(args):
    """(profile, model config, accumulation steps, the training loader) for the stage processes."""
    from common.loader import make_loader
    from common.platform import get_profile
    from common.tokenizer import Tokenizer
    profile = get_profile(args.profile)
    t = load_canvas(REPO / "backends" / "cuda" / "train.py")  # the model's size, as both canvases compute it
    config = t.model_config(profile.depth, profile.max_seq_len, Tokenizer.load().vocab_size)
    accum = profile.total_batch_size // (profile.device_batch_size * profile.max_seq_len)
    return profile, config, accum, make_loader("train", profile.device_batch_size, profile.max_seq_len)


def take_steps(steps, accum, loader, step):
    """(the loss of each step, its wall time): step(batches, i) takes the i-th step's accum (inputs, targets)
    micro-batches as numpy arrays and returns its mean loss (a sync, so the time is the step's)."""
    losses, times = [], []
    for i in range(steps):
        t0 = time.time()
        losses.append(step([next(loader)[:2] for _ in range(accum)], i))
        times.append(time.time() - t0)
    return losses, times


def train_cuda(args, out, canvas):
    os.environ.setdefault("PYTORCH_ALLOC_CONF", "expandable_segments:True")
    import torch
    t = load_canvas(canvas)
    profile, config, accum, loader = setup(args)
    if t.DETERMINISTIC:
        t.make_deterministic()
    torch.set_float32_matmul_precision("high")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = t.build_model(config, device)
    t.import_weights(model, dict(np.load(out / "init.npz")))
    optimizer = t.build_optimizer(model)
    if device.type == "cuda":  # as the canvas's main()
        t.compile_model(model)
        t.compile_optimizer(optimizer)
        from torch._inductor import config as inductor_config
        inductor_config.cpp.vec_isa_ok = False
    put = lambda a: torch.from_numpy(a).to(device).long()  # noqa: E731

    def step(batches, i):
        return t.train_step(model, optimizer, [(put(x), put(y)) for x, y in batches], i / args.steps, i).item()

    losses, times = take_steps(args.steps, accum, loader, step)
    return losses, times, t.export_weights(model)


def train_jax(args, out, canvas, own_init=False):
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")
    import jax
    import jax.numpy as jnp
    from common.data import cache_dir
    jax.config.update("jax_compilation_cache_dir", str(cache_dir() / "jax"))  # as the canvas's main()
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    t = load_canvas(canvas, "jax")
    profile, config, accum, loader = setup(args)
    gpu = t.on_gpu()
    model = t.build_model(t.GPTConfig(**vars(config)), gpu=gpu)
    if not own_init:
        t.import_weights(model, dict(np.load(out / "init.npz")))
    modeldef, params = t.split_model(model)
    optimizer = t.build_optimizer(params, ortho_dtype=jnp.bfloat16 if gpu else jnp.float32)
    opt_state = optimizer.init(params)
    train_step = t.make_train_step(modeldef, optimizer)

    def step(batches, i):
        nonlocal params, opt_state
        batches = [(jax.device_put(x), jax.device_put(y)) for x, y in batches]
        params, opt_state, loss = train_step(params, opt_state, batches, i / args.steps, i)
        return float(loss)

    losses, times = take_steps(args.steps, accum, loader, step)
    return losses, times, t.export_weights(t.merge_model(modeldef, params))


def evaluate_all(args, out, backend):
    """{run: val_bpb} of every run's final weights (out/weights_<run>.npz, in --run's order) by `backend`'s
    evaluation, as its canvas's main() evaluates; out/eval_<backend>.json is rewritten after each."""
    from common.evaluate import evaluate_bpb
    from common.platform import get_profile
    from common.tokenizer import Tokenizer
    profile = get_profile(args.profile)
    names = [n for n in (slug(r) for r in args.run) if (out / f"weights_{n}.npz").exists()]
    if not names:
        return {}
    if backend == "cuda":
        import torch
        t = load_canvas(REPO / "backends" / "cuda" / "train.py")
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        config = t.model_config(profile.depth, profile.max_seq_len, Tokenizer.load().vocab_size)
        model = t.build_model(config, device)
        if device.type == "cuda":
            t.compile_model(model)

        def loss_fn(inputs, targets):  # the canvas's: grad mode on, so the compiled training graph is reused
            with t.autocast(device), torch.set_grad_enabled(device.type == "cuda"):
                return model(torch.from_numpy(inputs).to(device).long(),
                             torch.from_numpy(targets).to(device).long()).detach().float().cpu().numpy()
        load = lambda arrays: t.import_weights(model, arrays)  # noqa: E731
    else:
        os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")
        t = load_canvas(REPO / "backends" / "jax" / "train.py", "jax")
        config = t.model_config(profile.depth, profile.max_seq_len, Tokenizer.load().vocab_size)
        model = t.build_model(config)
        modeldef, _ = t.split_model(model)
        losses, state = t.make_loss_fn(modeldef), {}

        def loss_fn(inputs, targets):
            return np.asarray(losses(state["params"], inputs, targets))

        def load(arrays):
            t.import_weights(model, arrays)
            state["params"] = t.split_model(model)[1]
    scores = {}
    for name in names:
        load(dict(np.load(out / f"weights_{name}.npz")))
        scores[name] = evaluate_bpb(loss_fn, profile.device_batch_size, profile)
        print(f"{backend} evaluation: {name}: {scores[name]:.6f}", flush=True)
        (out / f"eval_{backend}.json").write_text(json.dumps(scores))


def stage(args):
    out = Path(args.out)
    if args.stage.startswith("eval-"):
        evaluate_all(args, out, args.stage[len("eval-"):])
        return 0
    run = args.stage[len("train-"):]
    canvas = canvas_for(run, out)
    if run.partition(":")[0] == "cuda":
        losses, times, weights = train_cuda(args, out, canvas)
    else:
        losses, times, weights = train_jax(args, out, canvas, own_init=run == OWN_INIT)
    name = slug(run)
    np.savez(out / f"weights_{name}.npz", **weights)
    (out / f"train_{name}.json").write_text(json.dumps(dict(run=run, losses=losses, step_s=times)))
    return 0


def run_stage(args, name, gpu, cpus, timeout):
    """One stage in its own process on one GPU; its log under out/logs. True if it succeeded."""
    out = Path(args.out)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--stage", name, "--steps", str(args.steps),
           "--profile", args.profile, "--out", str(out)] + [a for r in args.run for a in ("--run", r)]
    env = dict(os.environ, PYTHONUNBUFFERED="1", AUTORESEARCH_PROFILE=args.profile,
               AUTORESEARCH_BUDGET="3600",  # the loader's budget guard: these runs count steps, not seconds
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    if args.data:
        env["AUTORESEARCH_DATA"] = str(Path(args.data).resolve())
    if gpu != "":
        env["CUDA_VISIBLE_DEVICES"] = gpu
    log = out / "logs" / f"{slug(name)}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f, subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT) as proc:
        if cpus:
            os.sched_setaffinity(proc.pid, cpus)
        try:
            return proc.wait(timeout=max(timeout, 1)) == 0
        except subprocess.TimeoutExpired:
            proc.kill()
            return False


def run_on_gpus(args, names, gpus, end, reserve, log):
    """Each GPU takes the next stage when it is free. A stage starts only if it can end, as long as the longest
    stage so far took, with `reserve` seconds to spare before `end` (a time.time(), or None); else it is
    skipped. Returns {name: 'ok' | 'failed' | 'skipped'}."""
    lock, pending, status, longest = threading.Lock(), list(names), {}, [0.0]
    shares = cpu_shares(len(gpus))

    def worker(k, gpu):
        while True:
            with lock:
                if not pending:
                    return
                name = pending.pop(0)
            left = end - time.time() if end else 3600 + reserve
            if left < reserve + longest[0]:
                status[name] = "skipped"
                log(f"gpu {gpu}: {name}: skipped ({left:.0f} s left, the longest stage took {longest[0]:.0f} s)")
                continue
            log(f"gpu {gpu}: {name} ...")
            t0 = time.time()
            ok = run_stage(args, name, gpu, shares and shares[k], left - reserve + 60)
            with lock:
                longest[0] = max(longest[0], time.time() - t0)
            status[name] = "ok" if ok else "failed"
            log(f"gpu {gpu}: {name}: {status[name]}")

    threads = [threading.Thread(target=worker, args=(k, g)) for k, g in enumerate(gpus)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return status


def table(out, runs, steps):
    """The markdown table of the runs that trained, the first as the reference of the paired differences."""
    trained = [r for r in runs if (out / f"train_{slug(r)}.json").exists()]
    data = {r: json.loads((out / f"train_{slug(r)}.json").read_text()) for r in trained}
    scores = {b: json.loads(p.read_text()) if (p := out / f"eval_{b}.json").exists() else {} for b in ("cuda", "jax")}
    tail = slice(steps - max(steps // 4, 1), steps)
    lines = [f"same_steps: {steps} steps, the first run ({trained[0] if trained else '-'}) as reference",
             "", "| run | median step ms | train loss, last quarter | paired diff vs first | val_bpb (cuda eval) "
             "| val_bpb (jax eval) | val_bpb diff vs first |", "|---|---:|---:|---:|---:|---:|---:|"]
    ref = trained[0] if trained else None
    for r in trained:
        d, name = data[r], slug(r)
        loss = statistics.fmean(d["losses"][tail])
        paired = statistics.fmean(a - b for a, b in zip(d["losses"][tail], data[ref]["losses"][tail]))
        cu, jx = scores["cuda"].get(name), scores["jax"].get(name)
        by = scores["cuda"] if scores["cuda"] else scores["jax"]  # the cuda evaluation where it ran
        mine, first = by.get(name), by.get(slug(ref))
        show = lambda v, fmt: format(v, fmt) if v is not None else "-"  # noqa: E731
        lines.append(f"| {r} | {1000 * statistics.median(d['step_s'][2:] or d['step_s']):.0f} | {loss:.5f} | "
                     f"{paired:+.5f} | {show(cu, '.6f')} | {show(jx, '.6f')} | "
                     f"{show(mine - first if mine is not None and first is not None else None, '+.6f')} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--run", action="append", default=[],
                        help="cuda, jax, or backend:variant (repeatable; the first is the reference; default cuda, jax)")
    parser.add_argument("--gpus", default=os.environ.get("GPUS", "0"), help="e.g. 0,1; '' = as visible")
    parser.add_argument("--profile", default="h100", help="the model, batch and sequence length")
    parser.add_argument("--data", default=os.environ.get("AUTORESEARCH_DATA"))
    parser.add_argument("--seed", type=int, default=42, help="the cuda backend's initial weights for this seed")
    parser.add_argument("--deadline", type=float, help="seconds from the start within which to finish")
    parser.add_argument("--evaluations", default="cuda,jax", help="whose evaluations score the weights")
    parser.add_argument("--out", default=str(REPO / "runs" / "same_steps"))
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    args.out = str(out)
    if args.stage:
        return stage(args)
    from common.prepare import prepare
    prepare(args.data, if_needed=True)
    runs = args.run = args.run or ["cuda", "jax"]
    for run in runs:
        canvas_for(run, out)  # a bad --run fails here, before any training
    t0 = time.time()
    log = lambda msg: print(f"[{time.time() - t0:5.0f}s] {msg}", flush=True)  # noqa: E731
    gpus = [g.strip() for g in args.gpus.split(",")]
    if args.data:
        os.environ["AUTORESEARCH_DATA"] = str(Path(args.data).resolve())
    for stale in out.glob("*.json"):
        stale.unlink()
    for stale in out.glob("weights_*.npz"):
        stale.unlink()
    log(f"exporting the cuda backend's initial weights for seed {args.seed} ...")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if gpus[0] != "":  # export_cuda_init's process sees the first GPU only
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[0]
    export_cuda_init(args, args.seed, out / "init.npz")
    os.environ.pop("CUDA_VISIBLE_DEVICES", None)
    if visible is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = visible
    end = args.deadline and t0 + args.deadline
    evaluations = [f"eval-{b.strip()}" for b in args.evaluations.split(",")]
    if not set(evaluations) <= {"eval-cuda", "eval-jax"}:
        raise ContractError(f"--evaluations {args.evaluations!r}: name cuda, jax or both, as in cuda,jax.")
    status = run_on_gpus(args, [f"train-{r}" for r in runs], gpus, end, EVAL_RESERVE_S * len(evaluations), log)
    status.update(run_on_gpus(args, evaluations, gpus, end, 0, log))
    text = table(out, runs, args.steps)
    text += "\n\n" + ", ".join(f"{k}: {v}" for k, v in status.items())
    (out / "same_steps.md").write_text(text + "\n")
    print("\n" + text)
    return 0 if all(v == "ok" for v in status.values()) else 1


if __name__ == "__main__":
    sys.exit(run_cli(main))
