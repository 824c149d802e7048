"""python bench/torch_cuda_draws.py check [--profile h100] [--seed 42]    (on an NVIDIA GPU; no data needed)

The cuda canvas's initial weights for a seed, drawn on the host with numpy the way torch draws them on a CUDA
device, so that another backend could start from upstream's weights without torch or a GPU (issue 10: jax's own
draws cost it about 0.001 at 60 s, docs/notes/fidelity.md section 22). NOT WIRED INTO ANY BACKEND: `check`
compares it with the canvas's real build on a GPU, and until that has been run and recorded, it is a candidate.

How torch draws (torch 2.11's ATen/native/cuda/DistributionTemplates.h and cuRAND's curand_kernel.h):
- torch.manual_seed(seed) gives the CUDA generator that seed and Philox offset 0. Each normal_ / uniform_ call
  takes the current offset and advances it by ((numel - 1) // (256 * grid * 4) + 1) * 4, where the launch has
  blocks of 256 threads and grid = min(ceil(numel / 256), multiprocessors * (threads per multiprocessor // 256))
  blocks: the layout depends on the GPU (132 multiprocessors of 2048 threads on an H100 and an H200).
- Thread t runs Philox4x32-10 with key = seed and counter (offset // 4 + k, t) at its k-th pass and writes its
  four outputs to elements t + stride * (4k + i), i = 0..3, stride = 256 * grid: so the element order is simply
  (k, i, t), row by row.
- uniform: u = float(x) * 2^-32 + 2^-33 in (0, 1]; the weight is fma(u, to - from, from), with to mapped to from.
  normal: Box-Muller on each pair of outputs, sqrt(-2 log u1) times (sin, cos)(2 pi u2), times std.

What cannot be reproduced bit for bit: the GPU's sin and cos are its fast intrinsics (__sincosf, absolute error
about 2^-21 on [-pi, pi]) and its logf may differ from numpy's in the last bit, so normal draws agree to about
1e-6 relative, not exactly. The uniform draws involve only exact scalings and one fused multiply-add.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

M0, M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)  # Philox4x32 multipliers
W0, W1 = 0x9E3779B9, 0xBB67AE85                          # and key increments
LOW = np.uint64(0xFFFFFFFF)
H100_LAYOUT = (132, 2048)  # multiprocessors, threads per multiprocessor (an H200 has the same)


def philox4x32_10(c0, c1, c2, c3, key):
    """Philox4x32-10 (Salmon et al. 2011, as cuRAND computes it) over arrays of 32-bit counter words held in
    uint64; key (k0, k1) are Python ints. Returns the four output words as uint64 arrays."""
    k0, k1 = key
    for r in range(10):
        p0, p1 = M0 * c0, M1 * c2
        c0, c1, c2, c3 = ((p1 >> 32) ^ c1 ^ np.uint64(k0)), p1 & LOW, ((p0 >> 32) ^ c3 ^ np.uint64(k1)), p0 & LOW
        k0, k1 = (k0 + W0) & 0xFFFFFFFF, (k1 + W1) & 0xFFFFFFFF
    return c0, c1, c2, c3


class CudaGenerator:
    """torch's default CUDA generator after torch.manual_seed(seed), on a GPU of the given layout."""

    def __init__(self, seed, layout=H100_LAYOUT, fused=True):
        self.seed, self.offset = seed, 0
        self.multiprocessors, self.threads_per_multiprocessor = layout
        self.fused = fused  # whether nvcc fused a * b + c into one rounding (its default), or rounded twice

    def raw(self, numel):
        """The 32-bit words one normal_ / uniform_ call of numel elements draws, shaped (passes, 4, stride):
        word [k, i, t] is thread t's i-th output at pass k, for element 4 * stride * k + stride * i + t (those
        past numel are drawn and not written). Advances the offset as torch does."""
        grid = min(-(-numel // 256), self.multiprocessors * (self.threads_per_multiprocessor // 256))
        stride = 256 * grid
        passes = (numel - 1) // (stride * 4) + 1
        k = np.arange(passes, dtype=np.uint64)[:, None] + np.uint64(self.offset // 4)
        t = np.arange(stride, dtype=np.uint64)[None, :]
        words = philox4x32_10(k & LOW, k >> 32, t & LOW, t >> 32, (self.seed & 0xFFFFFFFF, self.seed >> 32))
        self.offset += passes * 4
        return np.stack(np.broadcast_arrays(*words), axis=1).astype(np.uint32)

    def uniform(self, shape, low, high):
        numel = int(np.prod(shape))
        u = unit(self.raw(numel)).reshape(-1)[:numel]
        low32, high32 = np.float32(low), np.float32(high)
        value = self.multiply_add(u, high32 - low32, low32)
        return np.where(value == high32, low32, value).reshape(shape)

    def normal(self, shape, std, mean=0.0):
        numel = int(np.prod(shape))
        w = self.raw(numel)
        out = np.empty(w.shape, np.float32)
        step = np.float32(2.0**-32) * np.float32(6.2831855)
        for i in (0, 2):  # Box-Muller on each thread's words (i, i + 1): (sin, cos) of the second, scaled
            s = np.sqrt(np.float32(-2.0) * np.log(unit(w[:, i])))
            v = self.multiply_add(w[:, i + 1].astype(np.float32), step, step / 2)
            out[:, i], out[:, i + 1] = np.sin(v) * s, np.cos(v) * s
        return self.multiply_add(out.reshape(-1)[:numel], np.float32(std), np.float32(mean)).reshape(shape)

    def multiply_add(self, a, b, c):
        """a * b + c of float32 values: computed exactly in float64 and rounded once (a fused multiply-add; float64
        holds a float32 product exactly), or with the product rounded to float32 first."""
        a, b, c = (np.asarray(x, np.float32) for x in (a, b, c))
        if self.fused:
            return (a.astype(np.float64) * b.astype(np.float64) + c.astype(np.float64)).astype(np.float32)
        return a * b + c


def unit(words):
    """cuRAND's uniform float in (0, 1]: float(x) * 2^-32 + 2^-33, the scaling exact, rounded once."""
    return (words.astype(np.float32).astype(np.float64) * 2.0**-32 + 2.0**-33).astype(np.float32)


def canvas_initial_weights(config, seed, layout=H100_LAYOUT, fused=True):
    """The cuda canvas's init_weights for `config` and `seed` (the canvas's export_weights names), drawn here:
    the same distributions in the same order as GPT.init_weights in backends/cuda/train.py."""
    gen = CudaGenerator(seed, layout, fused)
    L, D, V = config.n_layer, config.n_embd, config.vocab_size
    s = 3**0.5 * D**-0.5
    w = {"wte.weight": gen.normal((V, D), 1.0), "lm_head.weight": gen.normal((V, D), 0.001)}
    ve_layers = [i for i in range(L) if i % 2 == (L - 1) % 2]
    n_head = config.n_head
    for i in range(L):
        for name, shape in (("attn.c_q", (D, D)), ("attn.c_k", (D, D)), ("attn.c_v", (D, D)), ("mlp.c_fc", (4 * D, D))):
            w[f"blocks.{i}.{name}.weight"] = gen.uniform(shape, -s, s)
        w[f"blocks.{i}.attn.c_proj.weight"] = np.zeros((D, D), np.float32)
        w[f"blocks.{i}.mlp.c_proj.weight"] = np.zeros((D, 4 * D), np.float32)
        if i in ve_layers:
            w[f"blocks.{i}.attn.ve_gate.weight"] = np.zeros((n_head, 32), np.float32)
    for i in ve_layers:
        w[f"value_embeds.{i}.weight"] = gen.uniform((V, D), -s, s)
    w["resid_lambdas"] = np.full(L, 1.005, np.float32)
    w["x0_lambdas"] = np.full(L, 0.6, np.float32)
    return w


def check(args):
    """On a GPU: the canvas's draws for the seed (build_model's steps before store_in_bf16 rounds the tables)
    against canvas_initial_weights, tensor by tensor. Exit 0 if every tensor agrees to 1e-4 relative."""
    import torch
    from anchor import load_canvas
    from common.platform import VOCAB_SIZE, get_profile
    t = load_canvas(REPO / "backends" / "cuda" / "train.py")
    profile = get_profile(args.profile)
    config = t.model_config(profile.depth, profile.max_seq_len, VOCAB_SIZE)  # the shapes alone: no data needed
    props = torch.cuda.get_device_properties(0)
    layout = (props.multi_processor_count, props.max_threads_per_multi_processor)
    torch.manual_seed(args.seed)
    with torch.device("meta"):
        model = t.GPT(config)
    model.to_empty(device="cuda")
    model.init_weights()
    drawn = {n: p.detach().cpu().numpy() for n, p in model.named_parameters()}
    built = t.export_weights(t.build_model(config, "cuda", seed=args.seed))  # what training starts from
    rounded = lambda a: torch.from_numpy(a).bfloat16().float().numpy()  # noqa: E731
    same = all(np.array_equal(built[n], a) or np.array_equal(built[n], rounded(a)) for n, a in drawn.items())
    start = time.perf_counter()
    mine = canvas_initial_weights(config, args.seed, layout)
    seconds = time.perf_counter() - start
    unfused = canvas_initial_weights(config, args.seed, layout, fused=False)  # which rounding nvcc did, if exact
    print(f"{props.name}: {layout[0]} multiprocessors x {layout[1]} threads; torch {torch.__version__}; seed {args.seed}")
    print(f"host draws: {sum(a.size for a in mine.values()):,} values in {seconds:.2f} s")
    print(f"build_model's weights are these draws (the tables rounded to bf16): {same}")
    print("| tensor | elements | exactly equal, fused / unfused | max abs diff | max rel diff (|x| > 1e-3 x sd) |")
    print("|---|---:|---:|---:|---:|")
    worst = 0.0 if same and set(mine) == set(drawn) else float("inf")
    for name in sorted(drawn):
        want, got = drawn[name], mine.get(name)
        if got is None or got.shape != want.shape:
            print(f"| {name} | missing or shape {None if got is None else got.shape} against {want.shape} | | | |")
            worst = float("inf")
            continue
        diff = np.abs(got.astype(np.float64) - want)
        scale = np.abs(want).astype(np.float64)
        big = scale > 1e-3 * (want.std() or 1.0)
        rel = float((diff[big] / scale[big]).max()) if big.any() else 0.0
        worst = max(worst, rel)
        print(f"| {name} | {want.size} | {np.mean(got == want):.4f} / {np.mean(unfused[name] == want):.4f} | "
              f"{diff.max():.3g} | {rel:.3g} |")
    print(f"worst relative difference: {worst:.3g}")
    return 0 if worst < 1e-4 else 1


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["check"])
    parser.add_argument("--profile", default="h100")
    parser.add_argument("--seed", type=int, default=42)
    return check(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
