"""bench/jax_head_memory.py on the CPU: LOSS_CHUNKS shrinks the loss head's temporaries, as XLA compiles them."""

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_chunks_need_less_temporary_memory_than_the_plain_head():
    out = subprocess.run([sys.executable, "bench/jax_head_memory.py", "--batch", "16", "--seq", "256", "--dim", "64",
                          "--vocab", "4096", "--chunks", "8"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    plain, chunked = (float(v) for v in re.findall(r"([\d.]+) GiB of temporaries", out.stdout))
    # Whole float32 logits here are 16 x 256 x 4096 x 4 bytes = 64 MiB; the plain head keeps several.
    assert plain > 0.1 and chunked < plain / 3, out.stdout
