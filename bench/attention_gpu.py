"""The cuda canvas's attention paths, forward + backward, one h100-profile layer call each, on a GPU.

    python bench/attention_gpu.py [--batch 128] [--heads 4] [--seq 2048] [--head-dim 128] [--reps 20]
    python bench/attention_gpu.py --tune [--shard 0/2]      # FlexAttention's kernel options, one by one
    python bench/attention_gpu.py --variant flash-window-attention   # also a bench/ablations.py variant's windows
    python bench/attention_gpu.py --jax [--implementation cudnn]      # the jax canvas's attention instead

Times (CUDA events, median of --reps after 3 warm-ups, compiled as in training) and checks against float64
dense attention (on the first 2 sequences):
- full causal: SDPA (cuDNN), the 'L' layers;
- half window, flex: FlexAttention with the tile-built block mask, the 'S' layers;
- half window, each --variant: the attention() of the canvas with that variant's edits.
(Commit 6d4e4b2 also timed HalfWindowAttention, the window as three causal cuDNN calls merged by log-sum-exp:
docs/notes/cuda.md has why it left the canvas.)
--tune times the windowed flex call under each entry of TUNE (Triton tile sizes, pipeline stages and warps for
the forward and the backward, and two flags that keep the numerics), each compiled on its own; --shard i/n
takes every n-th entry, so two GPUs can split the list. "default" is what torch picks by itself.
--jax times the jax canvas's attention() instead, both calls, jitted (jax.nn.dot_product_attention with cuDNN, as
the GPU trains, or --implementation xla): is cuDNN's sliding window as fast per unit of work as its full-causal
kernel, where FlexAttention's runs at about half? (No float64 check there: docs/notes/jax.md has cuDNN's errors.)
TFLOP/s counts the work inside the mask: 4 FLOPs forward and 10 backward per query-key pair, head and head
dimension.
"""

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from ablations import VARIANTS, apply  # noqa: E402
from anchor import load_canvas  # noqa: E402


def dense(q, k, v, window):
    q, k, v = q.double(), k.double(), v.double()
    i = torch.arange(q.size(2), device=q.device)
    dist = i[:, None] - i[None, :]
    scores = (q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))).masked_fill(~((dist >= 0) & (dist <= window)), -math.inf)
    return torch.softmax(scores, dim=-1) @ v


def time_ms(fn, reps):
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def fwd(block_m, block_n, stages, warps):
    return dict(fwd_BLOCK_M=block_m, fwd_BLOCK_N=block_n, fwd_num_stages=stages, fwd_num_warps=warps)


def bwd(m1, n1, m2, n2, stages, warps):
    return dict(bwd_BLOCK_M1=m1, bwd_BLOCK_N1=n1, bwd_BLOCK_M2=m2, bwd_BLOCK_N2=n2, bwd_num_stages=stages,
                bwd_num_warps=warps)


# torch's own sm90 choice for bf16, head dim 128 (torch/_inductor/template_heuristics/triton.py):
# forward (128, 64, 3 stages, 8 warps), backward (64, 128, 128, 64, 3 stages, 8 warps). Each entry pairs a forward
# and a backward candidate; the two are timed apart (forward alone, then forward + backward).
TUNE = [
    {},
    dict(ROWS_GUARANTEED_SAFE=True),  # every query sees at least its own key, so no row is fully masked
    dict(USE_TMA=True),
    {**fwd(128, 128, 3, 8), **bwd(64, 128, 128, 64, 3, 4)},
    {**fwd(128, 128, 2, 8), **bwd(64, 128, 128, 64, 2, 8)},
    {**fwd(128, 64, 3, 4), **bwd(64, 64, 64, 64, 3, 4)},
    {**fwd(64, 128, 3, 4), **bwd(32, 128, 128, 32, 3, 4)},
    {**fwd(128, 64, 4, 8), **bwd(64, 64, 64, 64, 4, 4)},
    {**fwd(64, 64, 3, 4), **bwd(32, 64, 64, 32, 3, 4)},
    {**fwd(128, 128, 1, 8), **bwd(128, 128, 128, 128, 1, 8)},
    {**fwd(128, 64, 2, 8), **bwd(64, 128, 128, 64, 4, 8)},
    {**fwd(64, 128, 3, 8), **bwd(32, 128, 128, 32, 4, 8)},
]


def tune(train, q, k, v, grad, window, reps, shard):
    """Each TUNE entry (every shard[1]-th from shard[0]) compiled alone and timed; failures are printed and skipped."""
    from torch.nn.attention.flex_attention import flex_attention
    index, count = shard
    T = q.size(2)
    mask = train.sliding_block_mask(T, window, q.device)
    small = [t.detach()[:2].requires_grad_() for t in (q, k, v)]
    ref_in = [t.detach().double().requires_grad_() for t in small]
    ref = dense(*ref_in, window)
    ref_grads = torch.autograd.grad(ref, ref_in, grad[:2].double())
    for n, options in enumerate(TUNE):
        if n % count != index:
            continue
        torch._dynamo.reset()
        fn = torch.compile(lambda q, k, v: flex_attention(q, k, v, block_mask=mask, kernel_options=dict(options)))
        try:
            f = time_ms(lambda: fn(q, k, v), reps)
            both = time_ms(lambda: torch.autograd.grad(fn(q, k, v), (q, k, v), grad), reps)
            out = fn(*small)
            grads = torch.autograd.grad(out, small, grad[:2])
        except Exception as e:  # a tile too large for shared memory fails to compile or launch
            print(f"tune {n:2d} FAILED {type(e).__name__}: {str(e).splitlines()[0][:150]} | {options or 'default'}",
                  flush=True)
            continue
        err = max(((a.double() - b).norm() / b.norm()).item() for a, b in zip((out, *grads), (ref, *ref_grads)))
        print(f"tune {n:2d} fwd {f:6.3f} ms | bwd {both - f:6.3f} ms | both {both:6.3f} ms | max rel err {err:.1e} "
              f"| {options or 'default'}", flush=True)


def time_jax(args):
    """The jax canvas's attention, full causal and half window: median ms of --reps jitted calls, forward and both."""
    import jax
    import jax.numpy as jnp
    train = load_canvas(REPO / "backends" / "jax" / "train.py", backend="jax")
    B, H, T, D, impl = args.batch, args.heads, args.seq, args.head_dim, args.implementation
    print(f"{jax.devices()[0].device_kind} | jax {jax.__version__} | B {B}, H {H}, T {T}, hd {D}, bf16, {impl}")
    q, k, v, g = (jax.random.normal(key, (B, T, H, D), jnp.bfloat16) for key in jax.random.split(jax.random.key(0), 4))
    for name, window in (("full causal", T), ("half window", T // 2)):
        def call(q, k, v, window=window):
            return train.attention(q, k, v, window, impl)
        times = {}
        for what, fn in (("fwd", jax.jit(call)), ("both", jax.jit(lambda q, k, v: jax.vjp(call, q, k, v)[1](g)))):
            for _ in range(3):
                jax.block_until_ready(fn(q, k, v))
            samples = []
            for _ in range(args.reps):
                t0 = time.perf_counter()
                jax.block_until_ready(fn(q, k, v))
                samples.append(1000 * (time.perf_counter() - t0))
            times[what] = statistics.median(samples)
        flops = 14 * sum(min(i, window) + 1 for i in range(T)) * D * B * H
        print(f"{name:12s} fwd {times['fwd']:6.2f} ms | bwd {times['both'] - times['fwd']:6.2f} ms | "
              f"fwd+bwd {times['both']:6.2f} ms {flops / times['both'] / 1e9:6.0f} TFLOP/s", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--tune", action="store_true", help="time the windowed flex call under each TUNE entry")
    parser.add_argument("--shard", default="0/1", help="i/n: with --tune, every n-th entry from the i-th")
    parser.add_argument("--variant", action="append", default=[], choices=sorted(VARIANTS),
                        help="also time the windows of the canvas with this variant's edits")
    parser.add_argument("--jax", action="store_true", help="time the jax canvas's attention instead")
    parser.add_argument("--implementation", default="cudnn", help="with --jax: jax.nn.dot_product_attention's")
    args = parser.parse_args()
    if args.jax:
        return time_jax(args)
    train = load_canvas(REPO / "backends" / "cuda" / "train.py")
    B, H, T, D, w = args.batch, args.heads, args.seq, args.head_dim, args.seq // 2
    dev = torch.device("cuda")
    print(f"{torch.cuda.get_device_name()} | torch {torch.__version__} | B {B}, H {H}, T {T}, hd {D}, bf16")
    # The model's layout: (B, T, H, D) tensors seen as (B, H, T, D).
    q, k, v = [torch.randn(B, T, H, D, device=dev, dtype=torch.bfloat16).transpose(1, 2).requires_grad_()
               for _ in range(3)]
    grad = torch.randn(B, H, T, D, device=dev, dtype=torch.bfloat16)
    train.sliding_block_mask(T, w, dev)  # built before torch.compile traces attention, as build_model does
    if args.tune:
        return tune(train, q, k, v, grad, w, args.reps, tuple(int(x) for x in args.shard.split("/")))
    paths = {  # name: (window, compiled call, the canvas's attention for the window probe)
        "full causal, SDPA (cuDNN)": (T, torch.compile(lambda q, k, v: train.attention(q, k, v, T)), None),
        "half window, flex": (w, torch.compile(lambda q, k, v: train.attention(q, k, v, w)), train.attention),
    }
    for name in args.variant:
        path = Path(tempfile.gettempdir()) / f"attention_gpu_{name}.py"
        path.write_text(apply(VARIANTS[name], (REPO / "backends" / "cuda" / "train.py").read_text()))
        variant = load_canvas(path, backend=f"cuda_{name.replace('-', '_')}")
        variant.build_model(variant.tiny_config(), dev)  # what build_model prepares for attention (ops, masks)
        paths[f"half window, {name}"] = (w, torch.compile(lambda q, k, v, f=variant.attention: f(q, k, v, w)),
                                         variant.attention)
    small = [t.detach()[:2].requires_grad_() for t in (q, k, v)]
    for name, (window, fn, attention) in paths.items():
        pairs = sum(min(i, window) + 1 for i in range(T))
        flops = 14 * pairs * D * B * H
        fwd = time_ms(lambda: fn(q, k, v), args.reps)
        both = time_ms(lambda: torch.autograd.grad(fn(q, k, v), (q, k, v), grad), args.reps)
        out = fn(*small)
        grads = torch.autograd.grad(out, small, grad[:2])
        ref_in = [t.detach().double().requires_grad_() for t in small]
        ref = dense(*ref_in, window)
        ref_grads = torch.autograd.grad(ref, ref_in, grad[:2].double())
        errs = [((a.double() - b).norm() / b.norm()).item() for a, b in zip((out, *grads), (ref, *ref_grads))]
        print(f"{name:28s} fwd {fwd:6.2f} ms | bwd {both - fwd:6.2f} ms | fwd+bwd {both:6.2f} ms "
              f"{flops / both / 1e9:6.0f} TFLOP/s | rel err out {errs[0]:.1e}, dq {errs[1]:.1e}, dk {errs[2]:.1e}, "
              f"dv {errs[3]:.1e}", flush=True)
        if attention is not None:
            window_probe(attention, D, dev)


def window_probe(attention, head_dim, dev, T=256, window=16):
    """A window off by one key is lost in bf16 noise at w = 1024; at w = 16 it is one key in 17. The path's
    output (eager, w = 16) against float64 attention with windows of 15, 16 and 17 keys back: the smallest error
    must be at 16."""
    q, k, v = [torch.randn(2, T, 2, head_dim, device=dev, dtype=torch.bfloat16).transpose(1, 2) for _ in range(3)]
    out = attention(q, k, v, window).double()
    refs = [dense(q, k, v, w) for w in (window - 1, window, window + 1)]
    errs = [((out - ref).norm() / ref.norm()).item() for ref in refs]
    verdict = "ok" if errs[1] < min(errs[0], errs[2]) else "WRONG WINDOW"
    print(f"{'':28s} window probe (w {window}): rel err against w-1 {errs[0]:.1e}, w {errs[1]:.1e}, w+1 {errs[2]:.1e}: "
          f"{verdict}", flush=True)


if __name__ == "__main__":
    main()
