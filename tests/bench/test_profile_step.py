"""bench/profile_step.py on the CPU: it builds the canvas's model, times and profiles its steps, writes the numbers."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_a_smoke_profile_of_the_canvas_writes_its_numbers(tmp_path):
    out_json = tmp_path / "profile.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               CUDA_VISIBLE_DEVICES="")  # the CPU path, even on a GPU machine
    out = subprocess.run([sys.executable, "bench/profile_step.py", "--profile", "smoke", "--warmup", "1",
                          "--steps", "1", "--no-compile", "--json", str(out_json)],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    record = json.loads(out_json.read_text())
    assert record["profile"] == "smoke" and record["device"] == "cpu"
    assert record["step_ms"] > 0 and record["tokens_per_sec"] > 0 and record["mfu_percent"] > 0
    assert record["queue_ms"] > 0
    times = [c["ms"] for c in record["categories"].values()]
    assert max(times) > 0 and record["busy_ms"] > 0
    assert sum(times) == pytest.approx(record["busy_ms"], rel=1e-6)
    assert record["top"] and all(k["ms"] > 0 for k in record["top"])
    assert "by category" in out.stdout
