"""Parity adapter for backends/mlx/train.py, on MLX's CPU build in float32 (see harness.py)."""

import numpy as np

from harness import hyperparameters, load_trainer


def available():
    try:
        import mlx.core as mx
    except ImportError:
        return False
    return mx.default_device() == mx.cpu or mx.metal.is_available()


def _train():
    return load_trainer("mlx")


def _model(config, weights):
    import mlx.core as mx
    train = _train()
    model = train.build_model(train.GPTConfig(**config), compute_dtype=mx.float32)
    train.import_weights(model, weights)
    return model


def _numpy(arrays):
    return {name: np.array(a, dtype=np.float32) for name, a in arrays.items()}


def initial_weights(config, seed):
    train = _train()
    return _numpy(train.export_weights(train.build_model(train.GPTConfig(**config), seed=seed)))


def constants():
    return hyperparameters(_train())


def hidden_states(config, weights, inputs):
    import mlx.core as mx
    return [np.array(s) for s in _model(config, weights).hidden_states(mx.array(inputs))]


def losses(config, weights, inputs, targets):
    import mlx.core as mx
    return np.array(_model(config, weights)(mx.array(inputs), mx.array(targets)))


def grads(config, weights, inputs, targets):
    import mlx.core as mx
    model = _model(config, weights)
    _, g = _train().loss_and_grad_fn(model)(mx.array(inputs), mx.array(targets))
    return _numpy(g)


def step(config, weights, inputs, targets, schedule):
    import mlx.core as mx
    train = _train()
    model = _model(config, weights)
    optimizer = train.build_optimizer(model, ortho_dtype=mx.float32)
    loss_and_grad = train.loss_and_grad_fn(model)
    batches = list(zip(inputs, targets))
    for progress, n in schedule:
        train.train_step(model, optimizer, batches, progress, n, loss_and_grad)
    return _numpy(train.export_weights(model))


def bpb(config, weights, profile, batch_size):
    import mlx.core as mx
    from common.evaluate import evaluate_bpb
    model = _model(config, weights)
    forward = mx.compile(lambda x, y: model(x, y), inputs=model.state)
    return evaluate_bpb(lambda x, y: np.array(forward(mx.array(x), mx.array(y))), batch_size, profile)
