"""The trainer end to end: learning on a fixed batch, the weight exchange format, the smoke run through
`make run`, and the fast-fail on a NaN loss."""

import math
import os
import re
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from common.summary import parse_summary
from cudakit import CORPUS, REPO, TRAIN_PY


def fixed_batch(config, seed=0, batch=4):
    x = torch.randint(0, config.vocab_size, (batch, config.sequence_len), generator=torch.Generator().manual_seed(seed))
    return x, x.roll(-1, dims=1)


def test_loss_falls_on_a_fixed_batch(train):
    config = train.tiny_config()
    model = train.build_model(config)
    opt = train.build_optimizer(model)
    x, y = fixed_batch(config)
    losses = [train.train_step(model, opt, [(x[:2], y[:2]), (x[2:], y[2:])], step / 40, step).item()
              for step in range(40)]
    assert losses[0] == pytest.approx(math.log(config.vocab_size), rel=0.05)  # uniform at init (lm_head ~ 0)
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.3 * losses[0], losses[::5]


def test_gradient_accumulation_equals_one_big_batch(train):
    config = train.tiny_config()
    x, y = fixed_batch(config)
    weights = {}
    for name, batches in (("one", [(x, y)]), ("two", [(x[:2], y[:2]), (x[2:], y[2:])])):
        model = train.build_model(config)
        with torch.no_grad():  # at init the zero projections leave some gradients at rounding noise
            for block in model.blocks:
                block.attn.c_proj.weight.normal_(0, 0.05, generator=torch.Generator().manual_seed(0))
                block.mlp.c_proj.weight.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
        # No weight decay: its cautious mask (g * p >= 0) flips on rounding where g * p is near 0, which moves
        # single weights by lr * wd * |p| whatever the accumulation does.
        # Step 1, not 0: on step 0 the scalars sit out.
        train.train_step(model, train.build_optimizer(model, weight_decay=0.0), batches, 0.0, 1)
        weights[name] = train.export_weights(model)
    for name in weights["one"]:
        np.testing.assert_allclose(weights["two"][name], weights["one"][name], rtol=1e-4, atol=1e-5, err_msg=name)


def test_exported_names_are_the_documented_exchange_format(train):
    config = train.tiny_config()
    arrays = train.export_weights(train.build_model(config))
    documented = set(re.findall(r"^    (\S+)\s+\(", train.__doc__, flags=re.M))
    expand = lambda pattern, layers: {pattern.replace("{i}", str(i)) for i in layers}
    L = config.n_layer
    ve_layers = [i for i in range(L) if train.has_ve(i, L)]
    expected = set()
    for name in documented:
        expected |= expand(name, ve_layers if ("ve_gate" in name or "value_embeds" in name) else range(L))
    assert set(arrays) == expected
    assert all(a.dtype == np.float32 for a in arrays.values())
    D, V = config.n_embd, config.vocab_size
    assert arrays["blocks.0.mlp.c_fc.weight"].shape == (4 * D, D)
    assert arrays["blocks.1.attn.ve_gate.weight"].shape == (config.n_head, 32)
    assert arrays["value_embeds.3.weight"].shape == (V, D)


def test_import_weights_round_trip_gives_the_same_losses(train):
    config = train.tiny_config()
    x, y = fixed_batch(config)
    source, target = train.build_model(config, seed=1), train.build_model(config, seed=2)
    with torch.no_grad():
        assert not torch.equal(source(x, y), target(x, y))
        train.import_weights(target, train.export_weights(source))
        assert torch.equal(source(x, y), target(x, y))
    with pytest.raises(KeyError):
        train.import_weights(target, {k: v for k, v in train.export_weights(source).items() if k != "wte.weight"})


def run(cmd, env, timeout=300):
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_smoke_run_through_make_with_a_budget(prepared_env):
    """make run BACKEND=cuda PROFILE=smoke BUDGET=4 DATA=../shared/corpus, with this interpreter and no
    reinstall: the budget replaces the profile's 3 s and the result records it in the profile's name."""
    data = os.path.relpath(CORPUS, REPO)
    out = run(["make", "-o", ".venv/.installed-cuda", "run", "BACKEND=cuda", "PROFILE=smoke", "BUDGET=4",
               f"DATA={data}", f"PY={sys.executable}"], prepared_env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = parse_summary(out.stdout)
    assert math.isfinite(summary["val_bpb"]) and 0 < summary["val_bpb"] < 5
    assert summary["backend"] == "cuda" and summary["profile"] == "smoke@4s"
    assert summary["num_steps"] > 2 and 4 <= summary["training_seconds"] < 6


@pytest.mark.slow
def test_nan_loss_fails_fast(prepared_env, tmp_path):
    """A NaN injected into the loss of the real training loop stops it at once: exit 1, one FAIL line, no summary."""
    script = tmp_path / "poisoned.py"
    script.write_text(textwrap.dedent(f"""
        import importlib.util
        from common.errors import run_cli
        spec = importlib.util.spec_from_file_location("train", {str(TRAIN_PY)!r})
        train = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(train)
        forward = train.GPT.forward
        def poisoned(self, idx, targets=None):
            out = forward(self, idx, targets)
            return out * float("nan") if targets is not None else out
        train.GPT.forward = poisoned
        run_cli(train.main)
    """))
    out = run([sys.executable, str(script)], prepared_env)
    assert out.returncode == 1, out.stdout[-2000:] + out.stderr[-2000:]
    fail_lines = [line for line in out.stdout.splitlines() if line.startswith("FAIL:")]
    assert len(fail_lines) == 1 and "loss is nan at step 0" in fail_lines[0], out.stdout[-2000:]
    assert "val_bpb:" not in out.stdout


@pytest.mark.slow
def test_deterministic_runs_the_loop_on_deterministic_kernels(prepared_env, tmp_path):
    """DETERMINISTIC = True: the real loop trains and evaluates to its summary with torch's deterministic
    algorithms on strictly (an operation without a deterministic kernel raises instead of warning), SDPA
    without cuDNN's attention, cuBLAS's fixed workspace and inductor's deterministic mode."""
    script = tmp_path / "deterministic.py"
    script.write_text(textwrap.dedent(f"""
        import importlib.util, os, torch
        from torch._inductor import config
        from common.errors import run_cli
        spec = importlib.util.spec_from_file_location("train", {str(TRAIN_PY)!r})
        train = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(train)
        train.DETERMINISTIC = True
        run_cli(train.main)
        print("state", torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled(), config.deterministic,
              os.environ.get("CUBLAS_WORKSPACE_CONFIG"), torch.backends.cuda.cudnn_sdp_enabled())
    """))
    env = {k: v for k, v in prepared_env.items() if k != "CUBLAS_WORKSPACE_CONFIG"}
    out = run([sys.executable, str(script)], env)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "state True False True :4096:8 False" in out.stdout, out.stdout[-2000:]
    summary = parse_summary(out.stdout)
    assert math.isfinite(summary["val_bpb"]) and summary["num_steps"] > 2


def test_scalars_sit_out_the_first_step(train):
    """init_weights starts resid_lambdas and x0_lambdas where upstream's first step leaves them at its seed
    (1.005, 0.6); step 0 leaves them there, even where their gradient is real (here the blocks' output
    projections are not zero); step 1 moves them. Without the hold, the first AdamW step would move them by
    +-lr on the sign of rounding noise (zero_scalar_gradients)."""
    config = train.tiny_config()
    model = train.build_model(config)
    with torch.no_grad():
        for block in model.blocks:
            block.attn.c_proj.weight.normal_(0, 0.05, generator=torch.Generator().manual_seed(0))
            block.mlp.c_proj.weight.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
    opt = train.build_optimizer(model)
    x, y = fixed_batch(config)
    weights = [train.export_weights(model)]
    for step in (0, 1):
        train.train_step(model, opt, [(x, y)], 0.0, step)
        weights.append(train.export_weights(model))
    init, after_0, after_1 = weights
    np.testing.assert_allclose(init["resid_lambdas"], 1.0 + 0.01 * train.SCALAR_LR)
    np.testing.assert_allclose(init["x0_lambdas"], 0.1 + train.SCALAR_LR)
    for name in ("resid_lambdas", "x0_lambdas"):
        np.testing.assert_array_equal(after_0[name], init[name], err_msg=name)
        assert np.abs(after_1[name] - after_0[name]).min() > 1e-4, name
    assert not np.array_equal(after_0["wte.weight"], init["wte.weight"])


def test_the_gpu_model_stores_upstreams_bf16_tables(train):
    """On a GPU build_model stores the embeddings and the rotary tables in bf16 (store_in_bf16), as upstream. The
    tables hold upstream's values, cos and sin of position x 10000^(-2i / head_dim) computed in float32 and rounded
    once, whatever the compiler keeps of the cast in the block. The model still runs."""
    config = train.tiny_config()
    model = train.build_model(config)
    train.store_in_bf16(model)
    head_dim = config.n_embd // config.n_head
    inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    freqs = torch.outer(torch.arange(config.sequence_len, dtype=torch.float32), inv_freq)
    assert model.cos.dtype == model.sin.dtype == torch.bfloat16
    assert torch.equal(model.cos[0, :, 0], freqs.cos().bfloat16())
    assert torch.equal(model.sin[0, :, 0], freqs.sin().bfloat16())
    assert model.wte.weight.dtype == torch.bfloat16
    assert all(ve.weight.dtype == torch.bfloat16 for ve in model.value_embeds.values())
    assert {name for name, _ in model.named_buffers()} >= {"cos", "sin"}
    x, y = fixed_batch(config)
    with torch.autocast("cpu", torch.bfloat16):
        assert torch.isfinite(model(x, y)).all()
