"""The reference trainer (BACKEND=cuda): a small GPT trained for a fixed wall-clock budget, then scored in
validation bits per byte. One file, read top to bottom: model, optimizer, hyperparameters, training loop.

Runs on an NVIDIA GPU (bf16 autocast, torch.compile per block, FlexAttention or cuDNN for sliding windows,
Polar Express in bf16, compiled) and on a CPU or Apple GPU (float32 throughout, SDPA with an explicit mask: the
same numbers; compiled on a CPU only for budgets of a minute or more). Importing this file does no work; main()
runs under __main__, so tests and the parity harness can build the model (build_model, tiny_config) and take
single steps (build_optimizer, train_step), exchanging weights through export_weights / import_weights.

Parameter names (model.state_dict() keys) are the exchange format between backends. L = n_layer,
D = n_embd, H = n_head, V = vocab_size, VE = the layers with value embeddings (i % 2 == (L - 1) % 2: every
other layer, the last included). Linear weights are (out_features, in_features), applied as y = x @ W.T.

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

Conventions a port must match: RMSNorm without weights over the last axis, computed in float32 with eps =
float32's machine epsilon, 1.2e-7, for float32 and bf16 inputs alike (F.rms_norm's default, as upstream: the
epsilon of the type it computes in, not 7.8e-3 of bf16); RoPE on halves
(x1 = x[..., :hd/2], x2 = x[..., hd/2:]; y1 = x1 cos + x2 sin, y2 = -x1 sin + x2 cos; base 10000; the tables
bf16 on a GPU, as upstream), applied to q and k before their RMSNorm; attention scale 1/sqrt(head_dim); a
sliding window of w lets query i see keys j with 0 <= i - j <= w (FlashAttention's window_size=(w, 0)); the
per-layer mix resid_lambda * x + x0_lambda * x0 with the float32 scalars at float32, rounded once to x's dtype
(what compiled code computes; eager bf16 would round the scalars first).
"""

import gc
import math
import os
import resource
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from common.errors import ContractError, run_cli

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
    # eps: float32's machine epsilon (bf16 is computed in float32), as upstream. The result keeps x's dtype: from
    # torch 2.12, CUDA autocast runs rms_norm in float32 and returns float32 (pytorch/pytorch#188955), which would
    # turn the bf16 residual stream and the queries and keys float32.
    return F.rms_norm(x, (x.size(-1),)).to(x.dtype)


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
    d = x.size(-1) // 2
    x1, x2 = x[..., :d], x[..., d:]
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1)


_dense_masks = {}
_block_masks = {}


def sliding_window_mask(T, window, device):
    """Boolean (T, T) mask, True where query i may attend key j."""
    key = (T, window, str(device))
    if key not in _dense_masks:
        i = torch.arange(T, device=device)
        dist = i[:, None] - i[None, :]
        _dense_masks[key] = (dist >= 0) & (dist <= window)
    return _dense_masks[key]


def sliding_block_mask(T, window, device, block=128):
    """The same window as a FlexAttention BlockMask over 128 x 128 tiles, built directly from tile arithmetic
    (create_block_mask evaluates the mask on all T x T pairs: 6 s at start-up on an H100)."""
    from torch.nn.attention.flex_attention import BlockMask
    key = (T, window, str(device))
    if key not in _block_masks:
        tiles = torch.arange(T // block)
        gap = (tiles[:, None] - tiles[None, :]) * block  # i - j ranges over gap +- (block - 1) on a tile pair
        full = (gap - (block - 1) >= 0) & (gap + (block - 1) <= window)
        partial = (gap + (block - 1) >= 0) & (gap - (block - 1) <= window) & ~full

        def kv_blocks(visible):  # per query tile: how many kv tiles, and which (listed first)
            order = torch.argsort((~visible).int(), dim=-1, stable=True)
            return visible.sum(-1).int()[None, None].to(device), order.int()[None, None].to(device)

        def in_window(b, h, q, kv):
            return (q >= kv) & (q - kv <= window)
        _block_masks[key] = BlockMask.from_kv_blocks(*kv_blocks(partial), *kv_blocks(full), BLOCK_SIZE=block,
                                                     mask_mod=in_window)
    return _block_masks[key]


def attention(q, k, v, window):
    """Causal attention over (B, H, T, hd), limited to `window` keys back."""
    T = q.size(2)
    if window >= T:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    if q.is_cuda and WINDOW_KERNEL == "cudnn":  # cuDNN's window_left counts the query's own key too
        return torch.ops.cudnn.sdpa_fwd(q, k, v, q.size(-1) ** -0.5, is_causal=True, window_left=window + 1,
                                        window_right=0, return_lse=True)[0]
    if q.is_cuda and T % 128 == 0:
        from torch.nn.attention.flex_attention import flex_attention
        return flex_attention(q, k, v, block_mask=sliding_block_mask(T, window, q.device))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=sliding_window_mask(T, window, q.device))


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
        self.ve_gate = nn.Linear(self.ve_gate_channels, self.n_head, bias=False) if has_ve(layer_idx, config.n_layer) else None

    def forward(self, x, idx, ve_weight, cos, sin, window):
        B, T, _ = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_head, self.head_dim)
        if ve_weight is not None:  # value residual, gated per head by the input (gate 1.0 at init)
            # Looked up here, inside the compiled block, so the lookup fuses into this sum (as in upstream's
            # whole-model graph) instead of writing a (B, T, D) tensor per layer.
            ve = F.embedding(idx, ve_weight).view(B, T, self.n_head, self.head_dim)
            gate = 2 * torch.sigmoid(self.ve_gate(x[..., :self.ve_gate_channels]))
            v = v + gate.unsqueeze(-1) * ve
        cos, sin = cos.to(q.dtype), sin.to(q.dtype)  # on the CPU float32; on the GPU stored bf16 (store_in_bf16)
        q = norm(apply_rotary(q, cos, sin))
        k = norm(apply_rotary(k, cos, sin))
        y = attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), window)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=False)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=False)

    def forward(self, x):
        return self.c_proj(F.relu(self.c_fc(x)).square())


class Block(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.attn = CausalSelfAttention(config, layer_idx)
        self.mlp = MLP(config)

    def forward(self, x, x0, resid_lambda, x0_lambda, idx, ve_weight, cos, sin, window):
        x = resid_lambda * x + x0_lambda * x0  # per-layer mix of the residual stream and the embedding
        x = x + self.attn(norm(x), idx, ve_weight, cos, sin, window)
        return x + self.mlp(norm(x))


class LMHead(nn.Linear):
    """Final RMSNorm, unembedding, logit soft-cap at 15 and per-token cross-entropy (nats, float32)."""

    def forward(self, x, targets=None):
        logits = super().forward(norm(x)).float()
        logits = 15 * torch.tanh(logits / 15)
        if targets is None:
            return logits
        # logsumexp(logits) - the target's logit: F.cross_entropy's math, but its gradient (softmax - one-hot)
        # is one elementwise kernel, where F.cross_entropy's backward reduces over the vocabulary again. The
        # one-hot is a comparison, not a gather, whose backward inductor makes a zero-filled buffer and a scatter.
        peak = logits.detach().amax(-1, keepdim=True)  # logsumexp does not depend on it: no gradient
        lse = (logits - peak).exp().sum(-1).log() + peak.squeeze(-1)
        hit = targets.unsqueeze(-1) == torch.arange(logits.size(-1), device=logits.device)
        return lse - (logits * hit).sum(-1)


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.windows = window_sizes(config)
        L, D, V = config.n_layer, config.n_embd, config.vocab_size
        self.wte = nn.Embedding(V, D)
        self.blocks = nn.ModuleList([Block(config, i) for i in range(L)])
        self.value_embeds = nn.ModuleDict({str(i): nn.Embedding(V, D) for i in range(L) if has_ve(i, L)})
        self.lm_head = LMHead(D, V, bias=False)
        self.resid_lambdas = nn.Parameter(torch.ones(L))
        self.x0_lambdas = nn.Parameter(torch.zeros(L))
        self.register_buffer("cos", torch.empty(1, config.sequence_len, 1, D // config.n_head // 2), persistent=False)
        self.register_buffer("sin", torch.empty_like(self.cos), persistent=False)

    @torch.no_grad()
    def init_weights(self):
        """The rotary tables and the initial weights: upstream's distributions, drawn in upstream's order, so a
        model built on the meta device (build_model) starts from upstream's exact weights for the same seed."""
        head_dim = self.config.n_embd // self.config.n_head
        inv_freq = 1.0 / 10000 ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=self.cos.device) / head_dim)
        freqs = torch.outer(torch.arange(self.config.sequence_len, dtype=torch.float32, device=self.cos.device), inv_freq)
        self.cos.copy_(freqs.cos()[None, :, None, :])
        self.sin.copy_(freqs.sin()[None, :, None, :])
        s = 3**0.5 * self.config.n_embd**-0.5  # uniform(-s, s) has the std of normal(0, 1/sqrt(D))
        nn.init.normal_(self.wte.weight, std=1.0)
        nn.init.normal_(self.lm_head.weight, std=0.001)
        for block in self.blocks:
            for lin in (block.attn.c_q, block.attn.c_k, block.attn.c_v, block.mlp.c_fc):
                nn.init.uniform_(lin.weight, -s, s)
            nn.init.zeros_(block.attn.c_proj.weight)
            nn.init.zeros_(block.mlp.c_proj.weight)
            if block.attn.ve_gate is not None:
                nn.init.zeros_(block.attn.ve_gate.weight)
        for ve in self.value_embeds.values():
            nn.init.uniform_(ve.weight, -s, s)
        # Where upstream's first AdamW step leaves them at its seed (one step of SCALAR_LR up from 1.0 and 0.1);
        # train_step holds them on that step (zero_scalar_gradients), so no draw can send them the other way.
        self.resid_lambdas.fill_(1.005)
        self.x0_lambdas.fill_(0.6)

    def forward(self, idx, targets=None):
        """Per-token cross-entropy in nats, float32, shape (B, T); the logits when targets is None."""
        T = idx.size(1)
        cos, sin = self.cos[:, :T], self.sin[:, :T]
        x = x0 = self.embed(idx)
        for i, block in enumerate(self.blocks):
            ve_weight = self.value_embeds[str(i)].weight if str(i) in self.value_embeds else None
            x = block(x, x0, self.resid_lambdas[i], self.x0_lambdas[i], idx, ve_weight, cos, sin, self.windows[i])
        return self.lm_head(x, targets)

    def embed(self, idx):
        """The normalised token embedding x0 (compile_model compiles this too)."""
        return norm(self.wte(idx))

    def flops_per_token(self):
        """Training FLOPs per token (forward + backward), counted as upstream: 6 x matmul weights + attention."""
        embeddings = self.wte.weight.numel() + sum(ve.weight.numel() for ve in self.value_embeds.values())
        scalars = self.resid_lambdas.numel() + self.x0_lambdas.numel()
        matmul = sum(p.numel() for p in self.parameters()) - embeddings - scalars
        head_dim = self.config.n_embd // self.config.n_head
        attn = sum(12 * self.config.n_head * head_dim * min(w, self.config.sequence_len) for w in self.windows)
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


def polar_express(g, dtype, steps=5):
    """Approximately orthogonalise each matrix of the stack g (N, rows, cols): U V^T of its SVD."""
    x = g.to(dtype)
    x = x / (x.norm(dim=(-2, -1), keepdim=True) * 1.02 + 1e-6)
    tall = x.size(-2) > x.size(-1)
    if tall:  # iterate on the smaller Gram matrix
        x = x.mT
    for a, b, c in POLAR_EXPRESS[:steps]:
        A = x @ x.mT
        x = a * x + (b * A + c * (A @ A)) @ x
    return (x.mT if tall else x).to(g.dtype)


def adamw_update(p, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, wd):
    """In float32 whatever the storage dtype, rounding once per stored tensor, as upstream's compiled kernel
    does (op-by-op bf16 arithmetic on the GPU's bf16 embeddings would round every intermediate)."""
    p32, m, v = p.float(), exp_avg.float(), exp_avg_sq.float()  # the tensors themselves when float32
    grad = grad.float()
    p32.mul_(1 - lr * wd)
    m.lerp_(grad, 1 - beta1)
    v.lerp_(grad.square(), 1 - beta2)
    p32.sub_(lr / (1 - beta1 ** step) * m / ((v / (1 - beta2 ** step)).sqrt() + eps))
    for stored, value in ((p, p32), (exp_avg, m), (exp_avg_sq, v)):
        if stored is not value:
            stored.copy_(value)


def muon_update(params, grads, momentum_buf, second_buf, momentum, lr, wd, beta2, ortho_dtype, orthogonalise):
    """One Muon step on a stack of same-shape matrices (N, rows, cols), in place on params."""
    momentum_buf.lerp_(grads, 1 - momentum)
    g = grads.lerp(momentum_buf, momentum)  # Nesterov
    g = orthogonalise(g, ortho_dtype)
    # NorMuon: equalise the update's per-row (per-column for wide matrices) scale with a second moment,
    # then restore the orthogonalised update's overall norm.
    red = -1 if g.size(-2) >= g.size(-1) else -2
    v = g.square().mean(dim=red, keepdim=True)
    second_buf.lerp_(v, 1 - beta2)
    scale = second_buf.clamp_min(1e-10).rsqrt()
    norm_before = v.sum(dim=(-2, -1), keepdim=True).sqrt()
    norm_after = (v * scale.square()).sum(dim=(-2, -1), keepdim=True).sqrt()
    g = g * (scale * norm_before / norm_after.clamp_min(1e-10))
    # Cautious weight decay: decay only where the update and the weight agree in sign.
    params.sub_(lr * g + lr * wd * params * ((g * params) >= 0))


class MuonAdamW(torch.optim.Optimizer):
    """Groups of kind 'adamw' (lr, betas, eps, weight_decay) and 'muon' (lr, momentum, beta2, weight_decay;
    all params of one shape). Every group also has a name and its initial lr and weight decay.

    Runs eagerly (compiling all of it measured 0.6% faster steps on an H100 for 18 s more cold start), but for
    Polar Express, which compile_optimizer compiles on a GPU."""

    def __init__(self, param_groups):
        super().__init__(param_groups, defaults={})
        self.orthogonalise = polar_express

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            if group["kind"] == "adamw":
                for p in group["params"]:
                    state = self.state[p]
                    if not state:
                        state.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
                    state["step"] += 1
                    adamw_update(p, p.grad, state["exp_avg"], state["exp_avg_sq"], state["step"], group["lr"],
                                 group["betas"][0], group["betas"][1], group["eps"], group["weight_decay"])
            else:
                params = group["params"]
                rows, cols = params[0].shape
                state = self.state[params[0]]
                if not state:
                    stat_shape = (len(params), rows, 1) if rows >= cols else (len(params), 1, cols)
                    state["momentum_buffer"] = torch.zeros(len(params), rows, cols, device=params[0].device)
                    state["second_momentum_buffer"] = torch.zeros(stat_shape, device=params[0].device)
                stacked = torch.stack(params)
                ortho_dtype = torch.bfloat16 if stacked.is_cuda else torch.float32
                muon_update(stacked, torch.stack([p.grad for p in params]), state["momentum_buffer"],
                            state["second_momentum_buffer"], group["momentum"], group["lr"] * max(1.0, rows / cols) ** 0.5,
                            group["weight_decay"], group["beta2"], ortho_dtype, self.orthogonalise)
                torch._foreach_copy_(params, list(stacked.unbind(0)))


# ---------------------------------------------------------------------------
# Hyperparameters (edit these directly; None means the platform profile's value)
# ---------------------------------------------------------------------------

# Model
DEPTH = None               # transformer layers (profile: h100 8, gpu 6, apple 4, cpu 2, smoke 2)
ASPECT_RATIO = 64          # model_dim = DEPTH * ASPECT_RATIO, rounded up to a multiple of HEAD_DIM
HEAD_DIM = 128             # attention head dimension
WINDOW_PATTERN = "SSSL"    # per-layer attention window: L = full context, S = half; the last layer is always L
WINDOW_KERNEL = "flex"     # the windows on a GPU: "flex" (FlexAttention) or "cudnn" (cuDNN's banded kernel, from
                           # pip's nvidia-cudnn-frontend: a 5 % faster step on an H200, docs/notes/cuda.md)

# Batch
TOTAL_BATCH_SIZE = None    # tokens per optimizer step (profile: h100 2**19)
DEVICE_BATCH_SIZE = None   # sequences per forward/backward; lower it if memory runs out (profile: h100 128)

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
TUNE_KERNELS = True        # on a GPU, tune inductor's fused kernels (compile_model): faster steps, slower cold start
DETERMINISTIC = False      # on a GPU, deterministic kernels (make_deterministic): the same steps give the same
                           # weights, at 16 % of the tokens/s on an H200 (2026-11-30)


def model_config(depth, sequence_len, vocab_size):
    model_dim = -(-depth * ASPECT_RATIO // HEAD_DIM) * HEAD_DIM
    return GPTConfig(sequence_len=sequence_len, vocab_size=vocab_size, n_layer=depth,
                     n_head=model_dim // HEAD_DIM, n_embd=model_dim, window_pattern=WINDOW_PATTERN)


def tiny_config():
    """For tests and cross-backend parity: sliding windows (16 of 32), value embeddings on layers 1 and 3."""
    return GPTConfig(sequence_len=32, vocab_size=512, n_layer=4, n_head=2, n_embd=64, window_pattern="SSSL")


def build_model(config, device="cpu", seed=SEED):
    """An initialised GPT on device. Built on the meta device and initialised in place, as upstream, so the
    only random draws are init_weights' (on CUDA: upstream's weights for the same seed). On CUDA the
    embeddings and the rotary tables are bf16, as upstream (store_in_bf16)."""
    device = torch.device(device)
    if WINDOW_KERNEL not in ("flex", "cudnn"):
        raise ContractError(f"WINDOW_KERNEL = {WINDOW_KERNEL!r} is not a window kernel this trainer has. Set it to "
                            "'flex' (FlexAttention, the default) or 'cudnn' (cuDNN's banded attention).")
    if device.type == "cuda" and WINDOW_KERNEL == "cudnn":
        try:
            import cudnn.sdpa.fwd.torch_op  # noqa: F401  (registers torch.ops.cudnn.sdpa_fwd and its backward)
        except ImportError as e:
            raise ContractError("WINDOW_KERNEL = 'cudnn' needs NVIDIA's cuDNN frontend, which is not installed "
                                f"({e}). Install it into the environment that runs this file, `pip install "
                                "nvidia-cudnn-frontend==1.32.0` (the project's `cudnn` extra), or set WINDOW_KERNEL = "
                                "'flex' to use FlexAttention.") from e
    torch.manual_seed(seed)
    with torch.device("meta"):
        model = GPT(config)
    model.to_empty(device=device)
    model.init_weights()
    if device.type == "cuda":
        store_in_bf16(model)
        for w in set(model.windows):
            if w < config.sequence_len and config.sequence_len % 128 == 0 and WINDOW_KERNEL == "flex":
                sliding_block_mask(config.sequence_len, w, device)  # before torch.compile traces attention
    return model


def store_in_bf16(model):
    """Store in bf16 what upstream's GPU model stores in bf16: the token and value embeddings (halves their
    traffic) and the rotary tables. Stored, the tables hold upstream's values whatever the compiler keeps of a
    cast in the block (a forward-only graph drops it, the training graph keeps it: bench/rounding_points.py)."""
    model.wte.to(torch.bfloat16)
    model.value_embeds.to(torch.bfloat16)
    model.cos, model.sin = model.cos.bfloat16(), model.sin.bfloat16()


def compile_model(model):
    """Compile the embedding, each block and the head on their own (regional compilation): layers of one kind
    share a compiled graph, so a cold start compiles a few small graphs rather than the whole model. Names are
    unchanged. Every lookup and its backward runs in a compiled graph, as in upstream's whole-model graph.

    With TUNE_KERNELS on a GPU, inductor tunes the block sizes of its fused kernels by coordinate descent (the
    loss head's soft-cap and cross-entropy, the norms' backward): 1.6 % more tokens/s on an H200, for about a
    minute more of cold compile. torch 2.13 caches the choices for later starts; torch 2.11 re-tunes some of
    them in every process, about 30 s (pytorch/pytorch#172819). docs/notes/cuda.md has the measurements. Not
    under deterministic algorithms (make_deterministic): tuning times kernels, and inductor's deterministic mode
    bans timing that can change the numbers."""
    if next(model.parameters()).is_cuda:
        from torch._inductor import config as inductor_config
        inductor_config.coordinate_descent_tuning = TUNE_KERNELS and not torch.are_deterministic_algorithms_enabled()
    model.embed = torch.compile(model.embed, dynamic=False)
    for module in (*model.blocks, model.lm_head):
        module.compile(dynamic=False)
    return model


def compile_optimizer(optimizer):
    """Polar Express compiled, one graph per matrix shape, as in upstream's compiled Muon step. Fused, its bf16
    elementwise work rounds once per kernel rather than after every operation: 3x closer to the exact iteration
    than op by op (docs/notes/fidelity.md, section 11)."""
    optimizer.orthogonalise = torch.compile(polar_express, dynamic=False, fullgraph=True)
    return optimizer


def build_optimizer(model, matrix_lr=MATRIX_LR, embedding_lr=EMBEDDING_LR, unembedding_lr=UNEMBEDDING_LR,
                    scalar_lr=SCALAR_LR, weight_decay=WEIGHT_DECAY, adam_betas=ADAM_BETAS):
    scale = (model.config.n_embd / 768) ** -0.5  # AdamW LRs were tuned at model_dim 768
    adamw = dict(kind="adamw", betas=adam_betas, eps=1e-10, weight_decay=0.0)
    groups = [
        dict(adamw, name="lm_head", params=[model.lm_head.weight], lr=unembedding_lr * scale),
        dict(adamw, name="wte", params=[model.wte.weight], lr=embedding_lr * scale),
        dict(adamw, name="value_embeds", params=list(model.value_embeds.parameters()), lr=embedding_lr * scale),
        dict(adamw, name="resid_lambdas", params=[model.resid_lambdas], lr=scalar_lr * 0.01),
        dict(adamw, name="x0_lambdas", params=[model.x0_lambdas], lr=scalar_lr, betas=(0.96, 0.95)),
    ]
    matrices = list(model.blocks.parameters())
    for shape in sorted({tuple(p.shape) for p in matrices}):
        groups.append(dict(kind="muon", name=f"muon_{shape[0]}x{shape[1]}", params=[p for p in matrices if p.shape == shape],
                           lr=matrix_lr, momentum=MUON_MOMENTUM[1], beta2=0.95, weight_decay=weight_decay))
    for g in groups:
        g["initial_lr"], g["initial_weight_decay"] = g["lr"], g["weight_decay"]
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    return MuonAdamW(groups)


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
    on the step count (0 for the first step), as upstream."""
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * lr_multiplier(progress)
        if group["kind"] == "muon":
            group["momentum"] = muon_momentum(step)
            group["weight_decay"] = group["initial_weight_decay"] * (1 - progress)


def zero_scalar_gradients(model):
    """Zero the scalar mixing weights' gradients; train_step does it on the first step. At init every block's
    output projection is zero, so the final RMSNorm removes whatever scale the lambdas give the residual stream:
    the loss does not depend on them and their gradient is rounding noise. AdamW's first step, g / (|g| + eps),
    would turn that noise into a full step of +-lr whose sign follows the initial draws and the kernels
    (x0_lambdas 0.1 -> 0.6 or -0.4; the two signs differ by 0.04 val_bpb at 60 s, docs/notes/fidelity.md).
    Upstream takes that step, upwards at its seed; init_weights starts them where it leads."""
    model.resid_lambdas.grad.zero_()
    model.x0_lambdas.grad.zero_()


def autocast(device):
    return torch.autocast(device.type, dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def train_step(model, optimizer, batches, progress, step):
    """One optimizer step: forward/backward over a list of (inputs, targets) micro-batches with their
    gradients averaged, schedules set for `progress` and `step`. Returns the mean loss as a 0-d tensor (no
    device sync)."""
    losses = []
    for x, y in batches:
        with autocast(x.device):
            loss = model(x, y).mean()
        (loss / len(batches)).backward()
        losses.append(loss.detach())
    if step == 0:
        zero_scalar_gradients(model)
    set_schedules(optimizer, progress, step)
    optimizer.step()
    model.zero_grad(set_to_none=True)
    return torch.stack(losses).mean()


def export_weights(model):
    """{parameter name: float32 numpy array}: the cross-backend exchange format (see the module docstring).
    Copies, so a later optimizer step does not change arrays exported earlier."""
    return {name: t.detach().float().cpu().numpy().copy() for name, t in model.state_dict().items()}


def import_weights(model, arrays):
    """Load export_weights' dict into model, keeping each parameter's device and dtype. Names must match exactly."""
    state = model.state_dict()
    missing, unexpected = set(state) - set(arrays), set(arrays) - set(state)
    if missing or unexpected:
        raise KeyError(f"weights do not match the model: missing {sorted(missing)}, unexpected {sorted(unexpected)}")
    with torch.no_grad():
        for name, t in state.items():
            if tuple(arrays[name].shape) != tuple(t.shape):
                raise ValueError(f"{name}: shape {tuple(arrays[name].shape)}, the model has {tuple(t.shape)}")
            t.copy_(torch.from_numpy(np.asarray(arrays[name])))


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------


def make_deterministic():
    """Ask for the same steps to give the same weights on a GPU. Without it two runs part within a few steps
    (bench/determinism.py): torch's deterministic kernels, strictly; SDPA without cuDNN's attention, whose
    backward PyTorch runs only non-deterministically, so that full-window layers take FlashAttention's,
    deterministic in strict mode (WINDOW_KERNEL = "cudnn" stays non-deterministic); a fixed cuBLAS workspace;
    and inductor choosing kernels without timing them (timing could pick other block sizes, and so other sums,
    in another process; TUNE_KERNELS is off under it). Call before the first CUDA work. On an H200 six steps
    came out bit-identical twice (bench/determinism.py), and a 60-s run lost 16 % of its tokens/s (2026-11-30)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts
    torch.use_deterministic_algorithms(True)
    torch.backends.cuda.enable_cudnn_sdp(False)
    from torch._inductor import config as inductor_config
    inductor_config.deterministic = True


def pick_device():
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def peak_memory_mb(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    if device.type == "mps":
        return torch.mps.driver_allocated_memory() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # peak RSS (KiB on Linux)


def fail(message):
    print(f"\nFAIL: {message}", flush=True)
    sys.exit(1)


def main(profile=None):
    """Train under the platform profile (bench/gpu.py passes one with a shorter budget), evaluate, summarise."""
    t_start = time.time()
    os.environ.setdefault("PYTORCH_ALLOC_CONF", "expandable_segments:True")
    from common.evaluate import evaluate_bpb
    from common.loader import make_loader
    from common.platform import get_profile, peak_flops
    from common.summary import print_summary
    from common.tokenizer import Tokenizer

    profile = profile or get_profile()
    if DETERMINISTIC:
        make_deterministic()
    device = pick_device()
    torch.manual_seed(SEED)
    torch.set_float32_matmul_precision("high")
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
    model = build_model(config, device)
    num_params = sum(p.numel() for p in model.parameters())
    flops_per_token = model.flops_per_token()
    # On a CPU, compiling runs steps ~2.5x faster at smoke size but takes ~20 s: worth it for long budgets only.
    use_compile = device.type == "cuda" or (device.type == "cpu" and budget >= 60)
    optimizer = build_optimizer(model)
    if use_compile:
        compile_model(model)
    if device.type == "cuda":
        compile_optimizer(optimizer)  # Polar Express runs in bf16 on a GPU only
        # No CPU kernels to vectorise: skip inductor's CPU vector-ISA probes, each a child process that
        # imports torch (with torch 2.11 on the H100 machines: ~45 s of every fresh process's compile).
        from torch._inductor import config as inductor_config
        inductor_config.cpp.vec_isa_ok = False
    device_name = torch.cuda.get_device_name() if device.type == "cuda" else device.type
    peak = peak_flops(device_name, profile)
    print(f"profile {profile.name} | device {device_name} | torch {torch.__version__} | compile {use_compile}")
    print(f"model {asdict(config)} | {num_params / 1e6:.1f}M params | {flops_per_token:.3e} FLOPs/token")
    print(f"batch {device_batch} x {seq_len} x {accum_steps} accumulation = {total_batch} tokens/step | budget {budget}s")

    loader = make_loader("train", device_batch, seq_len, tokenizer=tokenizer)  # the files' order, as upstream

    def next_batch():
        x, y, epoch = next(loader)
        x, y = torch.from_numpy(x), torch.from_numpy(y)
        if device.type == "cuda":
            x, y = x.pin_memory(), y.pin_memory()
        return x.to(device, non_blocking=True).long(), y.to(device, non_blocking=True).long(), epoch

    def read_loss(pending):
        """The loss of an earlier step, read once the step is done; fail fast if it diverged."""
        step, loss, done = pending
        if done is not None:
            done.synchronize()
        loss = loss.item()
        if not math.isfinite(loss) or loss > 100:
            fail(f"training loss is {loss} at step {step}: training diverged (NaN or exploding loss). "
                 "Lower a learning rate or undo the last change.")
        return loss

    step, training_time, untimed_time, epoch, t_log, smooth_loss = 0, 0.0, 0.0, 0, 0.0, 0.0
    pending = None  # the previous step's loss, read after this step is queued so that the GPU never idles
    t_training_start = t_last = time.time()
    while True:
        progress = min(training_time / budget, 1.0)
        batches = []
        for _ in range(accum_steps):
            x, y, epoch = next_batch()
            batches.append((x, y))
        loss, done = train_step(model, optimizer, batches, progress, step), None
        if device.type == "cuda":
            loss, done = loss.to("cpu", non_blocking=True), torch.cuda.Event()
            done.record()
        if pending:
            smooth_loss = 0.9 * smooth_loss + 0.1 * read_loss(pending)
        pending = (step, loss, done)
        dt, t_last = time.time() - t_last, time.time()  # one step's time, once the pipeline is full
        if step >= profile.untimed_steps:
            training_time += dt
        else:
            untimed_time += dt
        if step == 0:  # the first step made the long-lived objects; stop the GC from scanning them
            gc.collect()
            gc.freeze()
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

    # Compiled: grad mode stays on so that the training graph is reused (same shapes) with no second
    # compilation; each batch's autograd graph is dropped as soon as its losses are copied out.
    def loss_fn(inputs, targets):
        x = torch.from_numpy(np.asarray(inputs)).to(device).long()
        y = torch.from_numpy(np.asarray(targets)).to(device).long()
        with autocast(device), torch.set_grad_enabled(use_compile):
            return model(x, y).detach().float().cpu().numpy()

    t_eval = time.time()
    val_bpb = evaluate_bpb(loss_fn, device_batch, profile)
    print(f"startup_seconds: {t_training_start - t_start:.1f}")   # imports done: data, model, optimizer
    print(f"untimed_seconds: {untimed_time:.1f}")                 # the profile's untimed (compilation) steps
    print(f"eval_seconds:    {time.time() - t_eval:.1f}")
    print_summary(
        val_bpb=val_bpb, training_seconds=training_time, total_seconds=time.time() - t_start,
        peak_vram_mb=peak_memory_mb(device),
        mfu_percent=100 * flops_per_token * timed_tokens / training_time / peak if training_time else 0.0,
        total_tokens_M=step * total_batch / 1e6, num_steps=step, num_params_M=num_params / 1e6, depth=depth,
        backend="cuda", profile=profile.name, tokens_per_sec=timed_tokens / training_time if training_time else 0.0)


if __name__ == "__main__":
    run_cli(main)
