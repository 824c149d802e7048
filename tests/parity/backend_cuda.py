"""Parity adapter for the reference, backends/cuda/train.py, on the CPU in float32 (see harness.py)."""

import numpy as np

from harness import hyperparameters, load_trainer


def available():
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def _train():
    return load_trainer("cuda")


def _copy(arrays):
    return {name: np.array(a, dtype=np.float32) for name, a in arrays.items()}  # export_weights may share memory


def _model(config, weights):
    train = _train()
    model = train.build_model(train.GPTConfig(**config), "cpu")
    train.import_weights(model, weights)
    return model


def _long(a):
    import torch
    return torch.from_numpy(np.asarray(a)).long()


def init_weights(config):
    """The reference's own initialisation (seed SEED), as exchange-format arrays. The reference adapter only."""
    train = _train()
    return _copy(train.export_weights(train.build_model(train.GPTConfig(**config), "cpu")))


def cuda_initial_weights(config, seed):
    """The reference's initialisation as it runs on an H100/H200: its own init_weights, with nn.init's normal_ and
    uniform_ drawing torch's CUDA numbers (common/cuda_draws.py, checked against a GPU by
    bench/torch_cuda_draws.py) in place of the CPU generator's. The reference adapter only."""
    import torch
    from common.cuda_draws import CudaGenerator
    train = _train()
    with torch.device("meta"):  # built outside the patch: the modules' own constructors call nn.init too
        model = train.GPT(train.GPTConfig(**config))
    model.to_empty(device="cpu")
    gen = CudaGenerator(seed)

    def normal_(tensor, mean=0.0, std=1.0):
        with torch.no_grad():
            return tensor.copy_(torch.from_numpy(gen.normal(tuple(tensor.shape), std, mean)))

    def uniform_(tensor, a=0.0, b=1.0):
        with torch.no_grad():
            return tensor.copy_(torch.from_numpy(gen.uniform(tuple(tensor.shape), a, b)))

    cpu_draws = torch.nn.init.normal_, torch.nn.init.uniform_
    torch.nn.init.normal_, torch.nn.init.uniform_ = normal_, uniform_
    try:
        model.init_weights()
    finally:
        torch.nn.init.normal_, torch.nn.init.uniform_ = cpu_draws
    return _copy(train.export_weights(model))


def constants():
    return hyperparameters(_train())


def hidden_states(config, weights, inputs):
    import torch
    train = _train()
    model = _model(config, weights)
    idx = _long(inputs)
    outputs = []
    hooks = [b.register_forward_hook(lambda m, a, out: outputs.append(out.numpy().copy())) for b in model.blocks]
    with torch.no_grad():
        logits = model(idx).numpy()
        x0 = model.embed(idx).numpy()
    for h in hooks:
        h.remove()
    return [x0, *outputs, logits]


def losses(config, weights, inputs, targets):
    import torch
    with torch.no_grad():
        return _model(config, weights)(_long(inputs), _long(targets)).numpy()


def grads(config, weights, inputs, targets):
    model = _model(config, weights)
    model(_long(inputs), _long(targets)).mean().backward()
    return {name: p.grad.numpy().copy() for name, p in model.named_parameters()}


def step(config, weights, inputs, targets, schedule):
    train = _train()
    model = _model(config, weights)
    optimizer = train.build_optimizer(model)
    batches = [(_long(x), _long(y)) for x, y in zip(inputs, targets)]
    for progress, n in schedule:
        train.train_step(model, optimizer, batches, progress, n)
    return _copy(train.export_weights(model))


def bpb(config, weights, profile, batch_size):
    import torch
    from common.evaluate import evaluate_bpb
    model = _model(config, weights)

    def loss_fn(inputs, targets):
        with torch.no_grad():
            return model(_long(inputs), _long(targets)).numpy()

    return evaluate_bpb(loss_fn, batch_size, profile)
