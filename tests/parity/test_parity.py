"""Every backend against the reference on the same weights and batch: forward layer by layer, per-token
losses, gradients, two optimizer steps and evaluate_bpb. Tolerances and the adapter interface: harness.py."""

import numpy as np
import pytest

import harness


@pytest.fixture(params=harness.BACKENDS)
def backend(request):
    module = harness.load_backend(request.param)
    if module is None:
        pytest.skip(f"no parity adapter tests/parity/backend_{request.param}.py")
    if not module.available():
        pytest.skip(f"backend {request.param} is not available on this machine")
    return module


def test_constants(backend, case):
    reference, got = case.reference.constants(), backend.constants()
    differ = {k: (got.get(k, "missing"), v) for k, v in reference.items() if got.get(k, "missing") != v}
    assert not differ, f"hyperparameter constants that differ from the reference (got, reference): {differ}"


def test_initial_weights(backend, case):
    """Every backend starts from the reference's weights for the seed as it draws them on an H100/H200: its own
    init_weights, exactly (the draws' order, shapes, scales and fixed values), and other weights for another seed."""
    want = case.reference.cuda_initial_weights(case.config, 42)
    got = backend.initial_weights(case.config, 42)
    assert set(got) == set(want), f"names differ from the reference's: {sorted(set(got) ^ set(want))}"
    differ = [name for name in want if got[name].shape != want[name].shape or not np.array_equal(got[name], want[name])]
    assert not differ, f"initial weights that differ from the reference's at seed 42: {differ}"
    other = backend.initial_weights(case.config, 43)
    assert not np.array_equal(other["wte.weight"], got["wte.weight"])
    assert not np.array_equal(other["blocks.0.attn.c_q.weight"], got["blocks.0.attn.c_q.weight"])


def test_forward(backend, case):
    names = harness.hidden_names(case.config)
    got = backend.hidden_states(case.config, case.weights, case.inputs[0])
    assert len(got) == len(names), f"hidden_states returned {len(got)} arrays, want {len(names)}: {names}"
    error = harness.compare("hidden states", dict(zip(names, got)), dict(zip(names, case.hidden_states)),
                            harness.TOLERANCE["hidden"])
    assert error is None, error

    losses = backend.losses(case.config, case.weights, case.inputs[0], case.targets[0])
    assert losses.shape == case.losses.shape and losses.dtype == np.float32, (losses.shape, losses.dtype)
    worst = np.max(np.abs(losses - case.losses) / np.abs(case.losses))
    assert worst <= harness.TOLERANCE["losses"], f"per-token loss differs by up to {worst:.2e} relative"


def test_grads(backend, case):
    got = backend.grads(case.config, case.weights, case.inputs[0], case.targets[0])
    error = harness.compare("gradients", got, case.grads, harness.TOLERANCE["grads"])
    assert error is None, error


def test_step(backend, case):
    got = backend.step(case.config, case.weights, case.inputs, case.targets, harness.SCHEDULE)
    assert set(got) == set(case.weights), f"names differ: {sorted(set(got) ^ set(case.weights))}"
    errors = []
    for group, tolerance in (("AdamW", harness.TOLERANCE["step_adamw"]), ("Muon", harness.TOLERANCE["step_muon"])):
        names = [n for n in case.weights if harness.is_muon(n) == (group == "Muon")]
        want = {n: case.step[n] - case.weights[n] for n in names}
        errors.append(harness.compare(f"{group} update after {len(harness.SCHEDULE)} steps",
                                      {n: got[n] - case.weights[n] for n in names}, want, tolerance,
                                      harness.trimmed_relative_error))
    errors = [e for e in errors if e]
    assert not errors, "\n".join(errors)


def test_bpb(backend, case):
    from common.platform import get_profile
    got = backend.bpb(case.config, case.weights, get_profile(harness.PROFILE), harness.EVAL_BATCH_SIZE)
    assert abs(got - case.bpb) <= harness.TOLERANCE["bpb"] * case.bpb, f"val_bpb {got:.8f}, reference {case.bpb:.8f}"


def test_harness_names_the_layer_that_diverges(case):
    """A change to block 2's value projection must be reported at blocks.2, not earlier and not only at the end."""
    weights = dict(case.weights)
    weights["blocks.2.attn.c_v.weight"] = weights["blocks.2.attn.c_v.weight"] * 1.01
    names = harness.hidden_names(case.config)
    got = case.reference.hidden_states(case.config, weights, case.inputs[0])
    error = harness.compare("hidden states", dict(zip(names, got)), dict(zip(names, case.hidden_states)),
                            harness.TOLERANCE["hidden"])
    assert error is not None and error.startswith("hidden states: first divergence at blocks.2 "), error


def test_reference_gradients_are_all_nonzero(case):
    """The harness's weights exercise every parameter: no gradient is identically zero."""
    zero = [name for name, g in case.grads.items() if not np.any(g)]
    assert not zero, f"parameters with an all-zero gradient: {zero}"
