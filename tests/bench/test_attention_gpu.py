"""bench/attention_gpu.py --jax on the CPU (XLA's attention, a tiny call): it times both of the jax canvas's
attention calls, forward and backward. (The torch paths need a GPU.)"""

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_jax_times_the_full_and_the_windowed_call():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "bench/attention_gpu.py", "--jax", "--implementation", "xla", "--batch", "1",
                          "--heads", "2", "--seq", "128", "--head-dim", "32", "--reps", "2"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = re.findall(r"^(full causal|half window)\s+fwd\s+([\d.]+) ms \| bwd\s+(-?[\d.]+) ms \| fwd\+bwd\s+([\d.]+) ms",
                      out.stdout, re.M)
    assert [r[0] for r in rows] == ["full causal", "half window"], out.stdout
    assert all(float(r[1]) > 0 and float(r[3]) > 0 for r in rows), rows
