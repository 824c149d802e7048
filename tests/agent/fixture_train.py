"""A stand-in canvas for the agent's tests: module-level constants, progress lines, a summary block, and the
score record an honest trainer's evaluate_bpb would write (common/record.py), so the agent trusts it.

val_bpb is a smooth function of the constants with its minimum away from the starting values, so the
offline search has something to find. FIXTURE_SECONDS makes a run take time; FIXTURE_NOISE adds noise.
"""

import math
import os
import random
import time

from common import record
from common.platform import get_profile
from common.summary import print_summary

LR = 0.02
WARMDOWN_RATIO = 0.2
BETA2 = 0.9
WEIGHT_DECAY = 0.1
DEPTH = 3
BATCH = 2**4


def main():
    profile = get_profile(os.environ.get("AUTORESEARCH_PROFILE", "smoke"))
    seconds = float(os.environ.get("FIXTURE_SECONDS", "0"))
    steps, tokens = 5, 100_000
    t0 = time.time()
    for i in range(steps):
        time.sleep(seconds / steps)
        print(f"step {i:05d} ({100 * (i + 1) / steps:.1f}%) | loss: 1.0", flush=True)
    if DEPTH > 8:
        raise ValueError(f"DEPTH {DEPTH} does not fit in memory")
    bpb = (1.0 + 0.05 * math.log2(LR / 0.08) ** 2 + 0.2 * (WARMDOWN_RATIO - 0.6) ** 2 + 0.1 * (BETA2 - 0.95) ** 2
           + 0.01 * math.log2(WEIGHT_DECAY / 0.2) ** 2 + 0.01 * (DEPTH - 5) ** 2 + 0.001 * math.log2(BATCH / 32) ** 2)
    bpb += random.gauss(0, float(os.environ.get("FIXTURE_NOISE", "0")))
    elapsed = time.time() - t0
    rows = profile.eval_tokens // profile.max_seq_len
    record.write(profile=profile.name, eval_tokens=profile.eval_tokens, max_seq_len=profile.max_seq_len,
                 val_bpb=bpb, tokens_scored=rows * profile.max_seq_len, bytes_scored=4 * profile.eval_tokens,
                 eval_rows=rows, eval_fingerprint="fixture")
    timed_tokens = tokens * (steps - profile.untimed_steps) / steps
    print_summary(val_bpb=bpb, training_seconds=elapsed, total_seconds=elapsed, peak_vram_mb=512.0 * DEPTH,
                  mfu_percent=1.0, total_tokens_M=tokens / 1e6, num_steps=steps, num_params_M=float(DEPTH),
                  depth=DEPTH, backend="fixture", profile=profile.name, tokens_per_sec=timed_tokens / elapsed)


if __name__ == "__main__":
    main()
