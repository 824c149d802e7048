"""How far the cuda canvas's bf16 gradients are from float64's, by compilation mode, and the jax canvas's
(issue 10).

    python bench/grad_precision.py [--modes eager,regional,whole,jax] [--depth 8] [--seq-len 2048] [--batch 8]
    python bench/grad_precision.py --variant whole-model-graph ...   # a bench/ablations.py variant's canvas

One batch, one set of weights, one forward and backward per mode, each mode's gradients set against the same
model's in float64 (no autocast, the same bf16-valued embeddings): the relative error (Frobenius norm) per
parameter group, and the loss (the reference is always the unmodified canvas's model: a variant's casts
are what is measured). Modes, all in bf16 as the trainer runs on a GPU (autocast, bf16 embeddings):
- eager: no compilation;
- regional: the canvas's compile_model (the embedding, each block and the head compiled on their own);
- whole: the whole model compiled as one graph, as upstream's train.py does;
- jax: backends/jax/train.py's model in bf16 over the same weights (exchanged by name), its embeddings stored in
  bf16 as on a GPU, jitted.
A variant of the jax backend changes the jax mode's canvas; any other changes the cuda modes'.

The weights are the canvas's initial ones with the output projections and value-embedding gates drawn small
but non-zero (at init they are zero, which makes most gradients trivial), as after some training.

Runs on a GPU, or on a CPU (slowly; inductor fuses there too, in its own way).
"""

import argparse
import copy
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from anchor import load_canvas  # noqa: E402
from ablations import VARIANTS, apply  # noqa: E402

GROUPS = ["wte.weight", "value_embeds.", "lm_head.weight", "resid_lambdas", "x0_lambdas", "blocks.0.",
          "blocks.{mid}.", "blocks.{last}."]


MODES = ("eager", "regional", "whole", "jax")


def load(variant, scratch, backend="cuda"):
    path = REPO / "backends" / backend / "train.py"
    if variant:
        scratch.mkdir(parents=True, exist_ok=True)
        copy_path = scratch / f"train_{variant}.py"
        copy_path.write_text(apply(VARIANTS[variant], path.read_text()))
        path = copy_path
    return load_canvas(path, backend)


def perturbed_model(canvas, config, device, seed):
    """The canvas's model on device (as the trainer builds it: bf16 embeddings on a GPU), its output projections
    and gates non-zero, its embeddings bf16-valued on a CPU too."""
    model = canvas.build_model(config, device, seed=seed)
    g = torch.Generator(device="cpu").manual_seed(seed + 1)
    s = 3**0.5 * config.n_embd**-0.5
    with torch.no_grad():
        for block in model.blocks:
            for w, scale in ((block.attn.c_proj.weight, s / 2), (block.mlp.c_proj.weight, s / 4)):
                w.copy_((torch.rand(w.shape, generator=g) * 2 - 1) * scale)
            if block.attn.ve_gate is not None:
                w = block.attn.ve_gate.weight
                w.copy_((torch.rand(w.shape, generator=g) * 2 - 1) * 0.1)
        for emb in (model.wte, *model.value_embeds.values()):
            emb.weight.copy_(emb.weight.bfloat16())
    return model


def gradients(model, x, y, autocast):
    model.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
        loss = model(x, y).mean()
    loss.backward()
    return {n: p.grad.detach().double().cpu() for n, p in model.named_parameters()}, loss.item()


def jax_gradients(canvas, config, weights, x, y):
    """The jax canvas's gradients in bf16 as on a GPU (bf16 compute, bf16-stored embeddings) for the same weights
    and batch, as float64 tensors by reference name, and its loss; the first call compiles."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    model = canvas.GPT(canvas.GPTConfig(**asdict(config)), jnp.bfloat16, "xla")
    canvas.import_weights(model, weights)
    canvas.store_embeddings(model, jnp.bfloat16)
    modeldef, params = canvas.split_model(model)
    step = jax.jit(jax.value_and_grad(lambda p, x, y: canvas.merge_model(modeldef, p).mean_loss(x, y)))
    x, y = (jnp.asarray(t.cpu().numpy(), jnp.int32) for t in (x, y))
    step(params, x, y)
    loss, grads = step(params, x, y)
    return {n: torch.from_numpy(np.asarray(g, np.float64)) for n, g in grads.items()}, float(loss)


def relative_errors(grads, reference, groups):
    out = {}
    for group in groups:
        names = [n for n in reference if n.startswith(group)]
        num = sum(float(((grads[n] - reference[n]) ** 2).sum()) for n in names)
        den = sum(float((reference[n] ** 2).sum()) for n in names)
        out[group] = (num / den) ** 0.5 if den else float("nan")
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", default="eager,regional,whole", help=f"comma-separated: {', '.join(MODES)}")
    parser.add_argument("--variant", choices=sorted(VARIANTS), help="run a bench/ablations.py variant's canvas")
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--dim", type=int, default=512, help="model width (head_dim 128)")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the numbers here")
    args = parser.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = set(modes) - set(MODES)
    if unknown:
        parser.error(f"unknown mode(s) {sorted(unknown)}: choose from {', '.join(MODES)}")

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # The reference is the unmodified canvas's math in float64 (a variant may cast to float32 on purpose). The
    # variant loads last: both are modules named cuda_train, and torch.compile resolves the later one.
    jax_variant = args.variant if args.variant and VARIANTS[args.variant].backend == "jax" else None
    plain = load(None, None)
    canvas = load(args.variant, REPO / "runs" / "grad_precision") if args.variant and not jax_variant else plain
    config = canvas.GPTConfig(sequence_len=args.seq_len, vocab_size=args.vocab, n_layer=args.depth,
                              n_head=args.dim // 128 or 1, n_embd=args.dim, window_pattern="SSSL")
    base = perturbed_model(canvas, config, device, args.seed)
    tokens = torch.randint(0, args.vocab, (args.batch, args.seq_len + 1),
                           generator=torch.Generator().manual_seed(args.seed)).to(device)
    x, y = tokens[:, :-1], tokens[:, 1:]
    groups = [g.format(mid=args.depth // 2, last=args.depth - 1) for g in GROUPS]

    reference = plain.build_model(config, device, seed=args.seed)
    reference.load_state_dict(base.state_dict())
    reference.double()
    ref_grads, ref_loss = gradients(reference, x, y, autocast=False)
    del reference
    print(f"device {device} | depth {args.depth}, dim {args.dim}, T {args.seq_len}, batch {args.batch} | "
          f"torch {torch.__version__} | float64 loss {ref_loss:.6f}", flush=True)
    results = {}
    for mode in modes:
        t0 = time.time()
        if mode == "jax":
            jax_canvas = load(jax_variant, REPO / "runs" / "grad_precision", "jax")
            grads, loss = jax_gradients(jax_canvas, config, plain.export_weights(base), x, y)
        else:
            model = copy.deepcopy(base)
            canvas.store_in_bf16(model)
            if mode == "regional":
                canvas.compile_model(model)
            elif mode == "whole":
                model.compile(dynamic=False)
            gradients(model, x, y, autocast=True)  # the first call compiles
            grads, loss = gradients(model, x, y, autocast=True)
            del model
        results[mode] = dict(loss=loss, errors=relative_errors(grads, ref_grads, groups))
        print(f"{mode}: loss {loss:.6f} ({time.time() - t0:.0f} s)", flush=True)
        del grads

    print("\nrelative gradient error against float64 (Frobenius norm over the group)")
    print("group".ljust(16) + "".join(m.rjust(12) for m in results))
    for group in groups:
        print(group.ljust(16) + "".join(f"{r['errors'][group]:12.3e}" for r in results.values()))
    if args.json:
        Path(args.json).write_text(json.dumps(dict(device=str(device), config=vars(args), float64_loss=ref_loss,
                                                   modes=results), indent=1))


if __name__ == "__main__":
    main()
