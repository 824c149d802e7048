"""The reference trainer (backends/cuda/train.py) in JAX, Flax NNX and Optax (BACKEND=jax): the same model, init,
optimizer, hyperparameters and loop, so that a reader can hold the two files side by side.

The model is a Flax NNX module tree named like the reference's, so a parameter's NNX path joined by '.' is its
reference name (the list of names and shapes, and the numerical conventions, are in the reference's docstring).
Training is functional: the parameters travel as a flat dict {reference name: array}, which is also the
cross-backend exchange format, and are merged into the module inside the jitted step. The optimizer is
MuonAdamW written as Optax transforms (optax.contrib.muon differs in its numerics): optax.partition over the
reference's groups, AdamW and Muon (Polar Express, NorMuon, cautious weight decay) as our own transforms.
Schedules follow training-time progress; the host computes them each step, as the reference does.

On an NVIDIA GPU: bf16 compute over float32 weights (as autocast), cuDNN attention with sliding windows,
Polar Express in bf16, and wte and value_embeds stored in bf16 as the reference stores them (upstream's choice),
their AdamW step computed in float32 and rounded once into each stored tensor; the per-layer mix with the float32
scalars at float32, rounded once (as the reference's compiled code). On a CPU: float32 and XLA
attention with the same window mask, which gives the reference's numbers (tests/parity). Importing this file
does no work; main() runs under __main__, so tests and the parity harness can build the model and take steps.
"""

import gc
import math
import os
import resource
import sys
import threading
import time
from dataclasses import asdict, dataclass
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from common.cuda_draws import CudaGenerator
from common.errors import run_cli

# ---------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------


@dataclass
class GPTConfig:
    sequence_len: int = 2048
    vocab_size: int = 8192
    n_layer: int = 8
    n_head: int = 4
    n_embd: int = 512
    window_pattern: str = "SSSL"


def norm(x):
    """RMSNorm without weights, computed in float32 with eps = float32's machine epsilon, for float32 and bf16
    inputs alike (the reference's F.rms_norm default: the epsilon of the type it computes in)."""
    x32 = x.astype(jnp.float32)
    eps = float(jnp.finfo(jnp.float32).eps)
    return (x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + eps)).astype(x.dtype)


def has_ve(i, n_layer):
    """Value embeddings on alternating layers, the last always included."""
    return i % 2 == (n_layer - 1) % 2


def window_sizes(config):
    """Per-layer attention window: 'L' is the full context, 'S' half of it; the last layer is always full."""
    sizes = {"L": config.sequence_len, "S": config.sequence_len // 2}
    pattern = config.window_pattern.upper()
    assert pattern and set(pattern) <= set("SL"), f"WINDOW_PATTERN must use S and L only, got {pattern!r}"
    windows = [sizes[pattern[i % len(pattern)]] for i in range(config.n_layer)]
    windows[-1] = config.sequence_len
    return tuple(windows)


def rotary_tables(seq_len, head_dim):
    """cos and sin of shape (1, T, 1, head_dim / 2), base 10000."""
    inv_freq = 1.0 / 10000 ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
    freqs = jnp.outer(jnp.arange(seq_len, dtype=jnp.float32), inv_freq)
    return jnp.cos(freqs)[None, :, None, :], jnp.sin(freqs)[None, :, None, :]


def apply_rotary(x, cos, sin):
    d = x.shape[-1] // 2
    x1, x2 = x[..., :d], x[..., d:]
    return jnp.concatenate([x1 * cos + x2 * sin, x2 * cos - x1 * sin], axis=-1)


def attention(q, k, v, window, implementation):
    """Causal attention over (B, T, H, hd): query i sees keys j with 0 <= i - j <= window."""
    T = q.shape[1]
    local = (window, 0) if window < T else None
    return jax.nn.dot_product_attention(q, k, v, is_causal=True, local_window_size=local, implementation=implementation)


class Linear(nnx.Module):
    """torch.nn.Linear without bias: weight (out_features, in_features), y = x @ W.T in x's dtype."""

    def __init__(self, in_features, out_features):
        self.weight = nnx.Param(jnp.zeros((out_features, in_features), jnp.float32))

    def __call__(self, x):
        return x @ self.weight[...].astype(x.dtype).T


class Embedding(nnx.Module):
    def __init__(self, num_embeddings, dim):
        self.weight = nnx.Param(jnp.zeros((num_embeddings, dim), jnp.float32))

    def __call__(self, idx):
        # Gathered from a float32 view, so that the backward's scatter-add sums in float32 and rounds once into a
        # bf16 table's gradient (torch's embedding backward does the same); the values are the table's.
        return jnp.take(self.weight[...].astype(jnp.float32), idx, axis=0)


class CausalSelfAttention(nnx.Module):
    ve_gate_channels = 32

    def __init__(self, config, layer_idx, attention_impl):
        self.n_head = config.n_head
        self.head_dim = config.n_embd // config.n_head
        self.attention_impl = attention_impl
        D = config.n_embd
        self.c_q = Linear(D, D)
        self.c_k = Linear(D, D)
        self.c_v = Linear(D, D)
        self.c_proj = Linear(D, D)
        self.ve_gate = Linear(self.ve_gate_channels, self.n_head) if has_ve(layer_idx, config.n_layer) else None

    def __call__(self, x, ve, cos, sin, window):
        B, T, _ = x.shape
        q = self.c_q(x).reshape(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).reshape(B, T, self.n_head, self.head_dim)
        v = self.c_v(x).reshape(B, T, self.n_head, self.head_dim)
        if ve is not None:  # value residual, gated per head by the input (gate 1.0 at init)
            gate = 2 * jax.nn.sigmoid(self.ve_gate(x[..., :self.ve_gate_channels]))
            v = v + gate[..., None] * ve.reshape(B, T, self.n_head, self.head_dim)
        q = norm(apply_rotary(q, cos, sin))
        k = norm(apply_rotary(k, cos, sin))
        y = attention(q, k, v, window, self.attention_impl)
        return self.c_proj(y.reshape(B, T, -1))


class MLP(nnx.Module):
    def __init__(self, config):
        self.c_fc = Linear(config.n_embd, 4 * config.n_embd)
        self.c_proj = Linear(4 * config.n_embd, config.n_embd)

    def __call__(self, x):
        return self.c_proj(jnp.square(jax.nn.relu(self.c_fc(x))))


class Block(nnx.Module):
    def __init__(self, config, layer_idx, attention_impl):
        self.attn = CausalSelfAttention(config, layer_idx, attention_impl)
        self.mlp = MLP(config)

    def __call__(self, x, x0, resid_lambda, x0_lambda, ve, cos, sin, window):
        # Per-layer mix of the residual stream and the embedding, with the float32 scalars at float32 and rounded
        # once, as the reference's compiled code computes it (not with the scalars rounded to bf16 first).
        x = (resid_lambda * x.astype(jnp.float32) + x0_lambda * x0.astype(jnp.float32)).astype(x.dtype)
        x = x + self.attn(norm(x), ve, cos, sin, window)
        return x + self.mlp(norm(x))


class LMHead(Linear):
    """Final RMSNorm, unembedding, logit soft-cap at 15 and per-token cross-entropy (nats, float32)."""

    def __call__(self, x, targets=None):
        logits = super().__call__(norm(x)).astype(jnp.float32)
        logits = 15 * jnp.tanh(logits / 15)
        if targets is None:
            return logits
        return optax.softmax_cross_entropy_with_integer_labels(logits, targets)


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def chunked_mean_loss(x, weight, targets, chunks):
    """LMHead's mean loss over x (B, T, D), computed `chunks` row groups at a time together with its gradient,
    so that no (B, T, V) float32 array exists at once: the backward pass only scales what the forward pass
    found. The same math and FLOPs as autodiff through LMHead (GPT.mean_loss, LOSS_CHUNKS)."""
    return loss_and_gradients(x, weight, targets, chunks)[0]


def loss_and_gradients(x, weight, targets, chunks):
    """(mean loss, (dx, dW)) of LMHead over x, one row group at a time: each group's logits go through jax.vjp
    of the norm and matmul, and the loss's gradient (softmax - one-hot, times the soft-cap's derivative) back."""

    def logits_of(xc, w):
        return (norm(xc) @ w.astype(xc.dtype).T).astype(jnp.float32)

    def one_chunk(dw, chunk):
        xc, yc = chunk
        logits, backward = jax.vjp(logits_of, xc, weight)
        t = jnp.tanh(logits / 15)
        capped = 15 * t
        loss = optax.softmax_cross_entropy_with_integer_labels(capped, yc).sum()
        dcapped = (jax.nn.softmax(capped) - jax.nn.one_hot(yc, capped.shape[-1])) / targets.size
        dxc, dwc = backward(dcapped * (1 - t * t))
        return dw + dwc, (loss, dxc)

    split = lambda a: a.reshape(chunks, a.shape[0] // chunks, *a.shape[1:])  # noqa: E731
    dw, (losses, dx) = jax.lax.scan(one_chunk, jnp.zeros_like(weight), (split(x), split(targets)))
    return losses.sum() / targets.size, (dx.reshape(x.shape), dw)


def chunked_mean_loss_forward(x, weight, targets, chunks):
    loss, (dx, dw) = loss_and_gradients(x, weight, targets, chunks)
    return loss, (dx, dw, targets.shape)


def chunked_mean_loss_backward(chunks, saved, g):
    dx, dw, targets_shape = saved
    return (g * dx).astype(dx.dtype), g * dw, np.zeros(targets_shape, jax.dtypes.float0)


chunked_mean_loss.defvjp(chunked_mean_loss_forward, chunked_mean_loss_backward)


class GPT(nnx.Module):
    """compute_dtype: bfloat16 on a GPU (the reference's autocast), float32 on a CPU. Weights stay float32."""

    def __init__(self, config, compute_dtype=jnp.float32, attention_impl="xla"):
        self.config = config
        self.compute_dtype = compute_dtype
        self.windows = window_sizes(config)
        L, D, V = config.n_layer, config.n_embd, config.vocab_size
        self.wte = Embedding(V, D)
        self.blocks = nnx.List([Block(config, i, attention_impl) for i in range(L)])
        self.value_embeds = nnx.Dict({str(i): Embedding(V, D) for i in range(L) if has_ve(i, L)})
        self.lm_head = LMHead(D, V)
        self.resid_lambdas = nnx.Param(jnp.ones(L, jnp.float32))
        self.x0_lambdas = nnx.Param(jnp.zeros(L, jnp.float32))

    def init_weights(self, seed):
        """The reference's weights for the seed: its distributions in its order, drawn on the host as torch draws
        them on an H100/H200 (common/cuda_draws.py), so that jax starts where the cuda backend starts."""
        gen = CudaGenerator(seed)
        D = self.config.n_embd
        s = (3 / D) ** 0.5  # uniform(-s, s) has the std of normal(0, 1/sqrt(D))

        def normal(p, std):
            p[...] = jnp.asarray(gen.normal(p.shape, std))

        def uniform(p):
            p[...] = jnp.asarray(gen.uniform(p.shape, -s, s))

        normal(self.wte.weight, 1.0)
        normal(self.lm_head.weight, 0.001)
        for block in self.blocks:
            for lin in (block.attn.c_q, block.attn.c_k, block.attn.c_v, block.mlp.c_fc):
                uniform(lin.weight)
            block.attn.c_proj.weight[...] = jnp.zeros_like(block.attn.c_proj.weight[...])
            block.mlp.c_proj.weight[...] = jnp.zeros_like(block.mlp.c_proj.weight[...])
            if block.attn.ve_gate is not None:
                block.attn.ve_gate.weight[...] = jnp.zeros_like(block.attn.ve_gate.weight[...])
        for ve in self.value_embeds.values():
            uniform(ve.weight)
        # Where upstream's first step leaves them at its seed, held on that step: the reference's init_weights.
        self.resid_lambdas[...] = jnp.full_like(self.resid_lambdas[...], 1.005)
        self.x0_lambdas[...] = jnp.full_like(self.x0_lambdas[...], 0.6)

    def hidden_states(self, idx):
        """The normalised embedding x0, then the residual stream after each block: the forward pass up to the
        head, in compute_dtype."""
        dtype = self.compute_dtype
        cos, sin = rotary_tables(idx.shape[1], self.config.n_embd // self.config.n_head)
        cos, sin = cos.astype(dtype), sin.astype(dtype)  # bf16 on a GPU, so q and k stay bf16
        x = x0 = norm(self.wte(idx).astype(dtype))
        states = [x0]
        for i, block in enumerate(self.blocks):
            ve = self.value_embeds[str(i)](idx).astype(dtype) if str(i) in self.value_embeds else None
            x = block(x, x0, self.resid_lambdas[i], self.x0_lambdas[i], ve, cos, sin, self.windows[i])
            states.append(x)
        return states

    def __call__(self, idx, targets=None):
        """Per-token cross-entropy in nats, float32, shape (B, T); the logits when targets is None."""
        return self.lm_head(self.hidden_states(idx)[-1], targets)

    def mean_loss(self, idx, targets):
        """The mean per-token loss, which training minimises, in row groups: the most, up to LOSS_CHUNKS, that
        divide the batch (any count gives the same loss and gradients)."""
        chunks = math.gcd(LOSS_CHUNKS, idx.shape[0])
        if chunks > 1:
            return chunked_mean_loss(self.hidden_states(idx)[-1], self.lm_head.weight[...], targets, chunks)
        return self(idx, targets).mean()

    def flops_per_token(self):
        """Training FLOPs per token (forward + backward), counted as upstream: 6 x matmul weights + attention."""
        params = split_model(self)[1]
        embeddings = sum(p.size for n, p in params.items() if n == "wte.weight" or n.startswith("value_embeds."))
        scalars = params["resid_lambdas"].size + params["x0_lambdas"].size
        matmul = sum(p.size for p in params.values()) - embeddings - scalars
        head_dim = self.config.n_embd // self.config.n_head
        attn = sum(12 * self.config.n_head * head_dim * min(w, self.config.sequence_len) for w in self.windows)
        return 6 * matmul + attn


# The functional view: a flat dict {reference name: array} and back.


class ModelDef(NamedTuple):
    graphdef: object
    paths: dict  # reference name -> NNX path


def split_model(model):
    """(ModelDef, {reference name: array}) for a GPT; merge_model inverts it."""
    graphdef, state = nnx.split(model)
    flat = list(nnx.to_flat_state(state))
    names = [".".join(map(str, path)) for path, _ in flat]
    params = {name: variable[...] for name, (_, variable) in zip(names, flat)}
    return ModelDef(graphdef, {name: path for name, (path, _) in zip(names, flat)}), params


def merge_model(modeldef, params):
    """A GPT over the given arrays (inside jit: traced arrays, at no run-time cost)."""
    return nnx.merge(modeldef.graphdef, nnx.from_flat_state({modeldef.paths[n]: p for n, p in params.items()}))


# ---------------------------------------------------------------------------
# Optimizer: Muon (Polar Express, NorMuon, cautious weight decay) for the block matrices, AdamW for the rest
# ---------------------------------------------------------------------------

# Polar Express (Amsel et al., 2025): per-iteration coefficients of X <- aX + b(XX^T)X + c(XX^T)^2 X.
POLAR_EXPRESS = [
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
]


def polar_express(g, dtype, steps=5):
    """Approximately orthogonalise each matrix of the stack g (N, rows, cols): U V^T of its SVD."""
    x = g.astype(dtype)
    fro = jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32)), axis=(-2, -1), keepdims=True)).astype(dtype)
    x = x / (fro * 1.02 + 1e-6)
    tall = x.shape[-2] > x.shape[-1]
    if tall:  # iterate on the smaller Gram matrix
        x = jnp.swapaxes(x, -2, -1)
    for a, b, c in POLAR_EXPRESS[:steps]:
        A = x @ jnp.swapaxes(x, -2, -1)
        x = a * x + (b * A + c * (A @ A)) @ x
    return (jnp.swapaxes(x, -2, -1) if tall else x).astype(g.dtype)


def lerp(start, end, weight):
    return start + weight * (end - start)


class MuonState(NamedTuple):
    momentum_buffer: jax.Array         # (N, rows, cols)
    second_momentum_buffer: jax.Array  # (N, rows, 1), or (N, 1, cols) for wide matrices


def muon(lr, beta2, weight_decay, ortho_dtype=jnp.float32):
    """Muon on one group of same-shape matrices, stacked (N, rows, cols) as the reference's muon_update.
    Extra arguments per step: lr_mult, momentum, wd_mult (see schedules)."""

    def init(params):
        leaves = jax.tree.leaves(params)
        rows, cols = leaves[0].shape
        stat_shape = (len(leaves), rows, 1) if rows >= cols else (len(leaves), 1, cols)
        return MuonState(jnp.zeros((len(leaves), rows, cols), jnp.float32), jnp.zeros(stat_shape, jnp.float32))

    def update(grads, state, params, *, lr_mult, momentum, wd_mult, **_):
        leaves, treedef = jax.tree.flatten(grads)
        grads, params = jnp.stack(leaves), jnp.stack(jax.tree.leaves(params))
        rows, cols = grads.shape[-2:]
        step_lr = lr * lr_mult * max(1.0, rows / cols) ** 0.5
        wd = weight_decay * wd_mult
        momentum_buf = lerp(state.momentum_buffer, grads, 1 - momentum)
        g = lerp(grads, momentum_buf, momentum)  # Nesterov
        g = polar_express(g, ortho_dtype)
        # NorMuon: equalise the update's per-row (per-column for wide matrices) scale with a second moment,
        # then restore the orthogonalised update's overall norm.
        red = -1 if rows >= cols else -2
        v = jnp.mean(jnp.square(g), axis=red, keepdims=True)
        second_buf = lerp(state.second_momentum_buffer, v, 1 - beta2)
        scale = jax.lax.rsqrt(jnp.maximum(second_buf, 1e-10))
        norm_before = jnp.sqrt(jnp.sum(v, axis=(-2, -1), keepdims=True))
        norm_after = jnp.sqrt(jnp.sum(v * jnp.square(scale), axis=(-2, -1), keepdims=True))
        g = g * (scale * norm_before / jnp.maximum(norm_after, 1e-10))
        # Cautious weight decay: decay only where the update and the weight agree in sign.
        delta = -(step_lr * g + step_lr * wd * params * ((g * params) >= 0))
        return treedef.unflatten(list(delta)), MuonState(momentum_buf, second_buf)

    return optax.GradientTransformationExtraArgs(init, update)


class AdamState(NamedTuple):
    count: jax.Array
    exp_avg: dict
    exp_avg_sq: dict


def adamw(lr, b1, b2, eps, weight_decay):
    """The reference's adamw_update: bias-corrected Adam, decoupled weight decay, lr x lr_mult. The moments are
    stored in each weight's dtype and the step is computed in float32, rounding once into each stored tensor
    (the GPU's bf16 embeddings; op-by-op bf16 arithmetic would round every intermediate). Returns the weights'
    change, which optax.apply_updates adds and rounds."""

    def init(params):
        return AdamState(jnp.zeros([], jnp.int32), jax.tree.map(jnp.zeros_like, params),
                         jax.tree.map(jnp.zeros_like, params))

    def update(grads, state, params, *, lr_mult, **_):
        count = state.count + 1
        step_lr = lr * lr_mult

        def one(g, m, v, p):
            g, m32, v32, p32 = (a.astype(jnp.float32) for a in (g, m, v, p))
            m32 = lerp(m32, g, 1 - b1)
            v32 = lerp(v32, jnp.square(g), 1 - b2)
            new_p = p32 * (1 - step_lr * weight_decay) - step_lr / (1 - b1 ** count) * m32 / (
                jnp.sqrt(v32 / (1 - b2 ** count)) + eps)
            return new_p - p32, m32.astype(m.dtype), v32.astype(v.dtype)

        treedef = jax.tree.structure(grads)
        leaves = zip(*(jax.tree.leaves(t) for t in (grads, state.exp_avg, state.exp_avg_sq, params)))
        updates, exp_avg, exp_avg_sq = (treedef.unflatten(list(t)) for t in zip(*(one(*x) for x in leaves)))
        return updates, AdamState(count, exp_avg, exp_avg_sq)

    return optax.GradientTransformationExtraArgs(init, update)


def param_group(name, shape):
    """The reference's optimizer group of a parameter: its top-level name, or muon_{rows}x{cols} for blocks."""
    return f"muon_{shape[0]}x{shape[1]}" if name.startswith("blocks.") else name.split(".")[0]


# ---------------------------------------------------------------------------
# Hyperparameters (edit these directly; None means the platform profile's value)
# ---------------------------------------------------------------------------

# Model
DEPTH = None               # transformer layers (profile: h100 8, gpu 6, apple 4, cpu 2, smoke 2)
ASPECT_RATIO = 64          # model_dim = DEPTH * ASPECT_RATIO, rounded up to a multiple of HEAD_DIM
HEAD_DIM = 128             # attention head dimension
WINDOW_PATTERN = "SSSL"    # per-layer attention window: L = full context, S = half; the last layer is always L

# Batch
TOTAL_BATCH_SIZE = None    # tokens per optimizer step (profile: h100 2**19)
DEVICE_BATCH_SIZE = None   # sequences per forward/backward; lower it if memory runs out (profile: h100 128)
LOSS_CHUNKS = 8            # the training loss in up to this many row groups per micro-batch (1: whole (B, T, V) logits)

# Optimization
MATRIX_LR = 0.04           # Muon, block matrices
EMBEDDING_LR = 0.6         # AdamW, token and value embeddings (scaled by 1/sqrt(model_dim/768))
UNEMBEDDING_LR = 0.004     # AdamW, lm_head (scaled likewise)
SCALAR_LR = 0.5            # AdamW, x0_lambdas (resid_lambdas get 0.01x)
WEIGHT_DECAY = 0.2         # Muon's cautious weight decay, decayed linearly to 0 over the budget
ADAM_BETAS = (0.8, 0.95)
WARMUP_RATIO = 0.0         # fraction of the time budget for LR warmup
WARMDOWN_RATIO = 0.5       # fraction of the time budget for the final linear LR decay
FINAL_LR_FRAC = 0.0        # LR at the end, as a fraction of the initial LR
MUON_MOMENTUM = (0.85, 0.95)  # Muon momentum ramps from the first to the second value ...
MOMENTUM_RAMP_STEPS = 300     # ... over this many optimizer steps, as upstream (untimed steps included)

# Loop
SEED = 42


def model_config(depth, sequence_len, vocab_size):
    model_dim = -(-depth * ASPECT_RATIO // HEAD_DIM) * HEAD_DIM
    return GPTConfig(sequence_len=sequence_len, vocab_size=vocab_size, n_layer=depth,
                     n_head=model_dim // HEAD_DIM, n_embd=model_dim, window_pattern=WINDOW_PATTERN)


def tiny_config():
    """For tests and cross-backend parity: sliding windows (16 of 32), value embeddings on layers 1 and 3."""
    return GPTConfig(sequence_len=32, vocab_size=512, n_layer=4, n_head=2, n_embd=64, window_pattern="SSSL")


def on_gpu():
    return jax.default_backend() == "gpu"


def build_model(config, seed=SEED, gpu=None):
    """An initialised GPT. On a GPU it computes in bf16 with cuDNN attention and stores the embeddings in bf16,
    as the reference; on a CPU it is float32 throughout, with XLA's attention."""
    gpu = on_gpu() if gpu is None else gpu
    model = GPT(config, jnp.bfloat16 if gpu else jnp.float32, "cudnn" if gpu else "xla")
    model.init_weights(seed)
    if gpu:
        store_embeddings(model, jnp.bfloat16)
    return model


def store_embeddings(model, dtype):
    """Store wte and value_embeds in dtype (the reference's GPU model keeps them in bf16)."""
    for table in (model.wte, *model.value_embeds.values()):
        table.weight = nnx.Param(table.weight[...].astype(dtype))


def build_optimizer(params, matrix_lr=MATRIX_LR, embedding_lr=EMBEDDING_LR, unembedding_lr=UNEMBEDDING_LR,
                    scalar_lr=SCALAR_LR, weight_decay=WEIGHT_DECAY, adam_betas=ADAM_BETAS, ortho_dtype=jnp.float32):
    """MuonAdamW over the flat parameter dict: the reference's groups, LRs and LR scaling. Every number goes into
    the optimizer state as an array (optax.inject_hyperparams), not into the compiled update, so an agent's edit
    of one reuses the compiled programs (XLA's persistent cache, see main)."""
    scale = (params["wte.weight"].shape[1] / 768) ** -0.5  # AdamW LRs were tuned at model_dim 768
    adam = dict(b1=adam_betas[0], b2=adam_betas[1], eps=1e-10, weight_decay=0.0)
    adamw_ = optax.inject_hyperparams(adamw, hyperparam_dtype=jnp.float32)  # else bf16 for bf16 weights
    groups = {
        "lm_head": adamw_(lr=unembedding_lr * scale, **adam),
        "wte": adamw_(lr=embedding_lr * scale, **adam),
        "value_embeds": adamw_(lr=embedding_lr * scale, **adam),
        "resid_lambdas": adamw_(lr=scalar_lr * 0.01, **adam),
        "x0_lambdas": adamw_(lr=scalar_lr, **dict(adam, b1=0.96, b2=0.95)),
    }
    muon_ = optax.inject_hyperparams(muon, static_args=("ortho_dtype",), hyperparam_dtype=jnp.float32)
    labels = {name: param_group(name, p.shape) for name, p in params.items()}
    for label in sorted(set(labels.values()) - set(groups)):
        groups[label] = muon_(lr=matrix_lr, beta2=0.95, weight_decay=weight_decay, ortho_dtype=ortho_dtype)
    return optax.partition(groups, labels)


def lr_multiplier(progress):
    if progress < WARMUP_RATIO:
        return progress / WARMUP_RATIO
    if progress < 1 - WARMDOWN_RATIO:
        return 1.0
    cooldown = (1 - progress) / WARMDOWN_RATIO
    return cooldown + (1 - cooldown) * FINAL_LR_FRAC


def muon_momentum(step):
    frac = min(step / MOMENTUM_RAMP_STEPS, 1.0) if MOMENTUM_RAMP_STEPS > 0 else 1.0
    return (1 - frac) * MUON_MOMENTUM[0] + frac * MUON_MOMENTUM[1]


def schedules(progress, step):
    """LR warmup/warmdown and weight-decay decay on training-time progress in [0, 1], the Muon momentum ramp on
    the step count: the optimizer's extra arguments for one step (the reference's set_schedules)."""
    return dict(lr_mult=np.float32(lr_multiplier(progress)), momentum=np.float32(muon_momentum(step)),
                wd_mult=np.float32(1 - progress))


def zero_scalar_gradients(grads):
    """The gradients with the scalar mixing weights' zeroed; train_step does it on the first step, as the
    reference (its zero_scalar_gradients says why: at init their gradient is rounding noise)."""
    return {name: jnp.zeros_like(g) if name in ("resid_lambdas", "x0_lambdas") else g for name, g in grads.items()}


def make_train_step(modeldef, optimizer):
    """train_step(params, opt_state, batches, progress, step) -> (params, opt_state, mean loss): one optimizer
    step over a list of (inputs, targets) micro-batches with their gradients averaged, schedules set for
    `progress` and `step`, as the reference's train_step. Two jitted programs (gradient accumulation, optimizer
    update) that donate their buffers; nothing syncs."""

    def accumulate(params, grads, inputs, targets, n):
        loss, g = jax.value_and_grad(lambda p: merge_model(modeldef, p).mean_loss(inputs, targets) / n)(params)
        return jax.tree.map(jnp.add, grads, g), loss * n

    def update(params, opt_state, grads, sched):
        updates, opt_state = optimizer.update(grads, opt_state, params, **sched)
        return optax.apply_updates(params, updates), opt_state

    zeros = jax.jit(lambda params: jax.tree.map(jnp.zeros_like, params))
    accumulate = jax.jit(accumulate, static_argnums=4, donate_argnums=1)
    update = jax.jit(update, donate_argnums=(0, 1))

    def train_step(params, opt_state, batches, progress, step):
        grads, losses = zeros(params), []
        for inputs, targets in batches:
            grads, loss = accumulate(params, grads, inputs, targets, len(batches))
            losses.append(loss)
        if step == 0:
            grads = zero_scalar_gradients(grads)
        params, opt_state = update(params, opt_state, grads, schedules(progress, step))
        return params, opt_state, jnp.mean(jnp.stack(losses))

    return train_step


def make_loss_fn(modeldef):
    """losses(params, inputs, targets) -> per-token nats (B, T), jitted."""
    return jax.jit(lambda params, inputs, targets: merge_model(modeldef, params)(inputs, targets))


def compile_thread(jitted, *args):
    """A thread that, once started, compiles `jitted` for the shapes and dtypes of args; a later call with such
    arguments runs that program without compiling. main() compiles the evaluation program beside the untimed
    steps, not after training (XLA took ~8 s for it on an H200 with a cold cache). Only shapes go to the
    thread (the training step donates the weights' buffers), and no placements: with them, the call compiled
    again."""
    specs = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), args)
    return threading.Thread(target=lambda: jitted.lower(*specs).compile(), daemon=True)


def export_weights(model):
    """{parameter name: float32 numpy array}: the cross-backend exchange format (see the module docstring)."""
    return {name: np.asarray(p, dtype=np.float32) for name, p in split_model(model)[1].items()}


def import_weights(model, arrays):
    """Load export_weights' dict into model, keeping each parameter's dtype. Names must match exactly."""
    modeldef, params = split_model(model)
    missing, unexpected = set(params) - set(arrays), set(arrays) - set(params)
    if missing or unexpected:
        raise KeyError(f"weights do not match the model: missing {sorted(missing)}, unexpected {sorted(unexpected)}")
    for name, p in params.items():
        if tuple(arrays[name].shape) != tuple(p.shape):
            raise ValueError(f"{name}: shape {tuple(arrays[name].shape)}, the model has {tuple(p.shape)}")
    state = nnx.from_flat_state({modeldef.paths[n]: jnp.asarray(arrays[n], p.dtype) for n, p in params.items()})
    nnx.update(model, state)


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------


def peak_memory_mb():
    stats = jax.devices()[0].memory_stats() if on_gpu() else None
    if stats and "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"] / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # peak RSS (KiB on Linux)


def fail(message):
    print(f"\nFAIL: {message}", flush=True)
    sys.exit(1)


def main(profile=None):
    """Train under the platform profile (bench/gpu.py passes one with a shorter budget), evaluate, summarise."""
    t_start = time.time()
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")  # read when the GPU is first used; default .75
    from common.data import cache_dir
    from common.evaluate import evaluate_bpb
    from common.loader import make_loader
    from common.platform import get_profile, peak_flops
    from common.summary import print_summary
    from common.tokenizer import Tokenizer

    # XLA's persistent compilation cache: a rerun, or an edit that leaves the compiled programs as they were,
    # loads them instead of compiling (on an H200 the first step and the evaluation compiled for ~19 s).
    jax.config.update("jax_compilation_cache_dir", str(cache_dir() / "jax"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_compilation_cache_max_size", 4 * 2**30)  # then the least recently used go
    profile = profile or get_profile()
    gpu = on_gpu()
    depth = DEPTH or profile.depth
    device_batch = DEVICE_BATCH_SIZE or profile.device_batch_size
    total_batch = TOTAL_BATCH_SIZE or profile.total_batch_size
    seq_len, budget = profile.max_seq_len, profile.time_budget
    if total_batch % (device_batch * seq_len):
        fail(f"TOTAL_BATCH_SIZE {total_batch} is not a multiple of DEVICE_BATCH_SIZE x sequence length "
             f"({device_batch} x {seq_len}); change one of them.")
    accum_steps = total_batch // (device_batch * seq_len)

    tokenizer = Tokenizer.load()
    config = model_config(depth, seq_len, tokenizer.vocab_size)
    model = build_model(config, gpu=gpu)
    flops_per_token = model.flops_per_token()
    modeldef, params = split_model(model)
    num_params = sum(p.size for p in params.values())
    optimizer = build_optimizer(params, ortho_dtype=jnp.bfloat16 if gpu else jnp.float32)
    opt_state = optimizer.init(params)
    train_step = make_train_step(modeldef, optimizer)
    device_name = jax.devices()[0].device_kind if gpu else "cpu"
    peak = peak_flops(device_name, profile)
    print(f"profile {profile.name} | device {device_name} | jax {jax.__version__} | {model.compute_dtype.__name__}")
    print(f"model {asdict(config)} | {num_params / 1e6:.1f}M params | {flops_per_token:.3e} FLOPs/token")
    print(f"batch {device_batch} x {seq_len} x {accum_steps} accumulation = {total_batch} tokens/step | budget {budget}s")

    loader = make_loader("train", device_batch, seq_len, tokenizer=tokenizer)  # the files' order, as upstream
    losses = make_loss_fn(modeldef)  # the evaluation's per-token losses
    eval_batch = np.zeros((device_batch, seq_len), np.int32)
    eval_compile = compile_thread(losses, params, eval_batch, eval_batch)

    def next_batch():
        x, y, epoch = next(loader)
        return jax.device_put(x), jax.device_put(y), epoch

    def read_loss(pending):
        """The loss of an earlier step, read once the step is done; fail fast if it diverged."""
        step, loss = pending
        loss = float(loss)  # waits for that step on the device
        if not math.isfinite(loss) or loss > 100:
            fail(f"training loss is {loss} at step {step}: training diverged (NaN or exploding loss). "
                 "Lower a learning rate or undo the last change.")
        return loss

    step, training_time, untimed_time, epoch, t_log, smooth_loss = 0, 0.0, 0.0, 0, 0.0, 0.0
    pending = None  # the previous step's loss, read after this step is queued so that the GPU never idles
    t_training_start = t_last = time.time()
    while True:
        if step == profile.untimed_steps and step:  # the evaluation program compiles beside untimed steps only
            eval_compile.join()
            untimed_time, t_last = untimed_time + time.time() - t_last, time.time()
        progress = min(training_time / budget, 1.0)
        batches = []
        for _ in range(accum_steps):
            x, y, epoch = next_batch()
            batches.append((x, y))
        params, opt_state, loss = train_step(params, opt_state, batches, progress, step)
        if pending:
            smooth_loss = 0.9 * smooth_loss + 0.1 * read_loss(pending)
        pending = (step, loss)
        dt, t_last = time.time() - t_last, time.time()  # one step's time, once the pipeline is full
        if step >= profile.untimed_steps:
            training_time += dt
        else:
            untimed_time += dt
        if step == 0:  # the first step made the long-lived objects; stop the GC from scanning them
            gc.collect()
            gc.freeze()
            # After the first step's compilation, not beside it: XLA times candidate kernels on the GPU as it
            # compiles, and two programs tuned at once could each pick slower ones.
            eval_compile.start()
        if time.time() - t_log > 1.0 or step <= profile.untimed_steps:
            t_log = time.time()
            tok_s = total_batch / dt
            shown = f"{smooth_loss / (1 - 0.9 ** step):.4f}" if step else "-"  # losses are read one step late
            print(f"step {step:05d} ({100 * progress:.1f}%) | loss {shown} "
                  f"| lrm {lr_multiplier(progress):.2f} | dt {dt * 1000:.0f}ms | tok/s {tok_s:,.0f} "
                  f"| mfu {100 * flops_per_token * tok_s / peak:.1f}% | epoch {epoch} "
                  f"| left {max(0.0, budget - training_time):.0f}s", flush=True)
        step += 1
        if step > profile.untimed_steps and training_time >= budget:
            break
    read_loss(pending)

    timed_tokens = (step - profile.untimed_steps) * total_batch
    eval_compile.join()

    def loss_fn(inputs, targets):
        return np.asarray(losses(params, inputs, targets))

    t_eval = time.time()
    val_bpb = evaluate_bpb(loss_fn, device_batch, profile)
    print(f"startup_seconds: {t_training_start - t_start:.1f}")   # imports done: data, model, optimizer
    print(f"untimed_seconds: {untimed_time:.1f}")                 # the profile's untimed (compilation) steps
    print(f"eval_seconds:    {time.time() - t_eval:.1f}")
    print_summary(
        val_bpb=val_bpb, training_seconds=training_time, total_seconds=time.time() - t_start,
        peak_vram_mb=peak_memory_mb(),
        mfu_percent=100 * flops_per_token * timed_tokens / training_time / peak if training_time else 0.0,
        total_tokens_M=step * total_batch / 1e6, num_steps=step, num_params_M=num_params / 1e6, depth=depth,
        backend="jax", profile=profile.name, tokens_per_sec=timed_tokens / training_time if training_time else 0.0)


if __name__ == "__main__":
    run_cli(main)
