"""The jax canvas's loss head, plain and with LOSS_CHUNKS row groups: XLA's temporary memory for its forward and
backward pass at one micro-batch, from the compiled program's memory analysis (no run, no GPU needed).

    python bench/jax_head_memory.py [--batch 128] [--seq 2048] [--dim 512] [--vocab 8192] [--chunks 8 16]

The defaults are one micro-batch of the h100 profile's model in bf16. On a CPU this is XLA's CPU compiler's
buffer assignment, not the GPU's (which fuses differently): a guide to what LOSS_CHUNKS saves. On an H200 the
whole run's peak went from about 60 GB (plain) to 40.8 GB (8 groups; docs/notes/jax.md; ablation jax-plain-head).
"""

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from anchor import load_canvas  # noqa: E402


def temporaries_gib(loss_fn, *args):
    compiled = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1))).lower(*args).compile()
    return compiled.memory_analysis().temp_size_in_bytes / 2**30


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--chunks", type=int, nargs="+", default=[8, 16])
    args = parser.parse_args()
    train = load_canvas(REPO / "backends" / "jax" / "train.py", "jax")
    graphdef, state = nnx.split(train.LMHead(args.dim, args.vocab))
    x = jax.ShapeDtypeStruct((args.batch, args.seq, args.dim), jnp.bfloat16)
    y = jax.ShapeDtypeStruct((args.batch, args.seq), jnp.int32)
    print(f"LM head + loss, forward and backward, {args.batch} x {args.seq} tokens, D {args.dim}, V {args.vocab}, "
          f"bf16 | jax {jax.__version__} on {jax.default_backend()}")
    plain = temporaries_gib(lambda s, h, t: nnx.merge(graphdef, s)(h, t).mean(), state, x, y)
    print(f"plain (LOSS_CHUNKS = 1): {plain:6.2f} GiB of temporaries")
    weight = state["weight"][...]
    for chunks in args.chunks:
        gib = temporaries_gib(lambda w, h, t: train.chunked_mean_loss(h, w, t, chunks), weight, x, y)
        print(f"LOSS_CHUNKS = {chunks:<10} {gib:6.2f} GiB of temporaries")


if __name__ == "__main__":
    main()
