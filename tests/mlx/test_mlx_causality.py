"""common.evaluate's causality probe on the MLX model: the canvas's own loss_fn passes, and the canvas with its
causal mask removed is rejected before it is scored."""

from pathlib import Path

import numpy as np
import pytest
from probekit import CONFIG, check_probe, exercised, leaky_canvas

mx = pytest.importorskip("mlx.core", reason="mlx is not installed (make setup BACKEND=mlx)")

TRAIN_PY = Path(__file__).resolve().parents[2] / "backends" / "mlx" / "train.py"
CAUSAL = 'mask = "causal" if window >= T'


def canvas_loss_fn(train, weights):
    """main()'s loss_fn on MLX's CPU build (float32)."""
    model = train.build_model(train.GPTConfig(**CONFIG), compute_dtype=mx.float32)
    train.import_weights(model, weights)
    forward = mx.compile(lambda x, y: model(x, y), inputs=model.state)
    return lambda inputs, targets: np.array(forward(mx.array(inputs), mx.array(targets)).astype(mx.float32))


def test_the_probe_passes_the_canvas_and_rejects_it_without_its_causal_mask(train, record_file, tmp_path):
    leaky = leaky_canvas(TRAIN_PY, CAUSAL, CAUSAL.replace('"causal"', "None"), tmp_path)
    weights = exercised(train.export_weights(train.build_model(train.GPTConfig(**CONFIG), compute_dtype=mx.float32)))
    check_probe(canvas_loss_fn(train, weights), canvas_loss_fn(leaky, weights), record_file)
