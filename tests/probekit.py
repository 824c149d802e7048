"""What the three backends' causality-probe tests share: a tiny model at the smoke profile, the canvas with its
causal mask removed (the edit a proposer would make), and the two checks (tests/*/test_*causality.py)."""

import importlib.util
import json

import numpy as np
import pytest

from common.errors import IntegrityError
from common.evaluate import evaluate_bpb
from common.platform import PROFILES

# The corpus tokenizer's vocabulary, T = the smoke profile's 64: layer 0 a sliding window of 32, layer 1 full.
CONFIG = dict(sequence_len=64, vocab_size=8192, n_layer=2, n_head=2, n_embd=64, window_pattern="SL")


def leaky_canvas(train_py, causal, leaky, tmp_path):
    """The canvas module with the text `causal` (found once) replaced by `leaky`."""
    text = train_py.read_text()
    assert text.count(causal) == 1
    path = tmp_path / f"leaky_{train_py.parent.name}_train.py"
    path.write_text(text.replace(causal, leaky))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def exercised(weights):
    """Initial weights with the zero-initialised matrices filled: at the true init every block outputs zero,
    and no model, causal or not, lets one position affect another."""
    rng = np.random.default_rng(0)
    return {name: rng.uniform(-0.2, 0.2, w.shape).astype(np.float32)
            if name.endswith(("c_proj.weight", "ve_gate.weight")) else w for name, w in weights.items()}


def check_probe(causal_loss_fn, leaky_loss_fn, record_file):
    """The canvas's loss_fn passes the probe and is scored; the leaky one is rejected before scoring."""
    bpb = evaluate_bpb(causal_loss_fn, 16, PROFILES["smoke"])
    got = json.loads(record_file.read_text())
    assert got["causal_check"]["ok"] is True and got["val_bpb"] == bpb and got["rejected"] is None
    with pytest.raises(IntegrityError, match="attention sees future tokens"):
        evaluate_bpb(leaky_loss_fn, 16, PROFILES["smoke"])
    got = json.loads(record_file.read_text())
    assert got["trick"] == "causality" and got["val_bpb"] is None
    assert got["causal_check"]["max_diff"] > 100 * got["causal_check"]["tolerance"]
