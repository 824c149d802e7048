"""Is the reference trainer's step deterministic on this GPU? (the run-to-run noise of issue 10)

    python bench/determinism.py [--steps 6] [--profile h100]

Builds backends/cuda/train.py's model at the profile's size twice from the same seed, takes the same optimizer
steps on the same batches (random tokens, the profile's device batch and accumulation), and compares every
step's loss and the final weights bit for bit, in three modes: as the trainer runs; under
torch.use_deterministic_algorithms(True, warn_only=True), which lists the operations without a deterministic
kernel instead of failing; and with the canvas's make_deterministic() (DETERMINISTIC = True: strict, SDPA
without cuDNN's attention so that FlashAttention's deterministic backward runs, and inductor choosing kernels
without timing them). Also the median step time of each, a first price of determinism. All in one process:
a difference between processes (kernel choices timed in each) shows only in whole runs, and so does the
price in a real run (bench/anchor.py --variant deterministic-kernels: 16 % of the tokens/s on an H200,
2026-11-30, where this script, then with the optimizer's Polar Express uncompiled, showed 7 %).
"""

import argparse
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")   # read when cuBLAS starts: needed for determinism
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import torch  # noqa: E402
from anchor import load_canvas  # noqa: E402


def trajectory(train, profile, steps, batches):
    """Losses of `steps` optimizer steps from the seed, the final weights, and the step times (s)."""
    config = train.model_config(profile.depth, profile.max_seq_len, profile.vocab_size)
    model = train.compile_model(train.build_model(config, "cuda"))
    optimizer = train.compile_optimizer(train.build_optimizer(model))  # as the trainer, on a GPU
    losses, times = [], []
    for step in range(steps):
        torch.cuda.synchronize()
        t0 = time.time()
        losses.append(train.train_step(model, optimizer, batches, 0.0, step).item())
        torch.cuda.synchronize()
        times.append(time.time() - t0)
    weights = torch.cat([p.detach().float().flatten() for p in model.parameters()])
    return losses, weights, times


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--profile", default="h100")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench/determinism.py measures the GPU's kernels: it needs an NVIDIA GPU.")
    from common.platform import get_profile
    profile = get_profile(args.profile)
    train = load_canvas(REPO / "backends" / "cuda" / "train.py")
    torch.set_float32_matmul_precision("high")
    from torch._inductor import config as inductor_config
    inductor_config.cpp.vec_isa_ok = False
    g = torch.Generator().manual_seed(0)
    accum = profile.total_batch_size // (profile.device_batch_size * profile.max_seq_len)
    batches = []
    for _ in range(accum):
        x = torch.randint(0, profile.vocab_size - 4, (profile.device_batch_size, profile.max_seq_len + 1), generator=g)
        batches.append((x[:, :-1].cuda(), x[:, 1:].cuda()))
    print(f"{torch.cuda.get_device_name()} | torch {torch.__version__} | profile {profile.name} | {args.steps} steps")
    # Each block is its own compiled region and the deterministic flag is a guard: without a reset the second
    # mode's recompiles hit dynamo's limit and some blocks would run eager (seen on an H200, 2026-11-30).
    torch._dynamo.config.recompile_limit = 64
    for mode in ("as the trainer runs", "deterministic algorithms, warn only", "make_deterministic()"):
        torch._dynamo.reset()
        if mode == "deterministic algorithms, warn only":
            torch.use_deterministic_algorithms(True, warn_only=True)
        elif mode == "make_deterministic()":
            train.make_deterministic()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                a = trajectory(train, profile, args.steps, batches)
                b = trajectory(train, profile, args.steps, batches)
            except RuntimeError as e:  # strict mode: an operation without a deterministic kernel
                print(f"{mode}: FAILED: {str(e).splitlines()[0][:300]}")
                continue
        same_weights = torch.equal(a[1], b[1])
        differ = (a[1] != b[1]).sum().item()
        print(f"{mode}: losses {'identical' if a[0] == b[0] else 'DIFFER'}, weights "
              f"{'identical' if same_weights else f'DIFFER in {differ:,} elements'}"
              f", median step {1000 * statistics.median(a[2][2:] + b[2][2:]):.1f} ms")
        print("   losses:", " ".join(f"{v:.6f}" for v in a[0]), "|", " ".join(f"{v:.6f}" for v in b[0]))
        for message in sorted({str(w.message).splitlines()[0][:160] for w in caught if "determinis" in str(w.message)}):
            print("   nondeterministic:", message)


if __name__ == "__main__":
    main()
