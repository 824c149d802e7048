"""Where bf16 rounds in compiled code, on this machine's device: the expressions by which the canvases multiply
bf16 activations by float32 values (the mixing scalars, the rotary tables).

    python bench/rounding_points.py

Upstream and the cuda canvas multiply the bf16 residual stream by float32 scalars (`resid_lambdas[i] * x`);
until 2026-11-30 the cuda canvas cast float32 rotary tables with `.to(q.dtype)` (upstream stores its tables in
bf16, and so does the canvas now). Eager PyTorch rounds such an operand to bf16 before multiplying; inductor may
drop a cast that its compute type's upcast follows (torch._inductor.config.emulate_precision_casts is off by
default) and multiply by the float32 value. The jax canvas casts its rotary tables to bf16 explicitly (and cast
the mixing scalars so until 2026-11-30); XLA may remove such a cast pair too (xla_allow_excess_precision), or
fold a table computed inside the program into a bf16 constant. Each row says
which operand the compiled result was computed with: "bf16" (rounded first, as eager PyTorch), "float32" (as
if the cast were not there), or "neither".

torch's rows include "compiled, training": x requires grad, so forward and backward compile together, as the
canvas trains. These lone expressions drop the cast in either graph, but the cuda canvas's own training graph
keeps its float32 rotary tables' cast (docs/notes/fidelity.md section 19: the old and new tables give
bit-identical gradients), while its mixing scalars stay float32. What the compiler keeps depends on the whole
graph, so only the canvas itself answers for certain.
"""

import sys

import numpy as np

N = 1 << 14


def verdict(result, with_bf16, with_float32):
    """Which reference the result equals, bit for bit (all three are bf16 arrays as float32 numpy)."""
    if np.array_equal(result, with_float32) and not np.array_equal(result, with_bf16):
        return "float32"
    if np.array_equal(result, with_bf16) and not np.array_equal(result, with_float32):
        return "bf16"
    return "neither"


def torch_rows():
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, generator=g).bfloat16().to(device)
    scalar = torch.tensor(1.005, device=device)                 # a mixing scalar as upstream starts it
    table = (torch.rand(N, generator=g) * 2 - 1).to(device)      # values like cos and sin, float32

    def as_np(t):
        return t.float().cpu().numpy()

    def refs(operand):
        return (as_np((operand.bfloat16().float() * x.float()).bfloat16()),
                as_np((operand.float() * x.float()).bfloat16()))

    cases = [("scalar * x (upstream, cuda canvas)", lambda s, x: s * x, scalar),
             ("x * table.to(x.dtype) (cuda's rotary until 2026-11-30)", lambda t, x: x * t.to(x.dtype), table)]
    rows = []
    for name, fn, operand in cases:
        with_bf16, with_float32 = refs(operand)
        # "training": x requires grad, so forward and backward compile as one graph, as the canvas trains
        for mode, f, x_in in (("eager", fn, x), ("compiled", torch.compile(fn, dynamic=False), x),
                              ("compiled, training", torch.compile(fn, dynamic=False), x.clone().requires_grad_())):
            rows.append(("torch " + torch.__version__, device, mode, name,
                         verdict(as_np(f(operand, x_in).detach()), with_bf16, with_float32)))
    return rows


def jax_rows():
    import jax
    import jax.numpy as jnp

    bf16 = jnp.bfloat16
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=N), bf16)
    scalar = jnp.float32(1.005)
    table = jnp.asarray(rng.uniform(-1, 1, N), jnp.float32)
    computed = np.cos(np.arange(N, dtype=np.float32) * np.float32(0.01))  # what the program below computes

    def refs(operand):
        operand = jnp.asarray(operand, jnp.float32)
        xf = x.astype(jnp.float32)
        return (np.asarray((operand.astype(bf16).astype(jnp.float32) * xf).astype(bf16), np.float32),
                np.asarray((operand * xf).astype(bf16), np.float32))

    cases = [("scalar.astype(bf16) * x (jax's mix until 2026-11-30)", jax.jit(lambda s, x: s.astype(bf16) * x), (scalar, x), scalar),
             ("x * table.astype(bf16), table an argument", jax.jit(lambda t, x: x * t.astype(bf16)), (table, x), table),
             ("x * table.astype(bf16), table computed in the program (jax canvas's rotary)",
              jax.jit(lambda x: x * jnp.cos(jnp.arange(N, dtype=jnp.float32) * 0.01).astype(bf16)), (x,), computed)]
    device = jax.devices()[0].device_kind if jax.default_backend() == "gpu" else "cpu"
    rows = []
    for name, f, args, operand in cases:
        with_bf16, with_float32 = refs(operand)
        rows.append(("jax " + jax.__version__, device, "jit", name,
                     verdict(np.asarray(f(*args), np.float32), with_bf16, with_float32)))
    return rows


def main():
    rows = []
    for probe in (torch_rows, jax_rows):
        try:
            rows += probe()
        except ImportError as e:
            print(f"skipped {probe.__name__}: {e}", file=sys.stderr)
    print("| framework | device | mode | expression | the operand it multiplied by |")
    print("|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
