"""`make bench BACKEND=mlx`: one training step at the smoke profile's config (depth 2, T 64, 2 micro-batches of 8
sequences = 1024 tokens), on the CPU, for every backend that is installed, in the same run. Each backend's step
is built from its own train.py's public pieces, exactly as its training loop builds it. Random tokens: the
step's cost does not depend on their values, and no data preparation is needed."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
PROFILE = "smoke"
ROUNDS, WARMUP_ROUNDS = 5, 2  # warm-up rounds take the compilation (torch eager: none; jax jit; mlx compile)


def load_train(backend):
    """backends/<backend>/train.py as a module (loaded by path: every backend's file is called train.py)."""
    module_name = f"{backend}_train"
    if module_name not in sys.modules:
        path = REPO / "backends" / backend / "train.py"
        if not path.exists():
            pytest.skip(f"{path.relative_to(REPO)} does not exist yet")
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[module_name] = module
    return sys.modules[module_name]


def smoke_batches(profile, accum):
    rng = np.random.default_rng(0)
    shape = (profile.device_batch_size, profile.max_seq_len)
    return [(rng.integers(0, profile.vocab_size, shape, dtype=np.int32),
             rng.integers(0, profile.vocab_size, shape, dtype=np.int32)) for _ in range(accum)]


def cuda_step(train, config, batches):
    import torch
    torch.manual_seed(0)
    model = train.build_model(config, "cpu")
    optimizer = train.build_optimizer(model)
    batches = [(torch.from_numpy(x).long(), torch.from_numpy(y).long()) for x, y in batches]
    return lambda: train.train_step(model, optimizer, batches, 0.0, 0).item()


def jax_step(train, config, batches):
    model = train.build_model(config, gpu=False)
    modeldef, params = train.split_model(model)
    optimizer = train.build_optimizer(params)
    state = {"params": params, "opt": optimizer.init(params)}
    step = train.make_train_step(modeldef, optimizer)

    def run():
        state["params"], state["opt"], loss = step(state["params"], state["opt"], batches, 0.0, 0)
        return float(loss)

    return run


def mlx_step(train, config, batches):
    model = train.build_model(config)
    optimizer = train.build_optimizer(model)
    loss_and_grad = train.loss_and_grad_fn(model)
    return lambda: train.train_step(model, optimizer, batches, 0.0, 0, loss_and_grad).item()


BACKENDS = {"cuda": ("torch", cuda_step), "jax": ("jax", jax_step), "mlx": ("mlx.core", mlx_step)}


@pytest.mark.bench
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_bench_train_step_cpu(benchmark, backend):
    framework, make_step = BACKENDS[backend]
    pytest.importorskip(framework, reason=f"{framework} is not installed (make setup BACKEND={backend})")
    from common.platform import get_profile

    profile = get_profile(PROFILE)
    train = load_train(backend)
    config = train.model_config(profile.depth, profile.max_seq_len, profile.vocab_size)
    accum = profile.total_batch_size // (profile.device_batch_size * profile.max_seq_len)
    step = make_step(train, config, smoke_batches(profile, accum))
    benchmark.extra_info.update(backend=backend, tokens_per_step=profile.total_batch_size, depth=profile.depth)
    loss = benchmark.pedantic(step, rounds=ROUNDS, warmup_rounds=WARMUP_ROUNDS, iterations=1)
    assert np.isfinite(loss)
    if benchmark.stats:  # None under --benchmark-disable
        benchmark.extra_info["tokens_per_sec"] = profile.total_batch_size / benchmark.stats["median"]
