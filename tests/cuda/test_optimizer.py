"""MuonAdamW: Polar Express orthogonalises, one Muon step moves a matrix by lr x an orthogonal matrix, cautious
weight decay only decays where update and weight agree, and every AdamW group steps with its own LR."""

import pytest
import torch


def svdvals(x):
    return torch.linalg.svdvals(x.double())


def conditioned(rows, cols, gen, batch=()):
    """A random matrix whose singular values spread log-uniformly over [0.05, 1] (a Gaussian matrix has some
    near zero, which five Polar Express steps are not meant to lift to 1)."""
    u, _ = torch.linalg.qr(torch.randn(*batch, rows, rows, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(*batch, cols, cols, generator=gen, dtype=torch.float64))
    k = min(rows, cols)
    s = torch.exp(torch.empty(*batch, k, dtype=torch.float64).uniform_(-3.0, 0.0, generator=gen))
    return (u[..., :k] * s.unsqueeze(-2) @ v[..., :k].mT).float()


@pytest.mark.parametrize("shape", [(64, 64), (64, 256), (256, 64)])
def test_polar_express_gives_near_orthogonal_matrix(train, shape):
    g = conditioned(*shape, torch.Generator().manual_seed(0), batch=(3,))
    x = train.polar_express(g, torch.float32)
    s = svdvals(x)
    # Polar Express's 5 steps map singular values into about [0.7, 1.2] (not exactly 1, by design).
    assert s.min() > 0.6 and s.max() < 1.25, (s.min().item(), s.max().item())
    # ... and it points the same way as the exact polar factor U V^T.
    u, _, vh = torch.linalg.svd(g.double(), full_matrices=False)
    cos = (x.double() * (u @ vh)).sum(dim=(-2, -1)) / (x.double().norm(dim=(-2, -1)) * (u @ vh).norm(dim=(-2, -1)))
    assert cos.min() > 0.98


def test_compiled_polar_express_in_bf16_rounds_once_per_fused_step(train):
    """On a GPU, compile_optimizer compiles Polar Express, as upstream compiles its Muon step: fused, the bf16
    elementwise work rounds once per kernel, and the result lands well closer to the exact (float64) iteration
    than op by op, where every step rounds."""
    gen = torch.Generator().manual_seed(4)
    g = (torch.randn(4, 512, 8, generator=gen) @ torch.randn(4, 8, 128, generator=gen)
         + 0.3 * torch.randn(4, 512, 128, generator=gen))                   # gradient-like: low rank and noise
    exact = train.polar_express(g.double(), torch.float64)
    opt = train.compile_optimizer(train.MuonAdamW([dict(kind="muon", params=[torch.nn.Parameter(g[0])])]))

    def error(x):
        return ((x.double() - exact).norm() / exact.norm()).item()
    eager, fused = error(train.polar_express(g, torch.bfloat16)), error(opt.orthogonalise(g, torch.bfloat16))
    assert fused < 0.6 * eager, (fused, eager)                          # measured: 1.5e-2 against 3.9e-2


def single_matrix_muon(train, w, grad, lr=0.02, wd=0.0):
    p = torch.nn.Parameter(w.clone())
    p.grad = grad.clone()
    opt = train.MuonAdamW([dict(kind="muon", name="m", params=[p], lr=lr, momentum=0.95, beta2=0.95,
                                weight_decay=wd, initial_lr=lr, initial_weight_decay=wd)])
    opt.step()
    return p.detach()


def test_one_muon_step_moves_square_matrix_by_lr_times_orthogonal(train):
    gen = torch.Generator().manual_seed(1)
    w, grad = torch.randn(64, 64, generator=gen) * 0.1, conditioned(64, 64, gen)
    lr = 0.02
    update = (w - single_matrix_muon(train, w, grad, lr)) / lr
    s = svdvals(update)
    assert s.min() > 0.6 and s.max() < 1.25
    # NorMuon equalises row norms; a square orthogonal matrix has unit rows, so the rms per row stays ~1.
    rows = update.norm(dim=1)
    assert torch.allclose(rows, rows.mean().expand_as(rows), rtol=1e-4)
    assert abs(update.norm().item() - train.polar_express(grad[None], torch.float32)[0].norm().item()) < 1e-3
    # The update follows the gradient (momentum at step 1 only rescales it).
    assert (update * grad).sum() > 0


def test_muon_scales_lr_for_tall_matrices(train):
    gen = torch.Generator().manual_seed(2)
    w, grad = torch.randn(256, 64, generator=gen) * 0.1, torch.randn(256, 64, generator=gen)
    lr = 0.01
    update = (w - single_matrix_muon(train, w, grad, lr)) / lr
    expected = 2.0 * train.polar_express(grad[None], torch.float32)[0].norm()  # sqrt(256 / 64) = 2
    assert abs(update.norm().item() / expected.item() - 1) < 1e-4


def test_cautious_weight_decay_only_where_signs_agree(train):
    gen = torch.Generator().manual_seed(3)
    w, grad = torch.randn(64, 64, generator=gen), torch.randn(64, 64, generator=gen)
    lr, wd = 0.02, 0.5
    plain = single_matrix_muon(train, w, grad, lr, wd=0.0)
    decayed = single_matrix_muon(train, w, grad, lr, wd=wd)
    update = (w - plain) / lr
    agree = (update * w) >= 0
    expected = plain - lr * wd * w * agree
    assert torch.allclose(decayed, expected, atol=1e-6)
    assert 0.3 < agree.float().mean() < 0.7  # both cases occur


def test_groups_cover_every_parameter_once_with_their_lrs(train):
    config = train.tiny_config()
    model = train.build_model(config)
    opt = train.build_optimizer(model)
    groups = {g["name"]: g for g in opt.param_groups}
    scale = (config.n_embd / 768) ** -0.5
    expected = {
        "lm_head": train.UNEMBEDDING_LR * scale,
        "wte": train.EMBEDDING_LR * scale,
        "value_embeds": train.EMBEDDING_LR * scale,
        "resid_lambdas": train.SCALAR_LR * 0.01,
        "x0_lambdas": train.SCALAR_LR,
    }
    for name, lr in expected.items():
        assert groups[name]["kind"] == "adamw" and groups[name]["lr"] == pytest.approx(lr), name
    muon = [g for g in opt.param_groups if g["kind"] == "muon"]
    assert all(g["lr"] == train.MATRIX_LR for g in muon)
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for g in muon for p in g["params"]} == {n for n in names.values() if n.startswith("blocks.")}


def test_each_adamw_group_steps_by_its_lr(train):
    """Adam's first step moves every weight by about lr (m_hat / sqrt(v_hat) = sign(grad)), so the step size
    read off each parameter is its group's LR, after the schedule has been applied."""
    model = train.build_model(train.tiny_config())
    with torch.no_grad():  # the zero-initialised projections would block every gradient to the value embeddings
        for block in model.blocks:
            block.attn.c_proj.weight.normal_(0, 0.05)
    opt = train.build_optimizer(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x = torch.randint(0, model.config.vocab_size, (2, model.config.sequence_len), generator=torch.Generator().manual_seed(0))
    progress = 0.75  # in the warmdown: LR multiplier 0.5
    train.train_step(model, opt, [(x, x.roll(-1, 1))], progress, 1)  # the optimizer's first step (on 0 the scalars sit out)
    lrm = train.lr_multiplier(progress)
    assert lrm == pytest.approx(0.5)
    for group in opt.param_groups:
        if group["kind"] != "adamw":
            continue
        assert group["lr"] == pytest.approx(group["initial_lr"] * lrm)
        for p in group["params"]:
            name = next(n for n, q in model.named_parameters() if q is p)
            moved = (p.detach() - before[name]).abs()
            moved = moved[moved > 0]  # embedding rows of unseen tokens get no gradient
            assert moved.numel() > 0, name
            # Entries with a gradient near Adam's eps move a little less; none moves more.
            assert moved.median().item() == pytest.approx(group["lr"], rel=1e-3), name
            assert moved.max().item() <= group["lr"] * (1 + 1e-5) + 1e-6, name  # + float32 rounding of p


def test_lr_and_weight_decay_follow_training_progress(train):
    assert train.lr_multiplier(0.0) == 1.0 and train.lr_multiplier(1.0) == pytest.approx(train.FINAL_LR_FRAC)
    model = train.build_model(train.tiny_config())
    opt = train.build_optimizer(model)
    train.set_schedules(opt, 0.5, 0)
    muon = next(g for g in opt.param_groups if g["kind"] == "muon")
    assert muon["weight_decay"] == pytest.approx(train.WEIGHT_DECAY * 0.5)


@pytest.mark.parametrize("step, momentum", [(0, 0.85), (1, 0.85 + 0.1 / 300), (30, 0.86), (150, 0.90),
                                            (299, 0.95 - 0.1 / 300), (300, 0.95), (900, 0.95)])
def test_muon_momentum_ramps_over_300_steps_whatever_the_time(train, step, momentum):
    """Upstream ramps 0.85 -> 0.95 over the first 300 optimizer steps (untimed ones included), not over a
    share of the time budget: at a 60-s budget (about 200 steps on an H100) it never reaches 0.95."""
    model = train.build_model(train.tiny_config())
    opt = train.build_optimizer(model)
    for progress in (0.0, 0.3, 1.0):
        train.set_schedules(opt, progress, step)
        assert all(g["momentum"] == pytest.approx(momentum, abs=1e-12) for g in opt.param_groups if g["kind"] == "muon")


def test_adamw_on_bf16_weights_rounds_once_per_stored_tensor(train):
    """On a GPU the embeddings are bf16. Their AdamW step is computed in float32 and rounded once into each
    stored tensor (weight, first and second moment), as upstream's compiled kernel does; op-by-op bf16
    arithmetic rounds every intermediate and lands elsewhere."""
    g = torch.Generator().manual_seed(0)
    p32 = torch.randn(64, 256, generator=g).bfloat16().float()
    grads = [torch.randn(64, 256, generator=g) * 1e-3 for _ in range(3)]
    want = [t.clone() for t in (p32, torch.zeros_like(p32), torch.zeros_like(p32))]
    got = [t.bfloat16() for t in want]
    for step, grad in enumerate(grads, 1):
        (p, m, v), (pb, mb, vb) = want, got
        train.adamw_update(p, grad.bfloat16().float(), m, v, step, 0.7, 0.8, 0.95, 1e-10, 0.0)
        for t in want:
            t.copy_(t.bfloat16().float())     # what bf16 storage keeps of each stored tensor
        train.adamw_update(pb, grad.bfloat16(), mb, vb, step, 0.7, 0.8, 0.95, 1e-10, 0.0)
    for w, o in zip(want, got):
        assert o.dtype == torch.bfloat16
        assert torch.equal(o.float(), w), (o.float() - w).abs().max()


def test_norm_eps_is_float32s_machine_epsilon_for_float32_and_bf16(train):
    """F.rms_norm's default eps, as upstream: the epsilon of the type it computes in, float32's 1.2e-7 also for
    bf16 inputs (the GPU's q, k and residual stream), not bf16's 7.8e-3. On inputs whose mean square is near
    eps a fixed eps (the old 1e-6) gives clearly other outputs."""
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.full((3, 64), 0.03, dtype=dtype) * torch.linspace(0.5, 1.5, 64, dtype=dtype)
        x32 = x.float()
        want = x32 / torch.sqrt(x32.square().mean(-1, keepdim=True) + torch.finfo(torch.float32).eps)
        torch.testing.assert_close(train.norm(x).float(), want, rtol=1e-2 if dtype == torch.bfloat16 else 1e-5, atol=0)
    tiny = torch.full((1, 64), 1e-4)
    assert train.norm(tiny)[0, 0].item() == pytest.approx(1e-4 / (1e-8 + 2**-23) ** 0.5, rel=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_norm_keeps_bf16_under_cuda_autocast(train):
    """From torch 2.12, CUDA autocast runs rms_norm in float32 and returns float32 (pytorch/pytorch#188955); the
    canvas's norm casts back, so the residual stream, the queries and the keys stay bf16, as with torch 2.11."""
    x = torch.randn(4, 64, device="cuda", dtype=torch.bfloat16)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = train.norm(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), train.norm(x.float()), rtol=1e-2, atol=0)


def test_initial_weights_are_upstreams_draws_for_the_seed(train):
    """build_model makes the model on the meta device and draws only init_weights' numbers, in upstream's
    order (wte, lm_head, then per block c_q, c_k, c_v, c_fc, then the value embeddings), so a seed gives
    upstream's exact initial weights. Drawing PyTorch's default initialisation first would change them all."""
    config = train.tiny_config()
    model = train.build_model(config, "cpu", seed=7)
    D, V = config.n_embd, config.vocab_size
    s = 3**0.5 * D**-0.5
    torch.manual_seed(7)
    want = {"wte.weight": torch.empty(V, D).normal_(0, 1), "lm_head.weight": torch.empty(V, D).normal_(0, 0.001)}
    for i in range(config.n_layer):
        for name, shape in (("attn.c_q", (D, D)), ("attn.c_k", (D, D)), ("attn.c_v", (D, D)), ("mlp.c_fc", (4 * D, D))):
            want[f"blocks.{i}.{name}.weight"] = torch.empty(shape).uniform_(-s, s)
    for i in model.value_embeds:
        want[f"value_embeds.{i}.weight"] = torch.empty(V, D).uniform_(-s, s)
    got = dict(model.named_parameters())
    for name, w in want.items():
        assert torch.equal(got[name].detach(), w), name
    assert all(not got[n].detach().any() for n in got if n.endswith(("c_proj.weight", "ve_gate.weight")))
    positions = torch.arange(config.sequence_len, dtype=torch.float32)    # the rotary tables are filled too
    torch.testing.assert_close(model.cos[0, :, 0, 0], positions.cos())
    torch.testing.assert_close(model.sin[0, :, 0, 0], positions.sin())
