"""Parity adapter for backends/jax/train.py, on the CPU in float32 (see harness.py)."""

import numpy as np

from harness import hyperparameters, load_trainer


def available():
    try:
        import flax  # noqa: F401
        import jax
        import optax  # noqa: F401
    except ImportError:
        return False
    return any(d.platform == "cpu" for d in jax.devices("cpu"))


def _train():
    return load_trainer("jax")


def _split(config, weights):
    """(ModelDef, params) for CPU float32 with the given weights."""
    train = _train()
    model = train.GPT(train.GPTConfig(**config))  # float32, XLA attention; no init: the weights are given
    train.import_weights(model, weights)
    return train.split_model(model)


def _numpy(arrays):
    return {name: np.asarray(a, dtype=np.float32) for name, a in arrays.items()}


def initial_weights(config, seed):
    train = _train()
    model = train.GPT(train.GPTConfig(**config))
    model.init_weights(seed)
    return _numpy(train.export_weights(model))


def constants():
    return hyperparameters(_train())


def hidden_states(config, weights, inputs):
    import jax
    train = _train()
    modeldef, params = _split(config, weights)
    def forward(params, inputs):
        model = train.merge_model(modeldef, params)
        states = model.hidden_states(inputs)
        return [*states, model.lm_head(states[-1])]

    return [np.asarray(s) for s in jax.jit(forward)(params, inputs)]


def losses(config, weights, inputs, targets):
    modeldef, params = _split(config, weights)
    return np.asarray(_train().make_loss_fn(modeldef)(params, inputs, targets))


def grads(config, weights, inputs, targets):
    import jax
    train = _train()
    modeldef, params = _split(config, weights)
    loss = lambda p: train.merge_model(modeldef, p)(inputs, targets).mean()  # noqa: E731
    return _numpy(jax.jit(jax.grad(loss))(params))


def step(config, weights, inputs, targets, schedule):
    train = _train()
    modeldef, params = _split(config, weights)
    optimizer = train.build_optimizer(params)
    opt_state = optimizer.init(params)
    train_step = train.make_train_step(modeldef, optimizer)
    batches = list(zip(inputs, targets))
    for progress, n in schedule:
        params, opt_state, _ = train_step(params, opt_state, batches, progress, n)
    return _numpy(params)


def bpb(config, weights, profile, batch_size):
    from common.evaluate import evaluate_bpb
    modeldef, params = _split(config, weights)
    losses_fn = _train().make_loss_fn(modeldef)
    return evaluate_bpb(lambda x, y: np.asarray(losses_fn(params, x, y)), batch_size, profile)
