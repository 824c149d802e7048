"""python bench/torch_cuda_draws.py check [--profile h100] [--seed 42]    (on an NVIDIA GPU; no data needed)

Whether the jax and mlx canvases start from the cuda canvas's initial weights: their init_weights draw on the host
with common/cuda_draws.py, which reproduces torch's CUDA draws, and this compares their weights for the seed with
the ones the cuda canvas draws on this GPU, tensor by tensor. Passes when every tensor is within 1e-5 x its sd.

Measured on an H200 (docs/notes/fidelity.md section 23): the uniform draws are bit-identical and the normal
ones (wte, lm_head) within 3.1e-6 x their sd. The GPU's sin and cos are its fast intrinsics (__sincosf,
absolute error about 2^-21), which numpy's do not reproduce bit for bit; a relative measure is no use near their
zeros, so the bound is on the absolute difference over the tensor's sd.
"""

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

TOLERANCE = 1e-5  # of each tensor's sd


def host_weights(config, seed):
    """{backend: the canvas's initial weights for config and seed, float32 on the host}, jax's and, where MLX is
    installed, mlx's."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the host's draws; the GPU stays torch's
    from anchor import load_canvas
    jx = load_canvas(REPO / "backends" / "jax" / "train.py", "jax")
    weights = {"jax": jx.export_weights(jx.build_model(jx.GPTConfig(**vars(config)), seed=seed, gpu=False))}
    if importlib.util.find_spec("mlx"):
        mx = load_canvas(REPO / "backends" / "mlx" / "train.py", "mlx")
        weights["mlx"] = mx.export_weights(mx.build_model(mx.GPTConfig(**vars(config)), seed=seed))
    return weights


def check(args):
    """On a GPU: the cuda canvas's draws for the seed against the host's (the jax and mlx canvases'). Exit 0
    if every tensor agrees within TOLERANCE x its sd."""
    import torch
    from anchor import load_canvas
    from common.platform import VOCAB_SIZE, get_profile
    t = load_canvas(REPO / "backends" / "cuda" / "train.py")
    profile = get_profile(args.profile)
    config = t.model_config(profile.depth, profile.max_seq_len, VOCAB_SIZE)  # the shapes alone: no data needed
    props = torch.cuda.get_device_properties(0)
    torch.manual_seed(args.seed)
    with torch.device("meta"):
        model = t.GPT(config)
    model.to_empty(device="cuda")
    model.init_weights()
    drawn = {n: p.detach().cpu().numpy() for n, p in model.named_parameters()}
    start = time.perf_counter()
    hosts = host_weights(config, args.seed)
    seconds = time.perf_counter() - start
    print(f"{props.name}: {props.multi_processor_count} multiprocessors x {props.max_threads_per_multi_processor} "
          f"threads; torch {torch.__version__}; seed {args.seed}; {args.profile} profile")
    print(f"host: {', '.join(hosts)} canvases built in {seconds:.2f} s")
    worst = 0.0
    for backend, host in hosts.items():
        print(f"\n| {backend} tensor | elements | bit-identical | max abs diff / sd | first values (the GPU's) |")
        print("|---|---:|---:|---:|---|")
        if set(host) != set(drawn):
            print(f"names differ: {sorted(set(host) ^ set(drawn))}")
            worst = float("inf")
        for name in sorted(set(host) & set(drawn)):
            want, got = drawn[name], host[name]
            diff = float(np.abs(got.astype(np.float64) - want).max()) / (float(want.std()) or 1.0)
            worst = max(worst, diff)
            print(f"| {name} | {want.size} | {np.mean(got == want):.4f} | {diff:.2g} | "
                  f"{' '.join(f'{v:.9g}' for v in want.reshape(-1)[:3])} |")
    print(f"\nworst difference: {worst:.3g} x sd (passes below {TOLERANCE:g})")
    return 0 if worst < TOLERANCE else 1


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["check"])
    parser.add_argument("--profile", default="h100")
    parser.add_argument("--seed", type=int, default=42)
    return check(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
