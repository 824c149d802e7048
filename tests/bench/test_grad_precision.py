"""bench/grad_precision.py on the CPU: bf16 gradients set against float64's, per parameter group."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, CUDA_VISIBLE_DEVICES="",
           PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
TINY = ["--depth", "4", "--dim", "128", "--seq-len", "64", "--batch", "2"]


def run(*args):
    return subprocess.run([sys.executable, "bench/grad_precision.py", *args], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=300)


def test_bf16_gradients_land_a_bf16_rounding_away_from_float64(tmp_path):
    out = run(*TINY, "--modes", "eager", "--json", str(tmp_path / "g.json"))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    record = json.loads((tmp_path / "g.json").read_text())
    errors = record["modes"]["eager"]["errors"]
    assert set(errors) == {"wte.weight", "value_embeds.", "lm_head.weight", "resid_lambdas", "x0_lambdas",
                           "blocks.0.", "blocks.2.", "blocks.3."}
    # bf16 keeps 8 significant bits (relative rounding 2**-9 = 2e-3): the matrices' gradients land within a few
    # roundings of float64's, neither exactly on it (no bf16 at all) nor far off (a wrong reference)
    for group in ("wte.weight", "lm_head.weight", "blocks.0.", "blocks.3."):
        assert 1e-3 < errors[group] < 5e-2, (group, errors[group])
    assert abs(record["modes"]["eager"]["loss"] - record["float64_loss"]) < 1e-2
    assert "relative gradient error" in out.stdout


def test_an_unknown_mode_is_named_with_the_choices():
    out = run(*TINY, "--modes", "eager,fused")
    assert out.returncode != 0
    assert "unknown mode(s) ['fused']" in out.stderr and "eager, regional, whole" in out.stderr


def test_a_variant_is_measured_against_the_unmodified_canvas_in_float64(tmp_path):
    """float32-between-blocks casts to float32 on purpose: its reference is the plain canvas's float64 model."""
    out = run(*TINY, "--modes", "eager", "--variant", "float32-between-blocks", "--json", str(tmp_path / "g.json"))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    errors = json.loads((tmp_path / "g.json").read_text())["modes"]["eager"]["errors"]
    assert 1e-3 < errors["blocks.0."] < 5e-2


def test_the_jax_mode_takes_the_same_weights_and_lands_a_bf16_rounding_away(tmp_path):
    """The jax canvas's bf16 gradients over the cuda model's weights (exchanged by name): a bf16 rounding from
    float64's, as the cuda modes', which a wrong weight exchange or a float32 model would not give."""
    out = run(*TINY, "--modes", "jax", "--json", str(tmp_path / "g.json"))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    record = json.loads((tmp_path / "g.json").read_text())
    errors = record["modes"]["jax"]["errors"]
    for group in ("wte.weight", "lm_head.weight", "blocks.0.", "blocks.3."):
        assert 1e-3 < errors[group] < 5e-2, (group, errors[group])
    assert abs(record["modes"]["jax"]["loss"] - record["float64_loss"]) < 1e-2
