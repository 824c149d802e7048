"""The MLX trainer (BACKEND=mlx): the reference trainer (backends/cuda/train.py) ported to MLX, for Apple
silicon. One file, read top to bottom: model, optimizer, hyperparameters, training loop.

Runs on an Apple GPU (Metal: bf16 compute, float32 weights and optimizer state) and on MLX's CPU build
(float32 throughout; Linux CI uses it). Importing this file does no work; main() runs under __main__, so tests
and the parity harness can build the model and take single steps.

Parameter names (tree_flatten(model.parameters()) keys) are the reference's, with the same shapes: they are
the exchange format between backends (export_weights / import_weights). L = n_layer, D = n_embd,
H = n_head, V = vocab_size, VE = the layers with value embeddings (i % 2 == (L - 1) % 2). Linear weights are
(out_features, in_features), applied as y = x @ W.T, as in PyTorch.

    wte.weight                     (V, D)      token embedding
    blocks.{i}.attn.c_q.weight     (D, D)
    blocks.{i}.attn.c_k.weight     (D, D)
    blocks.{i}.attn.c_v.weight     (D, D)
    blocks.{i}.attn.c_proj.weight  (D, D)
    blocks.{i}.attn.ve_gate.weight (H, 32)     i in VE only
    blocks.{i}.mlp.c_fc.weight     (4D, D)
    blocks.{i}.mlp.c_proj.weight   (D, 4D)
    value_embeds.{i}.weight        (V, D)      i in VE only
    lm_head.weight                 (V, D)
    resid_lambdas                  (L,)
    x0_lambdas                     (L,)

Conventions (the reference's): RMSNorm without weights, eps float32's machine epsilon, over the last axis; RoPE on halves
(y1 = x1 cos + x2 sin, y2 = -x1 sin + x2 cos; base 10000), applied to q and k before their RMSNorm;
attention scale 1/sqrt(head_dim); a sliding window of w lets query i see keys j with 0 <= i - j <= w; the per-layer
mix resid_lambda * x + x0_lambda * x0 with the float32 scalars at float32, rounded once to the compute dtype.

MLX specifics: arrays are immutable values, so the optimizer is a pure function (params, grads, state,
hyperparameters) -> (params, state), compiled once with mx.compile; schedule values enter as arrays, so
changing them never recompiles. The loss-and-gradient function is compiled with the model's state as an
implicit input. Nothing runs until mx.eval (or .item()), once per micro-batch.
"""

import gc
import math
import sys
import time
from dataclasses import asdict, dataclass

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten, tree_map_with_path

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
    return mx.fast.rms_norm(x, None, mx.finfo(mx.float32).eps)  # float32's machine epsilon for any input, as the reference


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
    return windows


def apply_rotary(x, cos, sin):
    d = x.shape[-1] // 2
    x1, x2 = x[..., :d], x[..., d:]
    return mx.concatenate([x1 * cos + x2 * sin, x2 * cos - x1 * sin], axis=-1)


_rotary_tables = {}
_window_masks = {}


def rotary_table(T, head_dim, dtype):
    """(cos, sin), each (1, T, 1, head_dim / 2), computed in float32 and cast once per (T, head_dim, dtype)."""
    key = (T, head_dim, dtype)
    if key not in _rotary_tables:
        inv_freq = 1.0 / 10000 ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim)
        freqs = np.outer(np.arange(T, dtype=np.float32), inv_freq)
        cos, sin = (mx.array(f[None, :, None, :]).astype(dtype) for f in (np.cos(freqs), np.sin(freqs)))
        mx.eval(cos, sin)
        _rotary_tables[key] = cos, sin
    return _rotary_tables[key]


def sliding_window_mask(T, window):
    """Boolean (T, T) mask, True where query i may attend key j (0 <= i - j <= window). Cached per (T, window)."""
    key = (T, window)
    if key not in _window_masks:
        i = mx.arange(T)
        dist = i[:, None] - i[None, :]
        mask = (dist >= 0) & (dist <= window)
        mx.eval(mask)
        _window_masks[key] = mask
    return _window_masks[key]


def attention(q, k, v, window):
    """Causal attention over (B, H, T, hd), limited to `window` keys back."""
    T = q.shape[2]
    mask = "causal" if window >= T else sliding_window_mask(T, window)
    return mx.fast.scaled_dot_product_attention(q, k, v, scale=q.shape[-1] ** -0.5, mask=mask)


def set_parameters(model, flat):
    """model.update from a flat {name: array}, nested like the model (value_embeds is a dict keyed "1", "3", ...,
    which tree_unflatten would turn into a list)."""
    model.update(tree_map_with_path(lambda name, _: flat[name], model.parameters()))


def linear(layer, x):
    """y = x @ W.T in x's dtype (bf16 compute against float32 weights on Metal, like autocast)."""
    return x @ layer.weight.astype(x.dtype).T


class CausalSelfAttention(nn.Module):
    ve_gate_channels = 32

    def __init__(self, config, layer_idx):
        super().__init__()
        self.n_head = config.n_head
        self.head_dim = config.n_embd // config.n_head
        D = config.n_embd
        self.c_q = nn.Linear(D, D, bias=False)
        self.c_k = nn.Linear(D, D, bias=False)
        self.c_v = nn.Linear(D, D, bias=False)
        self.c_proj = nn.Linear(D, D, bias=False)
        if has_ve(layer_idx, config.n_layer):
            self.ve_gate = nn.Linear(self.ve_gate_channels, self.n_head, bias=False)

    def __call__(self, x, ve, cos, sin, window):
        B, T, _ = x.shape
        q = linear(self.c_q, x).reshape(B, T, self.n_head, self.head_dim)
        k = linear(self.c_k, x).reshape(B, T, self.n_head, self.head_dim)
        v = linear(self.c_v, x).reshape(B, T, self.n_head, self.head_dim)
        if ve is not None:  # value residual, gated per head by the input (gate 1.0 at init)
            gate = 2 * mx.sigmoid(linear(self.ve_gate, x[..., :self.ve_gate_channels]))
            v = v + gate[..., None] * ve.reshape(B, T, self.n_head, self.head_dim)
        q = norm(apply_rotary(q, cos, sin))
        k = norm(apply_rotary(k, cos, sin))
        y = attention(q.transpose(0, 2, 1, 3), k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), window)
        return linear(self.c_proj, y.transpose(0, 2, 1, 3).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=False)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=False)

    def __call__(self, x):
        return linear(self.c_proj, mx.square(nn.relu(linear(self.c_fc, x))))


class Block(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.attn = CausalSelfAttention(config, layer_idx)
        self.mlp = MLP(config)

    def __call__(self, x, ve, cos, sin, window):
        x = x + self.attn(norm(x), ve, cos, sin, window)
        return x + self.mlp(norm(x))


class GPT(nn.Module):
    def __init__(self, config, compute_dtype=mx.float32):
        super().__init__()
        self.config = config
        self.compute_dtype = compute_dtype
        L, D, V = config.n_layer, config.n_embd, config.vocab_size
        self.wte = nn.Embedding(V, D)
        self.blocks = [Block(config, i) for i in range(L)]
        self.value_embeds = {str(i): nn.Embedding(V, D) for i in range(L) if has_ve(i, L)}
        self.lm_head = nn.Linear(D, V, bias=False)
        self.resid_lambdas = mx.ones((L,))
        self.x0_lambdas = mx.zeros((L,))

    def init_weights(self, seed):
        """The reference's weights for the seed: its distributions in its order, drawn on the host as torch draws
        them on an H100/H200 (common/cuda_draws.py), so that mlx starts where the cuda backend starts."""
        gen = CudaGenerator(seed)
        D = self.config.n_embd
        s = (3 / D) ** 0.5  # uniform(-s, s) has the std of normal(0, 1/sqrt(D))
        uniform = lambda w: mx.array(gen.uniform(w.shape, -s, s))
        self.wte.weight = mx.array(gen.normal(self.wte.weight.shape, 1.0))
        self.lm_head.weight = mx.array(gen.normal(self.lm_head.weight.shape, 0.001))
        for block in self.blocks:
            for lin in (block.attn.c_q, block.attn.c_k, block.attn.c_v, block.mlp.c_fc):
                lin.weight = uniform(lin.weight)
            block.attn.c_proj.weight = mx.zeros_like(block.attn.c_proj.weight)
            block.mlp.c_proj.weight = mx.zeros_like(block.mlp.c_proj.weight)
            if "ve_gate" in block.attn:
                block.attn.ve_gate.weight = mx.zeros_like(block.attn.ve_gate.weight)
        for ve in self.value_embeds.values():
            ve.weight = uniform(ve.weight)
        # Where upstream's first step leaves them at its seed, held on that step: the reference's init_weights.
        self.resid_lambdas = mx.full((self.config.n_layer,), 1.005)
        self.x0_lambdas = mx.full((self.config.n_layer,), 0.6)
        mx.eval(self.parameters())

    def hidden_states(self, idx):
        """The forward pass layer by layer: the normalised embedding x0, the residual stream after each block,
        then the soft-capped float32 logits (B, T, V)."""
        B, T = idx.shape
        dtype = self.compute_dtype
        cos, sin = rotary_table(T, self.config.n_embd // self.config.n_head, dtype)
        x = x0 = norm(self.wte(idx).astype(dtype))
        states = [x0]
        for i, (block, window) in enumerate(zip(self.blocks, window_sizes(self.config))):
            # the mix with the float32 scalars at float32, rounded once, as the reference's compiled code
            x = (self.resid_lambdas[i] * x.astype(mx.float32) + self.x0_lambdas[i] * x0.astype(mx.float32)).astype(dtype)
            ve = self.value_embeds[str(i)](idx).astype(dtype) if str(i) in self.value_embeds else None
            x = block(x, ve, cos, sin, window)
            states.append(x)
        logits = linear(self.lm_head, norm(x)).astype(mx.float32)
        states.append(15 * mx.tanh(logits / 15))  # soft-cap
        return states

    def __call__(self, idx, targets=None):
        """Per-token cross-entropy in nats, float32, shape (B, T); the logits when targets is None."""
        logits = self.hidden_states(idx)[-1]
        if targets is None:
            return logits
        return nn.losses.cross_entropy(logits, targets, reduction="none")

    def flops_per_token(self):
        """Training FLOPs per token (forward + backward), counted as upstream: 6 x matmul weights + attention."""
        sizes = {name: p.size for name, p in tree_flatten(self.parameters())}
        embeddings = sum(n for name, n in sizes.items() if name.startswith(("wte.", "value_embeds.")))
        scalars = sizes["resid_lambdas"] + sizes["x0_lambdas"]
        matmul = sum(sizes.values()) - embeddings - scalars
        head_dim = self.config.n_embd // self.config.n_head
        attn = sum(12 * self.config.n_head * head_dim * min(w, self.config.sequence_len)
                   for w in window_sizes(self.config))
        return 6 * matmul + attn


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


def lerp(start, end, weight):
    return start + weight * (end - start)


def polar_express(g, dtype, steps=5):
    """Approximately orthogonalise each matrix of the stack g (N, rows, cols): U V^T of its SVD."""
    x = g.astype(dtype)
    x = x / (mx.sqrt(mx.sum(mx.square(x), axis=(-2, -1), keepdims=True)) * 1.02 + 1e-6)
    tall = x.shape[-2] > x.shape[-1]
    if tall:  # iterate on the smaller Gram matrix
        x = x.swapaxes(-1, -2)
    for a, b, c in POLAR_EXPRESS[:steps]:
        A = x @ x.swapaxes(-1, -2)
        x = a * x + (b * A + c * (A @ A)) @ x
    return (x.swapaxes(-1, -2) if tall else x).astype(g.dtype)


def adamw_update(p, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, wd):
    """Returns (p, exp_avg, exp_avg_sq) after one AdamW step (the reference's order of operations)."""
    p = p * (1 - lr * wd)
    exp_avg = lerp(exp_avg, grad, 1 - beta1)
    exp_avg_sq = lerp(exp_avg_sq, mx.square(grad), 1 - beta2)
    denom = mx.sqrt(exp_avg_sq / (1 - beta2 ** step)) + eps
    return p - lr / (1 - beta1 ** step) * exp_avg / denom, exp_avg, exp_avg_sq


def muon_update(params, grads, momentum_buf, second_buf, momentum, lr, wd, beta2, ortho_dtype):
    """One Muon step on a stack of same-shape matrices (N, rows, cols). Returns (params, momentum_buf, second_buf)."""
    momentum_buf = lerp(momentum_buf, grads, 1 - momentum)
    g = lerp(grads, momentum_buf, momentum)  # Nesterov
    g = polar_express(g, ortho_dtype)
    # NorMuon: equalise the update's per-row (per-column for wide matrices) scale with a second moment,
    # then restore the orthogonalised update's overall norm.
    red = -1 if g.shape[-2] >= g.shape[-1] else -2
    v = mx.mean(mx.square(g), axis=red, keepdims=True)
    second_buf = lerp(second_buf, v, 1 - beta2)
    scale = mx.rsqrt(mx.maximum(second_buf, 1e-10))
    norm_before = mx.sqrt(mx.sum(v, axis=(-2, -1), keepdims=True))
    norm_after = mx.sqrt(mx.sum(v * mx.square(scale), axis=(-2, -1), keepdims=True))
    g = g * (scale * norm_before / mx.maximum(norm_after, 1e-10))
    # Cautious weight decay: decay only where the update and the weight agree in sign.
    params = params - (lr * g + lr * wd * params * ((g * params) >= 0))
    return params, momentum_buf, second_buf


class MuonAdamW:
    """The reference's MuonAdamW over MLX arrays. param_groups as the reference's, except that "params"
    holds parameter names (MLX arrays are values, not handles): kind 'adamw' (lr, betas, eps,
    weight_decay) and kind 'muon' (lr, momentum, beta2, weight_decay; all params of one shape), each with
    a name and its initial lr and weight decay. set_schedules edits the groups' numbers between steps."""

    def __init__(self, param_groups, ortho_dtype=mx.float32):
        self.param_groups = param_groups
        self.ortho_dtype = ortho_dtype
        self.state = None  # {"step": array, group name: {...buffers}}, made on the first step
        self._update = mx.compile(self._pure_update)

    def init_state(self, params):
        state = {"step": mx.array(0.0)}
        for group in self.param_groups:
            if group["kind"] == "adamw":
                state[group["name"]] = {n: {"exp_avg": mx.zeros_like(params[n]), "exp_avg_sq": mx.zeros_like(params[n])}
                                        for n in group["params"]}
            else:
                rows, cols = params[group["params"][0]].shape
                stat_shape = (len(group["params"]), rows, 1) if rows >= cols else (len(group["params"]), 1, cols)
                state[group["name"]] = {"momentum_buffer": mx.zeros((len(group["params"]), rows, cols)),
                                        "second_momentum_buffer": mx.zeros(stat_shape)}
        return state

    def hyperparameters(self, params):
        """The groups' current numbers as float32 arrays: inputs of the compiled update, never constants."""
        f = lambda x: mx.array(float(x), dtype=mx.float32)
        hyper = {}
        for group in self.param_groups:
            if group["kind"] == "adamw":
                hyper[group["name"]] = dict(lr=f(group["lr"]), beta1=f(group["betas"][0]), beta2=f(group["betas"][1]),
                                            eps=f(group["eps"]), wd=f(group["weight_decay"]))
            else:
                rows, cols = params[group["params"][0]].shape
                hyper[group["name"]] = dict(lr=f(group["lr"] * max(1.0, rows / cols) ** 0.5), momentum=f(group["momentum"]),
                                            beta2=f(group["beta2"]), wd=f(group["weight_decay"]))
        return hyper

    def _pure_update(self, params, grads, state, hyper):
        params, state = dict(params), dict(state)
        step = state["step"] + 1
        state["step"] = step
        for group in self.param_groups:
            name, h = group["name"], hyper[group["name"]]
            if group["kind"] == "adamw":
                buffers = {}
                for n in group["params"]:
                    s = state[name][n]
                    params[n], exp_avg, exp_avg_sq = adamw_update(params[n], grads[n], s["exp_avg"], s["exp_avg_sq"], step,
                                                                  h["lr"], h["beta1"], h["beta2"], h["eps"], h["wd"])
                    buffers[n] = {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}
                state[name] = buffers
            else:
                names = group["params"]
                stacked, momentum_buf, second_buf = muon_update(
                    mx.stack([params[n] for n in names]), mx.stack([grads[n] for n in names]),
                    state[name]["momentum_buffer"], state[name]["second_momentum_buffer"],
                    h["momentum"], h["lr"], h["wd"], h["beta2"], self.ortho_dtype)
                for j, n in enumerate(names):
                    params[n] = stacked[j]
                state[name] = {"momentum_buffer": momentum_buf, "second_momentum_buffer": second_buf}
        return params, state

    def step(self, model, grads):
        """One step: grads is {name: array} (flat, the parameter names). Lazy; the caller evaluates."""
        params = dict(tree_flatten(model.parameters()))
        if self.state is None:
            self.state = self.init_state(params)
        new_params, self.state = self._update(params, grads, self.state, self.hyperparameters(params))
        set_parameters(model, new_params)


# ---------------------------------------------------------------------------
# Hyperparameters (edit these directly; None means the platform profile's value)
# ---------------------------------------------------------------------------

# Model
DEPTH = None               # transformer layers (profile: h100 8, gpu 6, apple 4, cpu 2, smoke 2)
ASPECT_RATIO = 64          # model_dim = DEPTH * ASPECT_RATIO, rounded up to a multiple of HEAD_DIM
HEAD_DIM = 128             # attention head dimension
WINDOW_PATTERN = "SSSL"    # per-layer attention window: L = full context, S = half; the last layer is always L

# Batch
TOTAL_BATCH_SIZE = None    # tokens per optimizer step (profile: apple 2**16)
DEVICE_BATCH_SIZE = None   # sequences per forward/backward; lower it if memory runs out (profile: apple 16)

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


def use_bf16():
    """bf16 compute where the device has it natively (an Apple GPU); float32 on MLX's CPU build."""
    return mx.default_device() == mx.gpu and mx.metal.is_available()


def build_model(config, seed=SEED, compute_dtype=None):
    """An initialised GPT with float32 weights; compute in bf16 on Metal, float32 on the CPU."""
    mx.random.seed(seed)
    if compute_dtype is None:
        compute_dtype = mx.bfloat16 if use_bf16() else mx.float32
    model = GPT(config, compute_dtype)
    model.init_weights(seed)
    return model


def build_optimizer(model, matrix_lr=MATRIX_LR, embedding_lr=EMBEDDING_LR, unembedding_lr=UNEMBEDDING_LR,
                    scalar_lr=SCALAR_LR, weight_decay=WEIGHT_DECAY, adam_betas=ADAM_BETAS, ortho_dtype=None):
    """MuonAdamW with the reference's groups and LR scaling. Polar Express runs in ortho_dtype: by default
    bf16 on Metal (as the reference on CUDA), float32 on the CPU."""
    scale = (model.config.n_embd / 768) ** -0.5  # AdamW LRs were tuned at model_dim 768
    adamw = dict(kind="adamw", betas=adam_betas, eps=1e-10, weight_decay=0.0)
    shapes = {name: tuple(p.shape) for name, p in tree_flatten(model.parameters())}
    value_embeds = [n for n in shapes if n.startswith("value_embeds.")]
    groups = [
        dict(adamw, name="lm_head", params=["lm_head.weight"], lr=unembedding_lr * scale),
        dict(adamw, name="wte", params=["wte.weight"], lr=embedding_lr * scale),
        dict(adamw, name="value_embeds", params=value_embeds, lr=embedding_lr * scale),
        dict(adamw, name="resid_lambdas", params=["resid_lambdas"], lr=scalar_lr * 0.01),
        dict(adamw, name="x0_lambdas", params=["x0_lambdas"], lr=scalar_lr, betas=(0.96, 0.95)),
    ]
    matrices = [n for n in shapes if n.startswith("blocks.")]
    for shape in sorted({shapes[n] for n in matrices}):
        groups.append(dict(kind="muon", name=f"muon_{shape[0]}x{shape[1]}", params=[n for n in matrices if shapes[n] == shape],
                           lr=matrix_lr, momentum=MUON_MOMENTUM[1], beta2=0.95, weight_decay=weight_decay))
    for g in groups:
        g["initial_lr"], g["initial_weight_decay"] = g["lr"], g["weight_decay"]
    assert sorted(n for g in groups for n in g["params"]) == sorted(shapes)
    if ortho_dtype is None:
        ortho_dtype = mx.bfloat16 if use_bf16() else mx.float32
    return MuonAdamW(groups, ortho_dtype)


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


def set_schedules(optimizer, progress, step):
    """LR warmup/warmdown and weight-decay decay on training-time progress in [0, 1]; the Muon momentum ramp
    on the step count (0 for the first step), as the reference."""
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * lr_multiplier(progress)
        if group["kind"] == "muon":
            group["momentum"] = muon_momentum(step)
            group["weight_decay"] = group["initial_weight_decay"] * (1 - progress)


def zero_scalar_gradients(grads):
    """The gradients with the scalar mixing weights' zeroed; train_step does it on the first step, as the
    reference (its zero_scalar_gradients says why: at init their gradient is rounding noise)."""
    return {name: mx.zeros_like(g) if name in ("resid_lambdas", "x0_lambdas") else g for name, g in grads.items()}


def loss_and_grad_fn(model):
    """Compiled (inputs, targets) -> (mean loss, {name: gradient}), reading the model's current weights."""
    value_and_grad = nn.value_and_grad(model, lambda m, x, y: m(x, y).mean())

    def loss_and_grad(x, y):
        loss, grads = value_and_grad(model, x, y)
        return loss, dict(tree_flatten(grads))

    return mx.compile(loss_and_grad, inputs=model.state, outputs=model.state)


def train_step(model, optimizer, batches, progress, step, loss_and_grad=None):
    """One optimizer step: forward/backward over a list of (inputs, targets) micro-batches (mx or numpy
    int32) with their gradients averaged, schedules set for `progress` and `step`. Returns the mean loss as a 0-d array;
    the step is queued (mx.async_eval), not waited for: .item() waits. Pass loss_and_grad_fn(model) to reuse one
    compiled function across steps."""
    loss_and_grad = loss_and_grad or loss_and_grad_fn(model)
    losses, grads = [], None
    for j, (x, y) in enumerate(batches):
        loss, g = loss_and_grad(mx.array(x), mx.array(y))
        grads = g if grads is None else {n: grads[n] + g[n] for n in grads}
        losses.append(loss)
        if j < len(batches) - 1:
            mx.async_eval(grads, losses)  # one micro-batch's graph (and activations) at a time
    if len(batches) > 1:
        grads = {n: gr / len(batches) for n, gr in grads.items()}
    if step == 0:
        grads = zero_scalar_gradients(grads)
    set_schedules(optimizer, progress, step)
    optimizer.step(model, grads)
    loss = mx.mean(mx.stack(losses))
    mx.async_eval(loss, model.parameters(), optimizer.state)
    return loss


def export_weights(model):
    """{parameter name: float32 numpy array}: the cross-backend exchange format (see the module docstring)."""
    return {name: np.array(p.astype(mx.float32)) for name, p in tree_flatten(model.parameters())}


def import_weights(model, arrays):
    """Load export_weights' dict (from any backend) into model, keeping each parameter's dtype. Names must match."""
    params = dict(tree_flatten(model.parameters()))
    missing, unexpected = set(params) - set(arrays), set(arrays) - set(params)
    if missing or unexpected:
        raise KeyError(f"weights do not match the model: missing {sorted(missing)}, unexpected {sorted(unexpected)}")
    new = {}
    for name, p in params.items():
        if tuple(arrays[name].shape) != tuple(p.shape):
            raise ValueError(f"{name}: shape {tuple(arrays[name].shape)}, the model has {tuple(p.shape)}")
        new[name] = mx.array(np.asarray(arrays[name], dtype=np.float32)).astype(p.dtype)
    set_parameters(model, new)
    mx.eval(model.parameters())


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------


def device_name():
    info = mx.device_info() if hasattr(mx, "device_info") else mx.metal.device_info()
    name = info.get("device_name", "unknown")
    return name if mx.default_device() == mx.gpu else f"cpu ({name})"


def peak_memory_mb():
    """MLX's own peak of allocated memory (Metal buffers, or the CPU allocator's)."""
    return mx.get_peak_memory() / 2**20


def fail(message):
    print(f"\nFAIL: {message}", flush=True)
    sys.exit(1)


def main(profile=None):
    """Train under the platform profile (or the one given), evaluate, summarise."""
    t_start = time.time()
    from common.evaluate import evaluate_bpb
    from common.loader import make_loader
    from common.platform import get_profile, peak_flops
    from common.summary import print_summary
    from common.tokenizer import Tokenizer

    profile = profile or get_profile()
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
    model = build_model(config)
    num_params = sum(p.size for _, p in tree_flatten(model.parameters()))
    flops_per_token = model.flops_per_token()
    # On MLX's CPU build the steps are BLAS-bound: compiling gains nothing measurable at smoke size, and a cold
    # start builds its kernels with the C++ compiler (tens of seconds). Compile on the GPU and for long budgets.
    use_compile = mx.default_device() == mx.gpu or budget >= 60
    if not use_compile:
        mx.disable_compile()
    optimizer = build_optimizer(model)
    loss_and_grad = loss_and_grad_fn(model)
    name = device_name()
    peak = peak_flops(name, profile)
    print(f"profile {profile.name} | device {name} | mlx {mx.__version__} | compile {use_compile} "
          f"| compute {model.compute_dtype}")
    print(f"model {asdict(config)} | {num_params / 1e6:.1f}M params | {flops_per_token:.3e} FLOPs/token")
    print(f"batch {device_batch} x {seq_len} x {accum_steps} accumulation = {total_batch} tokens/step | budget {budget}s")

    loader = make_loader("train", device_batch, seq_len, tokenizer=tokenizer)  # the files' order, as upstream

    def read_loss(pending):
        """The loss of an earlier step, read once the step is done; fail fast if it diverged."""
        step, loss = pending
        loss = loss.item()
        if not math.isfinite(loss) or loss > 100:
            fail(f"training loss is {loss} at step {step}: training diverged (NaN or exploding loss). "
                 "Lower a learning rate or undo the last change.")
        return loss

    step, training_time, untimed_time, epoch, t_log, smooth_loss = 0, 0.0, 0.0, 0, 0.0, 0.0
    pending = None  # the previous step's loss, read after this step is queued so that the device never idles
    t_training_start = t_last = time.time()
    while True:
        progress = min(training_time / budget, 1.0)
        batches = []
        for _ in range(accum_steps):
            x, y, epoch = next(loader)
            batches.append((x, y))
        loss = train_step(model, optimizer, batches, progress, step, loss_and_grad)
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
        if step > 0 and (time.time() - t_log > 1.0 or step <= profile.untimed_steps):
            t_log = time.time()
            tok_s = total_batch / dt
            print(f"step {step:05d} ({100 * progress:.1f}%) | loss {smooth_loss / (1 - 0.9 ** step):.4f} "
                  f"| lrm {lr_multiplier(progress):.2f} | dt {dt * 1000:.0f}ms | tok/s {tok_s:,.0f} "
                  f"| mfu {100 * flops_per_token * tok_s / peak:.1f}% | epoch {epoch} "
                  f"| left {max(0.0, budget - training_time):.0f}s", flush=True)
        step += 1
        if step > profile.untimed_steps and training_time >= budget:
            break
    read_loss(pending)

    timed_tokens = (step - profile.untimed_steps) * total_batch
    forward = mx.compile(lambda x, y: model(x, y), inputs=model.state)

    def loss_fn(inputs, targets):
        return np.array(forward(mx.array(inputs), mx.array(targets)).astype(mx.float32))

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
        backend="mlx", profile=profile.name, tokens_per_sec=timed_tokens / training_time if training_time else 0.0)


if __name__ == "__main__":
    run_cli(main)
