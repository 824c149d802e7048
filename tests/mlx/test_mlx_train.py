"""Unit tests of backends/mlx/train.py on MLX's CPU build: model layout, attention, optimizer, one-step behaviour.
Cross-backend agreement with the reference lives in tests/parity."""

import math

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core", reason="mlx is not installed (make setup BACKEND=mlx)")


def batch(config, rows=2, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, config.vocab_size, (rows, config.sequence_len), dtype=np.int32)
    y = rng.integers(0, config.vocab_size, (rows, config.sequence_len), dtype=np.int32)
    return x, y


def exercised_model(train, config, seed=0):
    """A model whose zero-initialised matrices (c_proj, ve_gate) are filled and scalars perturbed. At the true
    init every block outputs zero, and the scale-invariant final norm leaves the lambdas' gradients at rounding
    level, where Adam's first step (g / (|g| + 1e-10)) is a coin flip."""
    model = train.build_model(config)
    rng = np.random.default_rng(seed)
    weights = train.export_weights(model)
    for name, w in weights.items():
        if name.endswith(("c_proj.weight", "ve_gate.weight")):
            weights[name] = rng.uniform(-0.2, 0.2, w.shape).astype(np.float32)
        elif name.endswith("_lambdas"):
            weights[name] = (w + rng.normal(0, 0.1, w.shape)).astype(np.float32)
    train.import_weights(model, weights)
    return model


def test_parameter_names_and_shapes_are_the_references(train):
    cfg = train.tiny_config()  # L=4, D=64, H=2, V=512: value embeddings on layers 1 and 3
    shapes = {n: p.shape for n, p in train.tree_flatten(train.build_model(cfg).parameters())}
    D, V, H, L = 64, 512, 2, 4
    expected = {"wte.weight": (V, D), "lm_head.weight": (V, D), "resid_lambdas": (L,), "x0_lambdas": (L,)}
    for i in range(L):
        for m in ("c_q", "c_k", "c_v", "c_proj"):
            expected[f"blocks.{i}.attn.{m}.weight"] = (D, D)
        expected[f"blocks.{i}.mlp.c_fc.weight"] = (4 * D, D)
        expected[f"blocks.{i}.mlp.c_proj.weight"] = (D, 4 * D)
    for i in (1, 3):
        expected[f"blocks.{i}.attn.ve_gate.weight"] = (H, 32)
        expected[f"value_embeds.{i}.weight"] = (V, D)
    assert {n: tuple(s) for n, s in shapes.items()} == expected


def test_init_follows_the_reference(train):
    w = train.export_weights(train.build_model(train.model_config(2, 64, 8192)))
    D = 128
    assert abs(w["wte.weight"].std() - 1.0) < 0.01
    assert abs(w["lm_head.weight"].std() - 0.001) < 1e-4
    assert abs(w["blocks.0.attn.c_q.weight"].std() - D ** -0.5) < 0.01
    assert np.abs(w["blocks.0.mlp.c_fc.weight"]).max() <= (3 / D) ** 0.5
    assert not w["blocks.0.attn.c_proj.weight"].any() and not w["blocks.1.mlp.c_proj.weight"].any()
    assert not w["blocks.1.attn.ve_gate.weight"].any()
    np.testing.assert_allclose(w["resid_lambdas"], 1.005)
    np.testing.assert_allclose(w["x0_lambdas"], 0.6)


def test_windows_are_sssl_with_a_full_last_layer(train):
    cfg = train.tiny_config()
    assert train.window_sizes(cfg) == [16, 16, 16, 32]
    mask = np.array(train.sliding_window_mask(8, 2))
    i, j = np.indices((8, 8))
    np.testing.assert_array_equal(mask, (i - j >= 0) & (i - j <= 2))
    assert train.sliding_window_mask(8, 2) is train.sliding_window_mask(8, 2)  # cached per (T, window)


@pytest.mark.parametrize("window", [3, 16])
def test_sliding_window_attention_equals_dense_attention(train, window):
    """mx.fast.scaled_dot_product_attention with the cached mask (or "causal") against softmax written out,
    forward and backward."""
    B, H, T, hd = 2, 2, 16, 8
    q, k, v = (mx.random.normal((B, H, T, hd), key=mx.random.key(s)) for s in range(3))
    cot = mx.random.normal((B, H, T, hd), key=mx.random.key(3))
    i = mx.arange(T)
    allowed = ((i[:, None] - i[None, :]) >= 0) & ((i[:, None] - i[None, :]) <= window)

    def dense(q, k, v):
        scores = (q @ k.swapaxes(-1, -2)) / math.sqrt(hd)
        return mx.softmax(mx.where(allowed, scores, -mx.inf), axis=-1) @ v

    fast = lambda q, k, v: train.attention(q, k, v, window)
    np.testing.assert_allclose(np.array(fast(q, k, v)), np.array(dense(q, k, v)), rtol=1e-5, atol=1e-6)
    g_fast = mx.grad(lambda *a: (fast(*a) * cot).sum(), argnums=(0, 1, 2))(q, k, v)
    g_dense = mx.grad(lambda *a: (dense(*a) * cot).sum(), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(g_fast, g_dense):
        np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-4, atol=1e-5)


def test_export_import_round_trip(train):
    cfg = train.tiny_config()
    a, b = train.build_model(cfg, seed=1), train.build_model(cfg, seed=2)
    x, y = batch(cfg)
    train.import_weights(b, train.export_weights(a))
    np.testing.assert_array_equal(np.array(a(mx.array(x), mx.array(y))), np.array(b(mx.array(x), mx.array(y))))
    weights = train.export_weights(a)
    assert all(w.dtype == np.float32 for w in weights.values())
    with pytest.raises(KeyError, match="missing"):
        train.import_weights(b, {k: v for k, v in weights.items() if k != "lm_head.weight"})
    with pytest.raises(ValueError, match="wte.weight"):
        train.import_weights(b, dict(weights, **{"wte.weight": np.zeros((3, 3), np.float32)}))


@pytest.mark.parametrize("shape", [(4, 64, 64), (2, 256, 64), (2, 64, 256), (1, 2, 32)])
def test_polar_express_orthogonalises(train, shape):
    """Five Polar Express iterations bring every singular value into about [0.7, 1.2] (they do not reach 1
    exactly by design), for square, tall and wide stacks."""
    g = mx.random.normal(shape, key=mx.random.key(0))
    s = np.linalg.svd(np.array(train.polar_express(g, mx.float32)), compute_uv=False)
    assert s.min() > 0.6 and s.max() < 1.25, (s.min(), s.max())


def test_optimizer_groups_and_learning_rates(train):
    model = train.build_model(train.model_config(2, 64, 8192))  # D = 128
    opt = train.build_optimizer(model)
    groups = {g["name"]: g for g in opt.param_groups}
    scale = (128 / 768) ** -0.5
    assert groups["lm_head"]["lr"] == pytest.approx(train.UNEMBEDDING_LR * scale)
    assert groups["wte"]["lr"] == pytest.approx(train.EMBEDDING_LR * scale)
    assert groups["value_embeds"]["lr"] == pytest.approx(train.EMBEDDING_LR * scale)
    assert groups["value_embeds"]["params"] == ["value_embeds.1.weight"]
    assert groups["resid_lambdas"]["lr"] == pytest.approx(train.SCALAR_LR * 0.01)
    assert groups["x0_lambdas"]["lr"] == train.SCALAR_LR and groups["x0_lambdas"]["betas"] == (0.96, 0.95)
    muon = {n: g for n, g in groups.items() if g["kind"] == "muon"}
    assert sorted(muon) == ["muon_128x128", "muon_128x512", "muon_1x32", "muon_512x128"]
    assert all(g["lr"] == train.MATRIX_LR and g["weight_decay"] == train.WEIGHT_DECAY for g in muon.values())
    assert len(muon["muon_128x128"]["params"]) == 8


def test_schedules_follow_time_progress_and_the_momentum_the_step_count(train):
    opt = train.build_optimizer(train.build_model(train.tiny_config()))
    muon = next(g for g in opt.param_groups if g["kind"] == "muon")
    train.set_schedules(opt, 0.0, 0)
    assert (muon["lr"], muon["momentum"], muon["weight_decay"]) == (train.MATRIX_LR, 0.85, train.WEIGHT_DECAY)
    train.set_schedules(opt, 0.75, 150)
    assert muon["lr"] == pytest.approx(train.MATRIX_LR * 0.5)
    assert muon["momentum"] == pytest.approx(0.90)
    assert muon["weight_decay"] == pytest.approx(train.WEIGHT_DECAY * 0.25)
    train.set_schedules(opt, 0.75, 300)
    assert muon["momentum"] == pytest.approx(0.95)
    train.set_schedules(opt, 1.0, 10)
    assert muon["lr"] == 0.0 and muon["weight_decay"] == 0.0 and muon["momentum"] == pytest.approx(0.85 + 0.1 / 30)


def test_compiled_update_equals_eager_update(train):
    """mx.compile changes nothing numerically: the compiled optimizer against its own pure function, eagerly."""
    model = exercised_model(train, train.tiny_config())
    opt = train.build_optimizer(model)
    x, y = batch(model.config)
    _, grads = train.loss_and_grad_fn(model)(mx.array(x), mx.array(y))
    params = dict(train.tree_flatten(model.parameters()))
    state, hyper = opt.init_state(params), opt.hyperparameters(params)
    compiled, _ = opt._update(params, grads, state, hyper)
    eager, _ = opt._pure_update(params, grads, state, hyper)
    for name in params:
        np.testing.assert_allclose(np.array(compiled[name]), np.array(eager[name]), rtol=1e-5, atol=1e-7, err_msg=name)


def test_gradient_accumulation_equals_one_big_batch(train):
    cfg = train.tiny_config()
    x, y = batch(cfg, rows=4)
    split, whole = exercised_model(train, cfg), exercised_model(train, cfg)
    # No weight decay: the cautious mask ((g * p) >= 0) flips on rounding where g * p is near 0.
    opt_split = train.build_optimizer(split, weight_decay=0.0)
    opt_whole = train.build_optimizer(whole, weight_decay=0.0)
    # Step 1, not 0: on step 0 the scalars sit out.
    loss_split = train.train_step(split, opt_split, [(x[:2], y[:2]), (x[2:], y[2:])], 0.0, 1)
    loss_whole = train.train_step(whole, opt_whole, [(x, y)], 0.0, 1)
    assert loss_split.item() == pytest.approx(loss_whole.item(), rel=1e-6)
    a, b = train.export_weights(split), train.export_weights(whole)
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-4, atol=1e-4, err_msg=name)


def test_loss_falls_on_a_fixed_batch(train):
    cfg = train.tiny_config()
    model = train.build_model(cfg)
    opt = train.build_optimizer(model)
    step = train.loss_and_grad_fn(model)
    x, y = batch(cfg)
    losses = [train.train_step(model, opt, [(x, y)], 0.0, i, step).item() for i in range(30)]
    assert losses[0] == pytest.approx(math.log(cfg.vocab_size), rel=0.05)
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.fixture
def eager():
    """mx.compile off: on the CPU every new compiled graph is built with the C++ compiler on first use (tens of
    seconds on a fresh machine), which buys nothing for a dtype test."""
    mx.disable_compile()
    yield
    mx.enable_compile()


def test_bf16_compute_path(train, eager):
    """The Metal path (bf16 activations, float32 weights and optimizer state) runs on the CPU too: close to float32."""
    cfg = train.tiny_config()
    f32, bf16 = train.build_model(cfg), train.build_model(cfg, compute_dtype=mx.bfloat16)
    x, y = batch(cfg)
    l32, l16 = f32(mx.array(x), mx.array(y)), bf16(mx.array(x), mx.array(y))
    assert l16.dtype == mx.float32
    np.testing.assert_allclose(np.array(l16), np.array(l32), rtol=3e-2)
    opt = train.build_optimizer(bf16, ortho_dtype=mx.bfloat16)
    loss = train.train_step(bf16, opt, [(x, y)], 0.0, 0).item()
    assert math.isfinite(loss)
    assert all(p.dtype == mx.float32 for _, p in train.tree_flatten(bf16.parameters()))


def test_flops_and_parameter_count_equal_the_references(train):
    """MFU and num_params_M in the summary must mean the same as the reference's: same count, same FLOPs/token."""
    pytest.importorskip("torch", reason="the reference backend (torch) is not installed")
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[2] / "backends" / "cuda" / "train.py"
    spec = importlib.util.spec_from_file_location("cuda_train_for_mlx_tests", path)
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)
    for depth, seq_len in ((2, 64), (4, 1024)):
        ref_model = reference.GPT(reference.model_config(depth, seq_len, 8192))
        model = train.GPT(train.model_config(depth, seq_len, 8192))
        assert model.flops_per_token() == ref_model.flops_per_token()
        count = sum(p.size for _, p in train.tree_flatten(model.parameters()))
        assert count == sum(p.numel() for p in ref_model.parameters())


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_norm_eps_is_float32s_machine_epsilon(train, dtype):
    """As the reference's F.rms_norm: float32's epsilon for float32 and bf16 inputs alike (not bf16's 7.8e-3,
    not 1e-6), which shows on inputs whose mean square is near eps."""
    x = np.full((2, 64), 1e-4, np.float32) * np.linspace(0.5, 1.5, 64, dtype=np.float32)
    got = np.array(train.norm(mx.array(x).astype(getattr(mx, dtype))).astype(mx.float32))
    x32 = x.astype(np.float64) if dtype == "float32" else np.array(mx.array(x).astype(mx.bfloat16).astype(mx.float32), np.float64)
    want = x32 / np.sqrt((x32 ** 2).mean(-1, keepdims=True) + np.finfo(np.float32).eps)
    np.testing.assert_allclose(got, want, rtol=1e-5 if dtype == "float32" else 1e-2)


def test_scalars_sit_out_the_first_step(train):
    """Step 0 leaves resid_lambdas and x0_lambdas where they were, even where their gradient is real (an
    exercised model); step 1 moves them, as the reference."""
    cfg = train.tiny_config()
    model = exercised_model(train, cfg)
    opt = train.build_optimizer(model)
    x, y = batch(cfg)
    weights = [train.export_weights(model)]
    for step in (0, 1):
        train.train_step(model, opt, [(x, y)], 0.0, step).item()
        weights.append(train.export_weights(model))
    init, after_0, after_1 = weights
    for name in ("resid_lambdas", "x0_lambdas"):
        np.testing.assert_array_equal(after_0[name], init[name], err_msg=name)
        assert np.abs(after_1[name] - after_0[name]).min() > 1e-4, name
    assert not np.array_equal(after_0["wte.weight"], init["wte.weight"])


def test_the_mix_multiplies_by_the_float32_scalars_and_rounds_once(train):
    """In bf16 compute (Metal's, here on the CPU) the per-layer mix multiplies by the float32 scalars at float32 and
    rounds once, as the reference's compiled code does; cast to bf16 first, 1.005 would act as 1.0078. At init
    every block's output projections are zero, so the first block's output is the mix of x0 with itself."""
    config = train.tiny_config()
    model = train.build_model(config, compute_dtype=mx.bfloat16)
    x0, first = model.hidden_states(mx.array(batch(config)[0]))[:2]
    assert first.dtype == mx.bfloat16
    lam, lam0 = model.resid_lambdas[0], model.x0_lambdas[0]
    assert lam.dtype == lam0.dtype == mx.float32
    x0 = x0.astype(mx.float32)
    exact = np.array((lam * x0 + lam0 * x0).astype(mx.bfloat16).astype(mx.float32))
    rounded_first = np.array(((lam.astype(mx.bfloat16) + lam0.astype(mx.bfloat16)).astype(mx.float32) * x0)
                             .astype(mx.bfloat16).astype(mx.float32))
    assert not np.array_equal(exact, rounded_first)  # the test tells the two apart
    np.testing.assert_array_equal(np.array(first.astype(mx.float32)), exact)
