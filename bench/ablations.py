"""Ablations for bench/anchor.py --variant: each cuda one puts back, alone, one way in which the reference
trainer used to compute differently from upstream autoresearch's train.py (issue 10; docs/notes/fidelity.md has
what each was worth); the jax ones probe why the jax backend trails. A variant is text edits of its backend's
canvas, applied as the agent applies its edits (each `find` must occur exactly once), plus profile fields to
override.
"""

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Variant:
    description: str
    edits: tuple = ()                  # (find, replace) pairs applied to backends/<backend>/train.py
    profile: dict = field(default_factory=dict)   # Profile fields to override, e.g. {"untimed_steps": 2}
    backend: str = "cuda"
    cuda_init: int = None              # a SEED: the run gets $AUTORESEARCH_INIT_WEIGHTS, the cuda model's initial
                                       # weights for that seed


UNTIMED_2 = Variant("2 untimed steps (upstream: 11)", profile={"untimed_steps": 2})

MOMENTUM_BY_TIME = Variant(
    "Muon momentum ramp over 30 % of the time budget (upstream: over 300 steps)",
    edits=(('            group["momentum"] = muon_momentum(step)',
            '            group["momentum"] = 0.85 + 0.1 * min(progress / 0.3, 1.0)'),))

EPS_1E6 = Variant(
    "RMSNorm eps 1e-6 (upstream: the dtype's machine epsilon)",
    edits=(("F.rms_norm(x, (x.size(-1),))", "F.rms_norm(x, (x.size(-1),), eps=1e-6)"),))

SHUFFLED_DATA = Variant(
    "training row groups shuffled every epoch (upstream: the files' order)",
    edits=(('    loader = make_loader("train", device_batch, seq_len, tokenizer=tokenizer)',
            '    loader = make_loader("train", device_batch, seq_len, seed=SEED, tokenizer=tokenizer)'),))

BF16_ADAMW = Variant(
    "AdamW arithmetic op by op in bf16 on the bf16 embeddings (upstream: float32, rounded once)",
    edits=(("    p32, m, v = p.float(), exp_avg.float(), exp_avg_sq.float()  # the tensors themselves when float32\n"
            "    grad = grad.float()\n",
            "    p32, m, v = p, exp_avg, exp_avg_sq\n"),))

DEFAULT_INIT_FIRST = Variant(
    "the model built on the device, so PyTorch's default initialisation draws random numbers before "
    "init_weights (upstream: built on meta, the same weights as upstream for the same seed)",
    edits=(('    with torch.device("meta"):\n        model = GPT(config)\n    model.to_empty(device=device)\n',
            '    with device:\n        model = GPT(config)\n'),))

VARIANTS = {
    "untimed-2": UNTIMED_2,
    "momentum-by-time": MOMENTUM_BY_TIME,
    "eps-1e-6": EPS_1E6,
    "shuffled-data": SHUFFLED_DATA,
    "bf16-adamw": BF16_ADAMW,
    "default-init-first": DEFAULT_INIT_FIRST,
}
# The trainer as it was before issue 10: every cause at once.
VARIANTS["before"] = Variant(
    "all of the above at once: the reference trainer before issue 10",
    edits=tuple(e for v in list(VARIANTS.values()) for e in v.edits), profile={"untimed_steps": 2})

# jax draws its own initial weights (jax.random): this starts it from the cuda backend's, which are upstream's
# for the same seed, so a jax run and a cuda run differ only in what they compute.
VARIANTS["from-cuda-init"] = Variant(
    "jax started from the cuda backend's initial weights (exported by torch on the same GPU)", backend="jax",
    cuda_init=42,
    edits=(("    model = build_model(config, gpu=gpu)\n",
            "    model = build_model(config, gpu=gpu)\n"
            "    import_weights(model, dict(np.load(os.environ['AUTORESEARCH_INIT_WEIGHTS'])))\n"),))
# What jax ran with on 2026-11-29 before the eps fix: bf16's machine epsilon for bf16 inputs.
VARIANTS["bf16-eps"] = Variant(
    "jax RMSNorm with the input dtype's machine epsilon (7.8e-3 for bf16; torch uses float32's)", backend="jax",
    edits=(("    eps = float(jnp.finfo(jnp.float32).eps)\n", "    eps = float(jnp.finfo(x.dtype).eps)\n"),))

# Upstream's Muon keeps the orthogonalised update in bf16 after Polar Express (NorMuon's scale and the LR and
# weight decay cast to bf16 too); ours computes that tail in float32. A candidate for the 300-s gap.
VARIANTS["bf16-muon-tail"] = Variant(
    "Muon's update after Polar Express in bf16, LR and weight decay cast to bf16, as upstream's muon_step_fused",
    edits=(("    g = g * (scale * norm_before / norm_after.clamp_min(1e-10))\n"
            "    # Cautious weight decay: decay only where the update and the weight agree in sign.\n"
            "    params.sub_(lr * g + lr * wd * params * ((g * params) >= 0))\n",
            "    g = g.to(ortho_dtype) * (scale * norm_before / norm_after.clamp_min(1e-10)).to(ortho_dtype)\n"
            "    lr, wd = (torch.tensor(v, device=g.device).to(ortho_dtype) for v in (lr, wd))\n"
            "    params.sub_(lr * g + lr * wd * params * ((g * params) >= 0))\n"),))

# Upstream compiles the whole model as one graph; ours compiles the embedding, each block and the head on their
# own. The math is the same; what differs is where bf16 values round: regional graphs leave the sums across
# blocks in the backward (x0's gradients) to autograd in bf16. Measured in docs/notes/fidelity.md, section 12.
VARIANTS["whole-model-graph"] = Variant(
    "the whole model compiled as one graph, as upstream (ours: the embedding, each block and the head apart)",
    edits=(("    model.embed = torch.compile(model.embed, dynamic=False)\n"
            "    for module in (*model.blocks, model.lm_head):\n"
            "        module.compile(dynamic=False)\n",
            "    model.compile(dynamic=False)\n"),))

# The residual stream handed between the compiled regions in float32 (x0 too), each block rounding its mix to
# bf16 once: no bf16 rounding at the region boundaries, forward or backward, and the blocks' x0 gradients summed
# in float32 (regional compilation otherwise rounds there, where upstream's whole graph fuses across blocks).
X0_IN_FLOAT32 = ("        return norm(self.wte(idx))\n", "        return norm(self.wte(idx)).float()\n")
MIX_ROUNDED_ONCE = ("        x = resid_lambda * x + x0_lambda * x0  #",  # a float32 stream or x0 back to bf16 in the block
                    "        x = (resid_lambda * x + x0_lambda * x0).to(torch.get_autocast_dtype(x.device.type) "
                    "if torch.is_autocast_enabled(x.device.type) else x.dtype)  #")
VARIANTS["float32-between-blocks"] = Variant(
    "the residual stream and x0 passed between the compiled blocks in float32 (ours and upstream's: bf16)",
    edits=(MIX_ROUNDED_ONCE,
           ("        return x + self.mlp(norm(x))\n", "        return (x + self.mlp(norm(x))).float()\n"),
           X0_IN_FLOAT32))

# Only the last block's output crosses into the head in float32: the head's gradient then reaches the last block
# unrounded. blocks-one-graph (no boundaries between the blocks) kept none of the whole graph's per-step gain, so
# what is left of it is at the embedding's and the head's boundaries; this one costs one boundary's float32
# traffic, not eight.
VARIANTS["float32-into-head"] = Variant(
    "the last block's output passed to the compiled head in float32 (ours and upstream's: bf16)",
    edits=(("        self.attn = CausalSelfAttention(config, layer_idx)\n",
            "        self.attn = CausalSelfAttention(config, layer_idx)\n"
            "        self.last = layer_idx == config.n_layer - 1\n"),
           ("        return x + self.mlp(norm(x))\n",
            "        x = x + self.mlp(norm(x))\n"
            "        return x.float() if self.last else x\n")))

# The other end: x0, the normalised embedding, leaves its compiled graph in float32 (the residual stream starts
# as it, and every block reads it), so the sum of its gradients reaches the embedding's backward unrounded.
VARIANTS["float32-from-embedding"] = Variant(
    "the embedding's output x0 passed to the compiled blocks in float32 (ours and upstream's: bf16)",
    edits=(X0_IN_FLOAT32, MIX_ROUNDED_ONCE))

# Between the two: the embedding and the head compiled apart, the eight blocks as one graph, so the sums across
# blocks (x0's gradients, the residual stream's) are fused as in upstream's graph. Which part of the whole graph
# costs its 2.4 % of step time (docs/notes/cuda.md), and whether the blocks' graph alone has its per-step gain.
VARIANTS["blocks-one-graph"] = Variant(
    "the eight blocks compiled as one graph; the embedding and the head apart (ours: every block apart)",
    edits=(("        x = x0 = self.embed(idx)\n"
            "        for i, block in enumerate(self.blocks):\n"
            "            ve_weight = self.value_embeds[str(i)].weight if str(i) in self.value_embeds else None\n"
            "            x = block(x, x0, self.resid_lambdas[i], self.x0_lambdas[i], idx, ve_weight, cos, sin, "
            "self.windows[i])\n"
            "        return self.lm_head(x, targets)\n",
            "        return self.lm_head(self.run_blocks(self.embed(idx), idx, cos, sin), targets)\n\n"
            "    def run_blocks(self, x0, idx, cos, sin):\n"
            "        x = x0\n"
            "        for i, block in enumerate(self.blocks):\n"
            "            ve_weight = self.value_embeds[str(i)].weight if str(i) in self.value_embeds else None\n"
            "            x = block(x, x0, self.resid_lambdas[i], self.x0_lambdas[i], idx, ve_weight, cos, sin, "
            "self.windows[i])\n"
            "        return x\n"),
           ("    for module in (*model.blocks, model.lm_head):\n        module.compile(dynamic=False)\n",
            "    model.run_blocks = torch.compile(model.run_blocks, dynamic=False)\n"
            "    model.lm_head.compile(dynamic=False)\n")))

# Issue 11: inductor's own search instead of its defaults, the regions unchanged. Coordinate descent (the canvas's
# TUNE_KERNELS, on since 2026-11-30) tunes the block sizes of the fused elementwise and reduction kernels;
# max-autotune also benchmarks Triton matmul templates against cuBLAS (a template that wins takes the ReLU^2,
# the residual adds and the casts into its epilogue) and FlexAttention's tile choices. Both lengthen a cold compile.
COMPILE_REGIONS = ("    model.embed = torch.compile(model.embed, dynamic=False)\n"
                   "    for module in (*model.blocks, model.lm_head):\n"
                   "        module.compile(dynamic=False)\n")
VARIANTS["no-kernel-tuning"] = Variant(
    "TUNE_KERNELS = False: inductor's default block sizes, no coordinate descent (the canvas before 2026-11-30)",
    edits=(("\nTUNE_KERNELS = True ", "\nTUNE_KERNELS = False "),))
VARIANTS["max-autotune"] = Variant(
    "compiled with mode='max-autotune-no-cudagraphs' (ours and upstream's: the default mode)",
    edits=((COMPILE_REGIONS, COMPILE_REGIONS.replace("dynamic=False)",
                                                     'dynamic=False, mode="max-autotune-no-cudagraphs")')),))

# Issue 11: the loss head's cross-entropy as F.cross_entropy, the canvas's until 2026-11-30 (session 9). The same
# math in float32; its backward (log_softmax's) sums over the vocabulary a second time, in a reduction kernel
# (7.0 ms a step on an H200 with kernel tuning, docs/notes/cuda.md), where the canvas's logsumexp form has an
# elementwise gradient, softmax - one-hot.
LOGSUMEXP_HEAD = ("        peak = logits.detach().amax(-1, keepdim=True)  # logsumexp does not depend on it: no gradient\n"
                  "        lse = (logits - peak).exp().sum(-1).log() + peak.squeeze(-1)\n"
                  "        hit = targets.unsqueeze(-1) == torch.arange(logits.size(-1), device=logits.device)\n"
                  "        return lse - (logits * hit).sum(-1)\n")
VARIANTS["cross-entropy-head"] = Variant(
    "the loss head's cross-entropy as F.cross_entropy, its backward a second reduction (ours: logsumexp - target)",
    edits=((LOGSUMEXP_HEAD, '        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")'
                            '.view(targets.shape)\n'),))

# Issue 11: the canvas's logsumexp with keepdim sums, the shape of inductor's online-softmax pattern
# (amax(keepdim) -> sub -> exp -> sum(keepdim), fx_passes/post_grad.py), which F.cross_entropy's log_softmax
# matches and the canvas's form does not: its forward is two passes over the logits (10.7 ms a step on an
# H200 against F.cross_entropy's 7.25 ms one-pass kernel, 2026-11-30). Checked on the CPU only: with the
# pattern's CUDA-only check lifted, this form's post-grad graph holds prepare_softmax_online, the canvas's not.
VARIANTS["online-logsumexp-head"] = Variant(
    "the loss head's logsumexp with keepdim sums, so inductor fuses max and sum in one online pass (ours: two)",
    edits=(("        lse = (logits - peak).exp().sum(-1).log() + peak.squeeze(-1)\n",
            "        lse = ((logits - peak).exp().sum(-1, keepdim=True).log() + peak).squeeze(-1)\n"),))

# Issue 11: the sliding windows through FlashAttention-2, which torch's CUDA build carries with its window option
# (aten::_flash_attention_forward, differentiable, (B, T, H, hd) in and out), in place of FlexAttention, whose
# windowed backward runs at about half of cuDNN's full-causal efficiency (docs/notes/cuda.md). The same
# attention: query i sees keys i - w .. i, as FlashAttention's window_size=(w, 0) in upstream.
FLEX_WINDOWS = ("    if q.is_cuda and T % 128 == 0:\n"
                "        from torch.nn.attention.flex_attention import flex_attention\n"
                "        return flex_attention(q, k, v, block_mask=sliding_block_mask(T, window, q.device))\n")
VARIANTS["flash-window-attention"] = Variant(
    "the sliding windows through torch's FlashAttention-2 with window_size_left (ours: FlexAttention)",
    edits=((FLEX_WINDOWS,
            "    if q.is_cuda:\n"
            "        out = torch.ops.aten._flash_attention_forward(\n"
            "            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), None, None, T, T, 0.0, True, False,\n"
            "            window_size_left=window, window_size_right=0)[0]\n"
            "        return out.transpose(1, 2)\n"),))
VARIANTS["flash-window-online-head"] = Variant(
    "flash-window-attention and online-logsumexp-head together",
    edits=VARIANTS["flash-window-attention"].edits + VARIANTS["online-logsumexp-head"].edits)

# Issue 11: the sliding windows through cuDNN's attention with a diagonal band (the canvas's WINDOW_KERNEL =
# "cudnn"), from NVIDIA's cuDNN frontend (pip nvidia-cudnn-frontend): torch.ops.cudnn.sdpa_fwd, a torch custom
# op with a fake implementation and a backward, so torch.compile treats it as one opaque kernel. The jax backend
# reaches the same cuDNN kernels through jax.nn.dot_product_attention(local_window_size=...). On an H200 a 5 %
# faster step than FlexAttention's (2026-11-30, docs/notes/cuda.md); not yet the default, fidelity.md section 16.
VARIANTS["cudnn-window-attention"] = Variant(
    "the sliding windows through cuDNN's banded attention (WINDOW_KERNEL = 'cudnn'; ours: FlexAttention)",
    edits=(('WINDOW_KERNEL = "flex"', 'WINDOW_KERNEL = "cudnn"'),))

# Polar Express op by op in bf16, each elementwise step rounded (the optimizer ran eagerly until 2026-11-30);
# upstream's compiled Muon step fuses them and rounds once per kernel, as compile_optimizer now does.
VARIANTS["eager-polar-express"] = Variant(
    "Polar Express eager in bf16 (every elementwise step rounded), as before compile_optimizer",
    edits=(("        compile_optimizer(optimizer)  # Polar Express runs in bf16 on a GPU only\n", ""),))

# Other initial weights (the same distributions, other draws): the seed-to-seed spread, which a run-to-run sd at
# one seed does not hold (jax draws its own weights, so against cuda it is in effect another seed; fidelity.md
# section 17).
for seed in (43, 44, 45, 46):
    other_seed = (("SEED = 42\n", f"SEED = {seed}\n"),)  # the same line in both canvases
    VARIANTS[f"seed-{seed}"] = Variant(f"SEED = {seed} (initial weights drawn from another seed; data order unchanged)",
                                       edits=other_seed)
    VARIANTS[f"jax-seed-{seed}"] = Variant(f"jax with SEED = {seed}", backend="jax", edits=other_seed)
    # Paired with seed-N: both backends from the same weights at another seed. If jax's gap to cuda repeats at
    # every seed, jax computes something differently; if it changes sign, it was where one run's rounding led
    # (fidelity.md section 21).
    VARIANTS[f"from-cuda-init-seed-{seed}"] = Variant(
        f"jax from the cuda backend's initial weights for SEED = {seed} (beside seed-{seed})", backend="jax",
        cuda_init=seed, edits=VARIANTS["from-cuda-init"].edits)

# The scalar mixing weights' first gradient is rounding noise (zero_scalar_gradients in the canvases says why).
# Upstream's first AdamW step turns it into a full step of +-lr (x0_lambdas: 0.1 -> 0.6 or -0.4); every backend
# now starts the scalars where that step leads at upstream's seed (1.005, 0.6) and zeroes their first gradient.
CUDA_UPSTREAM_SCALARS = (("        self.resid_lambdas.fill_(1.005)\n        self.x0_lambdas.fill_(0.6)\n",
                          "        self.resid_lambdas.fill_(1.0)\n        self.x0_lambdas.fill_(0.1)\n"),)
JAX_UPSTREAM_SCALARS = (("        self.resid_lambdas[...] = jnp.full_like(self.resid_lambdas[...], 1.005)\n"
                         "        self.x0_lambdas[...] = jnp.full_like(self.x0_lambdas[...], 0.6)\n",
                         "        self.resid_lambdas[...] = jnp.full_like(self.resid_lambdas[...], 1.0)\n"
                         "        self.x0_lambdas[...] = jnp.full_like(self.x0_lambdas[...], 0.1)\n"),)
CUDA_KICK = (("    if step == 0:\n        zero_scalar_gradients(model)\n", ""),)
JAX_KICK = (("        if step == 0:\n            grads = zero_scalar_gradients(grads)\n", ""),)
VARIANTS["scalar-kick"] = Variant(
    "upstream's scalars: from 1.0 and 0.1, their first gradient (rounding noise) left in, so AdamW jumps them +-lr",
    edits=CUDA_UPSTREAM_SCALARS + CUDA_KICK)
VARIANTS["jax-scalar-kick"] = Variant(
    "jax with upstream's scalars (as cuda:scalar-kick)", backend="jax", edits=JAX_UPSTREAM_SCALARS + JAX_KICK)
VARIANTS["from-cuda-init-scalar-kick"] = Variant(
    "jax from the cuda backend's initial weights with upstream's scalars (as cuda:scalar-kick)", backend="jax",
    cuda_init=42, edits=VARIANTS["from-cuda-init"].edits + JAX_UPSTREAM_SCALARS + JAX_KICK)
# What the backends did from fec23ec: upstream's starting values, the first gradient zeroed (no jump at all).
VARIANTS["scalars-from-upstream-init"] = Variant(
    "resid_lambdas from 1.0 and x0_lambdas from 0.1 (upstream's init_weights), the first gradient zeroed",
    edits=CUDA_UPSTREAM_SCALARS)
VARIANTS["jax-scalars-from-upstream-init"] = Variant(
    "jax, the scalars from upstream's 1.0 and 0.1 (as cuda:scalars-from-upstream-init)", backend="jax",
    edits=JAX_UPSTREAM_SCALARS)


# What jax computed until 2026-11-30 (twelfth session): its embeddings stored in float32 on the GPU, where the
# reference and upstream store them in bf16 (and their Adam moments with them), so that late small updates
# round away there and not in jax.
VARIANTS["jax-float32-embeddings"] = Variant(
    "jax with wte and value_embeds stored in float32 on the GPU (the reference and upstream: bf16)", backend="jax",
    edits=(("    if gpu:\n        store_embeddings(model, jnp.bfloat16)\n", ""),))


# Where bf16 rounds (bench/rounding_points.py): inductor multiplies a bf16 tensor by a float32 value at float32,
# even after an explicit .to(bf16), where eager PyTorch and XLA (on the CPU at least) round the operand first.
# Until 2026-11-30 (thirteenth session) the cuda canvas kept float32 rotary tables cast with .to(q.dtype) in the
# block (upstream stores bf16 tables; on the CPU the training graph keeps that cast, so the two are bit-identical
# there), and jax and mlx cast the mixing scalars to bf16 before the mix (1.005 -> 1.0078, 0.6 -> 0.6016), which
# upstream's and the cuda canvas's compiled code do not.
VARIANTS["float32-rotary-tables"] = Variant(
    "the rotary tables kept in float32 and cast in the block (upstream and the canvas: stored in bf16)",
    edits=(("    model.cos, model.sin = model.cos.bfloat16(), model.sin.bfloat16()\n", ""),))
VARIANTS["jax-bf16-lambdas"] = Variant(
    "jax mixes the residual stream with the scalars rounded to bf16 first (the canvas: float32 scalars at "
    "float32, rounded once, as compiled torch)", backend="jax",
    edits=(("self.resid_lambdas[i], self.x0_lambdas[i], ve",
            "self.resid_lambdas[i].astype(dtype), self.x0_lambdas[i].astype(dtype), ve"),
           ("        x = (resid_lambda * x.astype(jnp.float32) + x0_lambda * x0.astype(jnp.float32)).astype(x.dtype)\n",
            "        x = resid_lambda * x + x0_lambda * x0\n")))


# Issue 10's noise: the same steps give the same weights (make_deterministic), at a price in tokens/s.
VARIANTS["deterministic-kernels"] = Variant(
    "DETERMINISTIC = True: torch's deterministic kernels (strict), SDPA without cuDNN's attention, a fixed cuBLAS "
    "workspace, inductor choosing kernels without timing them", edits=(("\nDETERMINISTIC = False ", "\nDETERMINISTIC = True "),))


# Issue 11: jax's plain loss head, whole (B, T, V) float32 logits (the default before LOSS_CHUNKS = 8).
VARIANTS["jax-plain-head"] = Variant(
    "jax with LOSS_CHUNKS = 1: the loss and its gradient over whole (B, T, V) logits (the default chunks in 8)",
    backend="jax", edits=(("\nLOSS_CHUNKS = 8 ", "\nLOSS_CHUNKS = 1 "),))


# Issue 10: jax's windowed layers through XLA's attention (the textbook computation: float32 logits and softmax,
# bf16 probabilities into the value matmul) instead of cuDNN's banded kernel, the one GPU path that jax takes and
# the reference does not (the reference's windows: FlexAttention). Rematerialised in the backward (jax.checkpoint,
# the same operations again), as its (B, H, T, T) float32 logits would not fit six layers' worth on one GPU.
VARIANTS["jax-xla-window-attention"] = Variant(
    "jax's sliding windows through XLA's attention, recomputed in the backward (ours: cuDNN's banded kernel)",
    backend="jax",
    edits=(("    return jax.nn.dot_product_attention(q, k, v, is_causal=True, local_window_size=local, "
            "implementation=implementation)\n",
            "    if local:\n"
            "        return jax.checkpoint(partial(jax.nn.dot_product_attention, is_causal=True, local_window_size=local,"
            " implementation=\"xla\"))(q, k, v)\n"
            "    return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=implementation)\n"),))


# Issue 10: jax from jax.random's draws of the same distributions, as the canvas drew until 2026-12-01 (it now
# draws torch's CUDA numbers on the host, common/cuda_draws.py): what the seed lottery is worth at a budget.
VARIANTS["jax-random-draws"] = Variant(
    "jax's initial weights from jax.random (ours: torch's CUDA draws, the cuda backend's weights)", backend="jax",
    edits=(("        gen = CudaGenerator(seed)\n", "        gen = JaxRandomDraws(seed)\n"),
           ("\ndef model_config(",
            "\nclass JaxRandomDraws:\n"
            "    def __init__(self, seed):\n"
            "        self.key = jax.random.key(seed)\n\n"
            "    def split(self):\n"
            "        self.key, key = jax.random.split(self.key)\n"
            "        return key\n\n"
            "    def normal(self, shape, std):\n"
            "        return std * jax.random.normal(self.split(), shape, jnp.float32)\n\n"
            "    def uniform(self, shape, low, high):\n"
            "        return jax.random.uniform(self.split(), shape, jnp.float32, low, high)\n\n\n"
            "def model_config(")))


# Issue 11: what the pinned torch 2.13 gives the canvas's warm start, measured on the GPU machines' torch 2.11: the
# harness's bench/torch_autotune_cache.py applies 2.13's autotune-cache fix before the canvas runs. The edit stays
# on the import's line, so that the line numbers, and with them inductor's cached graphs, stay the canvas's.
VARIANTS["torch-2.13-autotune-cache"] = Variant(
    "torch 2.13's autotune cache on torch 2.11 (kernels tuned by coordinate descent are not tuned again on a warm "
    "start, pytorch/pytorch#172819); the canvas unchanged",
    edits=(("\nimport torch\n", "\nimport torch; __import__('torch_autotune_cache').patch()\n"),))

def apply(variant, text):
    """The canvas text with the variant's edits; a ValueError names an edit that does not apply once."""
    for find, replace in variant.edits:
        if text.count(find) != 1:
            raise ValueError(f"the edit of {find.strip()[:60]!r} finds {text.count(find)} places in the canvas, "
                             "not one: the canvas changed, update bench/ablations.py")
        text = text.replace(find, replace)
    return text
