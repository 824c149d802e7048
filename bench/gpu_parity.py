"""python bench/gpu_parity.py [--steps 30] [--profile h100] [--data FOLDER] [--out DIR]

The cuda and jax trainers on one NVIDIA GPU, from the same initial weights (the cuda backend's for the seed, which are upstream's) and the same real
batches, at the h100 profile's model and batch, each in its own precision policy (bf16 autocast and
FlexAttention; bf16 compute and cuDNN attention). tests/parity proves the two compute alike in float32 on a
CPU; this asks whether they still do where they really train.

It prints, for each trainer:
- at the initial weights: the mean loss of the first batch, and every gradient's relative difference from the
  cuda trainer's (what bf16 alone does: a few 1e-3; a different computation: far more);
- the mean training loss of each of --steps optimizer steps, with the schedules run through in those steps
  (progress = step / steps: constant LR, then the warmdown to zero; the Muon momentum ramp by step), and the
  loss of one validation batch at the end;
- the scalar weights' (x0_lambdas, resid_lambdas) gradient at init, and their values after the first step and
  after the last. With the block outputs zero-initialised, the loss does not depend on them at init (the
  final RMSNorm removes any scale), so their first gradient is rounding noise, which AdamW's first step
  (g / (|g| + 1e-10)) turns into a full step of +-lr whatever its size: for x0_lambdas (lr 0.5) a jump from
  0.1 to 0.6 or to -0.4, its sign set by the initial draws and the kernels' rounding.
jax also runs from its own build_model's weights: until 2026-12-01 other draws from the same distributions
(jax.random), whose first step could move the scalars the other way; since then the host's reproduction of
torch's CUDA draws (common/cuda_draws.py), the cuda weights on a GPU to within 3.1e-6 x sd.

Each trainer runs in its own process (jax takes most of the GPU's memory for itself). Without a GPU (a check
of this script: --profile smoke) both run in float32 on the CPU, uncompiled, and jax with XLA's attention only.
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))


def setup(args):
    from anchor import load_canvas
    from common.platform import get_profile
    from common.prepare import prepare
    from common.tokenizer import Tokenizer
    prepare(args.data, if_needed=True)
    profile = get_profile(args.profile)
    cuda = load_canvas(REPO / "backends" / "cuda" / "train.py")
    config = cuda.model_config(profile.depth, profile.max_seq_len, Tokenizer.load().vocab_size)
    accum = profile.total_batch_size // (profile.device_batch_size * profile.max_seq_len)
    return profile, config, accum


def batches(profile, accum, steps):
    """steps x accum training micro-batches and one validation batch (the first B eval rows), numpy int32."""
    from common.evaluate import eval_rows
    from common.loader import make_loader
    B, T = profile.device_batch_size, profile.max_seq_len
    train = make_loader("train", B, T)
    xs, ys = zip(*[next(train)[:2] for _ in range(steps * accum)])
    val = eval_rows(profile)[:B]
    return np.stack(xs), np.stack(ys), val[:, :-1], val[:, 1:]


def run_cuda(args, out):
    import torch
    from anchor import load_canvas
    t = load_canvas(REPO / "backends" / "cuda" / "train.py")
    profile, config, accum = setup(args)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = t.build_model(config, device)
    np.savez(out / "init.npz", **t.export_weights(model))
    xs, ys, vx, vy = batches(profile, accum, args.steps)
    np.savez(out / "batches.npz", xs=xs, ys=ys, vx=vx, vy=vy)
    optimizer = t.build_optimizer(model)
    if device.type == "cuda":  # as the canvas's main()
        t.compile_model(model)
        t.compile_optimizer(optimizer)
    gpu = lambda a: torch.from_numpy(a).to(device).long()  # noqa: E731
    with t.autocast(device):
        loss0 = model(gpu(xs[0]), gpu(ys[0])).mean()
    loss0.backward()
    grads = {n: p.grad.float().cpu().numpy() for n, p in model.named_parameters()}
    np.savez(out / "cuda_grads.npz", **grads)
    model.zero_grad(set_to_none=True)
    losses, lambdas = [], []
    scalars = lambda: {n: p.detach().float().cpu().tolist() for n, p in model.named_parameters() if "lambdas" in n}  # noqa: E731
    for i in range(args.steps):
        micro = [(gpu(xs[i * accum + a]), gpu(ys[i * accum + a])) for a in range(accum)]
        losses.append(t.train_step(model, optimizer, micro, i / args.steps, i).item())
        if i in (0, args.steps - 1):
            lambdas.append(scalars())
    with t.autocast(device):
        val = model(gpu(vx), gpu(vy)).mean().item()
    return dict(loss0=loss0.item(), losses=losses, val=val, lambdas=lambdas,
                first_grads={n: g.tolist() for n, g in grads.items() if "lambdas" in n})


def run_jax(args, out, own_init=False):
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.9")
    import jax
    import jax.numpy as jnp
    from anchor import load_canvas
    t = load_canvas(REPO / "backends" / "jax" / "train.py", "jax")
    profile, config, accum = setup(args)
    dtype = jnp.bfloat16 if t.on_gpu() else jnp.float32
    model = t.GPT(t.GPTConfig(**vars(config)), dtype, "cudnn" if t.on_gpu() else "xla")
    if own_init:
        model.init_weights(t.SEED)
    else:
        t.import_weights(model, dict(np.load(out / "init.npz")))
    data = np.load(out / "batches.npz")
    xs, ys = data["xs"], data["ys"]
    modeldef, params = t.split_model(model)
    loss_at = lambda p, x, y: t.merge_model(modeldef, p)(x, y).mean()  # noqa: E731
    loss0, grads = jax.jit(jax.value_and_grad(loss_at))(params, xs[0], ys[0])
    want = dict(np.load(out / "cuda_grads.npz"))
    rel = {n: float(np.linalg.norm(np.asarray(g, np.float32) - want[n]) / (np.linalg.norm(want[n]) or 1.0))
           for n, g in grads.items()}
    optimizer = t.build_optimizer(params, ortho_dtype=dtype)
    opt_state = optimizer.init(params)
    train_step = t.make_train_step(modeldef, optimizer)
    losses, lambdas = [], []
    for i in range(args.steps):
        micro = [(xs[i * accum + a], ys[i * accum + a]) for a in range(accum)]
        params, opt_state, loss = train_step(params, opt_state, micro, i / args.steps, i)
        losses.append(float(loss))
        if i in (0, args.steps - 1):
            lambdas.append({n: np.asarray(p, np.float32).tolist() for n, p in params.items() if "lambdas" in n})
    val = float(jax.jit(loss_at)(params, data["vx"], data["vy"]))
    return dict(loss0=float(loss0), losses=losses, val=val, grad_rel=rel, lambdas=lambdas,
                first_grads={n: np.asarray(g, np.float32).tolist() for n, g in grads.items() if "lambdas" in n})


STAGES = ("cuda", "jax", "jax-own-init")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--profile", default="h100", help="its model, batch and sequence length")
    parser.add_argument("--data", default=os.environ.get("AUTORESEARCH_DATA"))
    parser.add_argument("--out", default=str(REPO / "runs" / "gpu_parity"))
    parser.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.data:  # for common's Tokenizer.load() and loaders, in this process and the stages
        os.environ["AUTORESEARCH_DATA"] = str(Path(args.data).resolve())
    if args.stage:
        result = run_cuda(args, out) if args.stage == "cuda" else run_jax(args, out, args.stage == "jax-own-init")
        (out / f"{args.stage}.json").write_text(json.dumps(result))
        return 0
    results = {}
    for stage in STAGES:
        print(f"{stage} ...", flush=True)
        cmd = [sys.executable, __file__, "--stage", stage, "--steps", str(args.steps), "--profile", args.profile,
               "--out", str(out)]
        if args.data:
            cmd += ["--data", args.data]
        if subprocess.run(cmd, cwd=REPO).returncode != 0:
            print(f"{stage} failed", flush=True)
            continue
        results[stage] = json.loads((out / f"{stage}.json").read_text())
    lines = ["| trainer | loss at init | " + " | ".join(f"step {i}" for i in range(0, args.steps, 5))
             + " | last step | val batch after |", "|---" * (4 + len(range(0, args.steps, 5))) + "|"]
    for stage, r in results.items():
        shown = " | ".join(f"{r['losses'][i]:.4f}" for i in range(0, args.steps, 5))
        lines.append(f"| {stage} | {r['loss0']:.5f} | {shown} | {r['losses'][-1]:.4f} | {r['val']:.4f} |")
    for stage, r in results.items():
        if stage == "jax":
            worst = sorted(r["grad_rel"].items(), key=lambda kv: -kv[1])
            lines.append(f"\n{stage}: gradient relative difference from cuda's at init, largest first: "
                         + ", ".join(f"{n} {v:.2e}" for n, v in worst[:12])
                         + f"; median {np.median(list(r['grad_rel'].values())):.2e}")
    for stage, r in results.items():
        lines.append(f"\n{stage} gradient at init: " + "; ".join(
            f"{n} " + " ".join(f"{v:+.1e}" for v in vs) for n, vs in sorted(r["first_grads"].items())))
        for when, values in zip(("after the first step", "after the last step"), r["lambdas"]):
            lines.append(f"\n{stage} {when}: " + "; ".join(
                f"{n} " + " ".join(f"{v:+.3f}" for v in vs) for n, vs in sorted(values.items())))
    text = "\n".join(lines)
    (out / "gpu_parity.md").write_text(text + "\n")
    print(text)
    return 0 if len(results) == len(STAGES) else 1


if __name__ == "__main__":
    sys.exit(main())
