"""Checks of the reference trainer against upstream autoresearch's own code, on a CPU (no GPU needed).

    python bench/anchor_checks.py metric   [--upstream DIR] [--data FOLDER] [--batch-size 128]
    python bench/anchor_checks.py numerics [--upstream DIR] [--steps 20]
    python bench/anchor_checks.py first-step [--seeds 6]

metric: upstream's evaluate_bpb and common.evaluate.evaluate_bpb score the same model on the h100 profile's
validation rows. The model is a bigram table counted from the training split: a real language model whose
per-token losses cost nothing to compute on a CPU. Prints whether the rows are identical, both bpb values,
and ours recomputed with upstream's token byte lengths (which count a token holding part of a multi-byte
character as the 3 bytes of a replacement character; ours count its exact bytes).

numerics: upstream's GPT and MuonAdamW against ours (with upstream's scalar mixing weights put back, see
load_ours), in float64 on the CPU, from one seed: the initial
weights, the schedules (LR, Muon momentum, weight decay over steps and progress), then training steps on the
same batches with the same schedule values, loss and weights compared after every step. In float64 rounding
is ~1e-16, so a difference in what the two compute shows as a gap far above that, from the first step on.

first-step: which way upstream's first AdamW step would move the scalar mixing weights, seed by seed. At
init their gradient is rounding noise and AdamW steps by its sign, a full +-lr (x0_lambdas 0.1 -> 0.6 when it is
negative, -0.4 when positive). The h100 model in bf16 (jax, XLA attention) on 2 x 2048 random tokens, from
torch's CPU draws (backends/cuda on the CPU) and torch's CUDA draws (the jax canvas's init, common/cuda_draws.py),
for seeds 0..N-1: the sign of each layer's x0_lambdas gradient. Needs jax; upstream's code is not used.

Upstream's code runs from the folder given or fetched as bench/anchor.py does (.upstream/, git-ignored), with
these changes made in memory only, for the CPU: no torch.compile, FlashAttention-3 replaced by SDPA with the
same window mask, "cuda" replaced by "cpu", and (numerics) Polar Express in float64 instead of bf16.
"""

import argparse
import ast
import math
import os
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from ablations import VARIANTS, apply  # noqa: E402
from anchor import UPSTREAM_COMMIT, load_canvas, prepare_upstream, upstream_code  # noqa: E402
from common.errors import run_cli  # noqa: E402


def sdpa_window(q, k, v, causal=True, window_size=(-1, 0)):
    """FA3's flash_attn_func on the CPU: (B, T, H, D), query i sees keys j with 0 <= i - j <= window."""
    T, left = q.size(1), window_size[0]
    i = torch.arange(T)
    dist = i[:, None] - i[None, :]
    mask = (dist >= 0) & (dist <= left) if 0 <= left < T else dist >= 0
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2)


def load_upstream_prepare(code, home):
    """Upstream's prepare.py as a module reading the cache under `home`, its tensors on the CPU."""
    os.environ["HOME"] = str(home)
    text = (code / "prepare.py").read_text().replace('"cuda"', '"cpu"').replace("pin_memory=True", "pin_memory=False")
    module = types.ModuleType("prepare")
    module.__file__ = str(code / "prepare.py")
    exec(compile(text, module.__file__, "exec"), module.__dict__)
    return module


def load_upstream_train(code, max_seq_len, pe_dtype=torch.float64):
    """The definitions of upstream's train.py (model, optimizer, hyperparameters, schedules), without its
    top-level training run, for the CPU."""
    source = (code / "train.py").read_text().replace("X = g.bfloat16()", "X = g.to(PE_DTYPE)")
    tree = ast.parse(source)
    setup = source.index("# Setup: tokenizer, model, optimizer, dataloader")
    head = ast.parse(source[:setup])
    schedules = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("get_")]
    head.body += schedules
    sys.modules["kernels"] = types.SimpleNamespace(get_kernel=lambda repo: types.SimpleNamespace(
        flash_attn_interface=types.SimpleNamespace(flash_attn_func=sdpa_window)))
    sys.modules["prepare"] = types.SimpleNamespace(MAX_SEQ_LEN=max_seq_len, TIME_BUDGET=300, Tokenizer=None,
                                                   make_dataloader=None, evaluate_bpb=None)
    namespace = {"__name__": "upstream_train", "PE_DTYPE": pe_dtype}
    compile_, capability = torch.compile, torch.cuda.get_device_capability
    torch.compile = lambda f=None, **kw: f if f is not None else (lambda g: g)
    torch.cuda.get_device_capability = lambda *a, **k: (9, 0)
    try:
        exec(compile(head, str(code / "train.py"), "exec"), namespace)
    finally:
        torch.compile, torch.cuda.get_device_capability = compile_, capability
    return types.SimpleNamespace(**namespace)


def load_ours():
    """backends/cuda/train.py with upstream's scalar mixing weights put back (bench/ablations.py's scalar-kick:
    their starting values and their first step), the one place where it departs from upstream on purpose."""
    path = Path(tempfile.mkdtemp()) / "train.py"
    path.write_text(apply(VARIANTS["scalar-kick"], (REPO / "backends" / "cuda" / "train.py").read_text()))
    return load_canvas(path)


# ---------------------------------------------------------------------------------------------------------
# metric
# ---------------------------------------------------------------------------------------------------------

class Bigram(torch.nn.Module):
    """-log p(next | current) from add-one bigram counts: upstream calls model(x, y, reduction='none')."""

    def __init__(self, log_probs):
        super().__init__()
        self.log_probs = log_probs

    def forward(self, idx, targets, reduction="none"):
        return -self.log_probs[idx.long(), targets.long()].view(-1)


def metric(args):
    from common.data import get_source
    from common.evaluate import eval_rows, evaluate_bpb
    from common.loader import make_loader
    from common.platform import get_profile
    from common.tokenizer import Tokenizer

    profile = get_profile("h100")
    source = get_source(args.data)
    tokenizer = Tokenizer.load(source)
    work = Path(args.work).resolve()
    code = upstream_code(args.upstream)
    _, env = prepare_upstream(code, args.data, work, 300)    # upstream's own tokenizer
    up = load_upstream_prepare(code, Path(env["HOME"]))
    up_tokenizer = up.Tokenizer.from_directory()
    same_tokenizer = up_tokenizer.enc._mergeable_ranks == tokenizer.enc._mergeable_ranks
    print(f"tokenizer: upstream's prepare.py and ours learn {'the same' if same_tokenizer else 'DIFFERENT'} merges")

    V = tokenizer.vocab_size
    counts = np.ones((V, V), dtype=np.float64)
    loader = make_loader("train", 64, profile.max_seq_len, source=source, tokenizer=tokenizer)
    for _ in range(args.train_batches):
        x, y, _ = next(loader)
        np.add.at(counts, (x.ravel(), y.ravel()), 1)
    log_probs = torch.from_numpy(np.log(counts / counts.sum(1, keepdims=True)).astype(np.float32))
    model = Bigram(log_probs)

    B, T = args.batch_size, profile.max_seq_len
    rows = eval_rows(profile, source, tokenizer)
    val = up.make_dataloader(up_tokenizer, B, T, "val")
    up_rows = np.concatenate([np.concatenate([x.numpy(), y.numpy()[:, -1:]], 1)
                              for x, y, _ in (next(val) for _ in range(len(rows) // B))])
    same_rows = np.array_equal(rows, up_rows)
    first = "" if same_rows else f" (first difference in row {np.argmax((rows != up_rows).any(1))})"
    print(f"validation rows: {len(rows)} x {T + 1}, upstream's val loader and common's eval_rows are "
          f"{'identical' if same_rows else 'DIFFERENT'}{first}")

    bpb_up = up.evaluate_bpb(model, up_tokenizer, B)
    bpb_ours = evaluate_bpb(lambda x, y: model(torch.from_numpy(x), torch.from_numpy(y)).view(x.shape).numpy(),
                            B, profile, source)
    up_bytes = up.get_token_bytes("cpu").numpy()
    targets = rows[:, 1:]
    losses = model(torch.from_numpy(rows[:, :-1]), torch.from_numpy(targets)).view(targets.shape).double().numpy()
    nbytes = up_bytes[targets]
    ours_with_up_bytes = losses[nbytes > 0].sum() / (math.log(2) * nbytes.sum())
    differ = int((up_bytes != tokenizer.token_bytes).sum())
    print(f"bpb, upstream's evaluate_bpb:                     {bpb_up:.8f}")
    print(f"bpb, common.evaluate.evaluate_bpb:                {bpb_ours:.8f}  ({bpb_ours - bpb_up:+.2e})")
    print(f"bpb, ours on the same rows with upstream's bytes: {ours_with_up_bytes:.8f}  ({ours_with_up_bytes - bpb_up:+.2e})")
    print(f"token byte lengths: {differ} of {V} tokens differ (partial UTF-8 characters); bytes scored: upstream "
          f"{int(nbytes.sum()):,}, ours {int(tokenizer.token_bytes[targets].sum()):,} "
          f"({tokenizer.token_bytes[targets].sum() / nbytes.sum() - 1:+.3%})")
    return 0 if same_rows and same_tokenizer and abs(ours_with_up_bytes - bpb_up) < 1e-6 else 1


# ---------------------------------------------------------------------------------------------------------
# numerics
# ---------------------------------------------------------------------------------------------------------

def upstream_name(name):
    return "transformer." + name.replace("blocks.", "h.", 1) if name.startswith(("wte.", "blocks.")) else name


def numerics(args):
    from common.loader import make_loader
    from common.tokenizer import Tokenizer

    torch.set_default_dtype(torch.float64)
    ours = load_ours()
    T, L, D, H = 64, 4, 128, 2
    up = load_upstream_train(upstream_code(args.upstream), T)
    config = ours.GPTConfig(sequence_len=T, vocab_size=8192, n_layer=L, n_head=H, n_embd=D, window_pattern="SSSL")
    up_config = up.GPTConfig(sequence_len=T, vocab_size=8192, n_layer=L, n_head=H, n_kv_head=H, n_embd=D,
                             window_pattern="SSSL")

    # 1. The initial weights, from the same seed.
    model = ours.build_model(config, "cpu", seed=ours.SEED)
    torch.manual_seed(ours.SEED)
    with torch.device("meta"):
        up_model = up.GPT(up_config)
    up_model.to_empty(device="cpu")
    up_model.init_weights()      # casts the embeddings to bf16, as on a GPU
    up_params = dict(up_model.named_parameters())
    init_diff = max((p.to(up_params[upstream_name(n)].dtype) != up_params[upstream_name(n)]).sum().item()
                    for n, p in model.named_parameters())
    print(f"initial weights from seed {ours.SEED}: {'identical' if init_diff == 0 else 'DIFFERENT'} "
          "(embeddings compared in upstream's bf16)")

    # 2. The schedules: LR multiplier and weight decay by progress, Muon momentum by step.
    worst = 0.0
    for step in range(0, 1200, 7):
        for progress in np.linspace(0, 1, 23):
            worst = max(worst, abs(ours.lr_multiplier(progress) - up.get_lr_multiplier(progress)),
                        abs(ours.WEIGHT_DECAY * (1 - progress) - up.get_weight_decay(progress)),
                        abs(ours.muon_momentum(step) - up.get_muon_momentum(step)))
    print(f"schedules over steps 0..1200 and progress 0..1: largest difference {worst:.1e}")

    # 3. Training steps in float64 from the same weights, with the same schedule values.
    up_model.double()
    model.double()
    up_model.cos, up_model.sin = model.cos.clone(), model.sin.clone()   # upstream keeps bf16 tables
    with torch.no_grad():
        for n, p in model.named_parameters():
            up_params[upstream_name(n)].copy_(p)
    polar_express = ours.polar_express
    ours.polar_express = lambda g, dtype, steps=5: polar_express(g, torch.float64, steps)
    optimizer = ours.build_optimizer(model)
    up_optimizer = up_model.setup_optimizer(unembedding_lr=ours.UNEMBEDDING_LR, embedding_lr=ours.EMBEDDING_LR,
                                            scalar_lr=ours.SCALAR_LR, adam_betas=ours.ADAM_BETAS,
                                            matrix_lr=ours.MATRIX_LR, weight_decay=ours.WEIGHT_DECAY)
    loader = make_loader("train", 8, T, tokenizer=Tokenizer.load())
    print(f"{'step':>4} {'loss (ours)':>12} {'loss (upstream)':>15} {'difference':>11} {'max weight difference':>22}")
    worst_early = 0.0
    for step in range(args.steps):
        batches = [tuple(torch.from_numpy(a).long() for a in next(loader)[:2]) for _ in range(2)]
        progress = step / args.steps
        up_loss = 0.0
        for x, y in batches:
            loss = up_model(x, y)
            (loss / len(batches)).backward()
            up_loss += loss.item() / len(batches)
        ours.set_schedules(optimizer, progress, step)
        values = {g["name"]: g for g in optimizer.param_groups}
        names = ["lm_head", "wte", "value_embeds", "resid_lambdas", "x0_lambdas"] + \
                [g["name"] for g in optimizer.param_groups if g["kind"] == "muon"]
        for name, group in zip(names, up_optimizer.param_groups):
            group["lr"] = values[name]["lr"]
            if group["kind"] == "muon":
                group["momentum"], group["weight_decay"] = values[name]["momentum"], values[name]["weight_decay"]
        up_optimizer.step()
        up_model.zero_grad(set_to_none=True)
        loss = ours.train_step(model, optimizer, batches, progress, step).item()
        diff = max(((p - up_params[upstream_name(n)]).norm() / up_params[upstream_name(n)].norm().clamp_min(1e-30)).item()
                   for n, p in model.named_parameters())
        if step < 5:
            worst_early = max(worst_early, abs(loss - up_loss) / up_loss)
        print(f"{step:>4} {loss:>12.8f} {up_loss:>15.8f} {loss - up_loss:>+11.1e} {diff:>22.1e}")
    print(f"largest relative loss difference over the first 5 steps: {worst_early:.1e}")
    return 0 if init_diff == 0 and worst < 1e-12 and worst_early < 1e-6 else 1


# ---------------------------------------------------------------------------------------------------------
# first-step
# ---------------------------------------------------------------------------------------------------------

def first_step(args):
    import jax
    import jax.numpy as jnp
    jx = load_canvas(REPO / "backends" / "jax" / "train.py", "jax")
    ours = load_ours()
    config = jx.model_config(8, 2048, 8192)  # the h100 profile's model
    x = np.random.default_rng(0).integers(0, config.vocab_size, (2, config.sequence_len), dtype=np.int32)
    model = jx.GPT(config, jnp.bfloat16, "xla")
    modeldef, _ = jx.split_model(model)
    grad = jax.jit(jax.grad(lambda p: jx.merge_model(modeldef, p)(x, np.roll(x, -1, 1)).mean()))
    print("draws  seed  x0_lambdas' first step per layer (+ = up, 0.1 -> 0.6)  mean gradient")
    for draws in ("cpu", "cuda"):
        for seed in range(args.seeds):
            if draws == "cpu":
                weights = ours.export_weights(ours.build_model(ours.GPTConfig(**vars(config)), "cpu", seed=seed))
            else:
                drawn = jx.GPT(config, jnp.bfloat16, "xla")
                drawn.init_weights(seed)
                weights = jx.export_weights(drawn)
            weights.update(resid_lambdas=np.ones(config.n_layer, np.float32),  # upstream's init_weights
                           x0_lambdas=np.full(config.n_layer, 0.1, np.float32))
            jx.import_weights(model, weights)
            g = np.asarray(grad(jx.split_model(model)[1])["x0_lambdas"], np.float32)
            print(f"{draws:6} {seed:4}  {' '.join('+' if v < 0 else '-' if v > 0 else '0' for v in g):46}  {g.mean():+.2e}")
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("check", choices=["metric", "numerics", "first-step"])
    parser.add_argument("--upstream", help="a folder with upstream's prepare.py and train.py (else fetched)")
    parser.add_argument("--data", default=os.environ.get("AUTORESEARCH_DATA"), help="a folder of parquet shards")
    parser.add_argument("--work", default=str(REPO / "runs" / "anchor" / "upstream"), help="upstream's HOME etc.")
    parser.add_argument("--batch-size", type=int, default=128, help="metric: evaluation batch size")
    parser.add_argument("--train-batches", type=int, default=200, help="metric: batches counted for the bigram")
    parser.add_argument("--steps", type=int, default=20, help="numerics: training steps compared")
    parser.add_argument("--seeds", type=int, default=6, help="first-step: seeds 0..N-1 of each kind of draws")
    args = parser.parse_args()
    if args.check == "first-step":
        return first_step(args)
    print(f"upstream autoresearch {UPSTREAM_COMMIT[:12]} against backends/cuda/train.py, on the CPU")
    return metric(args) if args.check == "metric" else numerics(args)


if __name__ == "__main__":
    sys.exit(run_cli(main))
