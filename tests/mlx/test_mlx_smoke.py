"""The MLX trainer end to end under the smoke profile, through common.run (what `make run BACKEND=mlx` calls)."""

import math
import subprocess
import sys
from pathlib import Path

import pytest

from common.summary import parse_summary

REPO = Path(__file__).resolve().parents[2]
TRAIN_PY = REPO / "backends" / "mlx" / "train.py"

pytest.importorskip("mlx.core", reason="mlx is not installed (make setup BACKEND=mlx)")


def run_trainer(env, *args, timeout=300):
    command = [sys.executable, "-m", "common.run", "--backend", "mlx", "--profile", "smoke", *args]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_smoke_run_prints_a_parseable_summary(prepared_env):
    out = run_trainer(prepared_env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = parse_summary(out.stdout)
    assert summary["backend"] == "mlx" and summary["profile"] == "smoke" and summary["depth"] == 2
    assert math.isfinite(summary["val_bpb"]) and 0 < summary["val_bpb"] < 10
    assert summary["num_steps"] >= 3 and summary["peak_vram_mb"] > 0 and summary["tokens_per_sec"] > 0


@pytest.mark.slow
def test_nan_learning_rate_fails_fast(prepared_env, tmp_path):
    """The agent's kind of edit (a constant in the canvas) that makes the loss NaN: a FAIL line, exit status 1."""
    source = TRAIN_PY.read_text()
    assert "\nEMBEDDING_LR = 0.6 " in source
    broken = tmp_path / "train.py"
    broken.write_text(source.replace("\nEMBEDDING_LR = 0.6 ", "\nEMBEDDING_LR = float('nan') "))
    out = run_trainer(prepared_env, "--canvas", str(broken))
    assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-3000:]
    assert "FAIL: training loss is nan at step 1" in out.stdout
    assert "val_bpb:" not in out.stdout
