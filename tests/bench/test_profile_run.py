"""bench/profile_run.py on the CPU: it profiles a real run of a canvas from the outside and lets the run finish."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_a_smoke_run_of_the_canvas_is_profiled_and_still_finishes(prepared_env, tmp_path):
    out_json = tmp_path / "run.json"
    env = dict(prepared_env, CUDA_VISIBLE_DEVICES="", AUTORESEARCH_BUDGET="6")
    out = subprocess.run([sys.executable, "bench/profile_run.py", "--skip", "11", "--steps", "2", "--top", "5",
                          "--json", str(out_json), "backends/cuda/train.py"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "val_bpb:" in out.stdout  # the run went on to its evaluation and summary after the profile
    assert re.search(r"\[profile_run\] \d+ optimizer steps; steps 11-\d+ took [\d.]+ s of wall clock", out.stdout)
    record = json.loads(out_json.read_text())
    assert record["device"] == "cpu" and record["steps"] == 2
    assert record["wall_ms"] > 0 and record["busy_ms"] > 0
    assert sum(record["categories"].values()) == pytest.approx(record["busy_ms"], rel=1e-6)
    assert record["categories"]["matmul"] > 0
    assert len(record["top"]) == 5 and all(k["ms"] > 0 for k in record["top"])


def test_a_run_too_short_to_profile_says_so(tmp_path):
    script = tmp_path / "tiny.py"
    script.write_text("import torch\np = torch.nn.Parameter(torch.ones(2))\nopt = torch.optim.SGD([p], lr=0.1)\n"
                      "for _ in range(3):\n    p.sum().backward(); opt.step(); opt.zero_grad()\nprint('done')\n")
    out = subprocess.run([sys.executable, str(REPO / "bench" / "profile_run.py"), "--skip", "11", str(script)],
                         env=dict(os.environ, CUDA_VISIBLE_DEVICES=""), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "done" in out.stdout
    assert "took 3 optimizer steps, fewer than --skip + 1 + --steps (17): nothing profiled" in out.stdout
