"""common.evaluate's causality probe on the jax model: the canvas's own loss_fn passes, and the canvas with its
causal mask removed is rejected before it is scored."""

from pathlib import Path

import numpy as np
import pytest
from probekit import CONFIG, check_probe, exercised, leaky_canvas

pytest.importorskip("flax.nnx", reason="jax/flax are not installed (make setup BACKEND=jax)")

TRAIN_PY = Path(__file__).resolve().parents[2] / "backends" / "jax" / "train.py"
CAUSAL = "jax.nn.dot_product_attention(q, k, v, is_causal=True,"


def canvas_loss_fn(train, weights):
    """main()'s loss_fn on the CPU (float32, XLA attention)."""
    model = train.build_model(train.GPTConfig(**CONFIG), gpu=False)
    train.import_weights(model, weights)
    modeldef, params = train.split_model(model)
    losses = train.make_loss_fn(modeldef)
    return lambda inputs, targets: np.asarray(losses(params, inputs, targets))


def test_the_probe_passes_the_canvas_and_rejects_it_without_its_causal_mask(train, record_file, tmp_path):
    leaky = leaky_canvas(TRAIN_PY, CAUSAL, CAUSAL.replace("is_causal=True", "is_causal=False"), tmp_path)
    weights = exercised(train.export_weights(train.build_model(train.GPTConfig(**CONFIG), gpu=False)))
    check_probe(canvas_loss_fn(train, weights), canvas_loss_fn(leaky, weights), record_file)
