"""Platform profiles: what must not change between experiments on one kind of machine.

A profile fixes the training time budget, the sequence length, the number of validation tokens and the
peak bf16 FLOP/s used for MFU, plus the baseline model size that fits the machine. Pick one by name
(PROFILE= / AUTORESEARCH_PROFILE) or let detect() choose from the hardware. Every result records it.

A budget override for measurement derives a profile whose name records it: `h100@60s` is the h100 profile
with 60 s of training (BUDGET=60 / AUTORESEARCH_BUDGET=60 / --budget 60), so results at different budgets
never mix.
"""

import os
import platform as _platform
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, replace

from common.errors import ContractError

VOCAB_SIZE = 8192


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    time_budget: float        # seconds of training, excluding start-up, compilation and evaluation
    max_seq_len: int          # context length for training and evaluation
    eval_tokens: int          # validation tokens scored by evaluate_bpb
    peak_flops: float         # peak bf16 FLOP/s of the profile's reference device, for MFU
    depth: int                # baseline model size that fits this machine
    device_batch_size: int    # sequences per forward/backward
    total_batch_size: int     # tokens per optimizer step (gradient accumulation makes up the rest)
    vocab_size: int = VOCAB_SIZE
    # The first steps compile and are not counted in the budget: 11, as upstream's train.py (it times steps
    # 11 onwards). Fixed here, not in the canvas, so that an edit cannot buy untimed training.
    untimed_steps: int = 11

    def as_dict(self):
        return asdict(self)


PROFILES = {
    # Upstream autoresearch on one H100 SXM, unchanged.
    "h100": Profile("h100", "one NVIDIA H100 (upstream autoresearch)", 300, 2048, 40 * 524288, 989.5e12,
                    depth=8, device_batch_size=128, total_batch_size=2**19),
    # A 24 GB consumer card (RTX 3090/4090 class).
    "gpu": Profile("gpu", "a consumer NVIDIA GPU with about 24 GB", 300, 1024, 10 * 524288, 165.2e12,
                   depth=6, device_batch_size=32, total_batch_size=2**17),
    # An M-series laptop (sizes from upstream's MLX fork: depth 4, batch 16, 2^16 tokens per step).
    "apple": Profile("apple", "Apple silicon (M-series)", 300, 1024, 2 * 524288, 27e12,
                     depth=4, device_batch_size=16, total_batch_size=2**16),
    # Any CPU: small, so that five minutes still means a few hundred steps.
    "cpu": Profile("cpu", "a CPU with no accelerator", 300, 256, 2**18, 1e12,
                   depth=2, device_batch_size=16, total_batch_size=2**13),
    # Tests: a few seconds of training on a tiny model.
    "smoke": Profile("smoke", "tests: seconds of training, a tiny model", 3, 64, 2**13, 1e12,
                     depth=2, device_batch_size=8, total_batch_size=2**10, untimed_steps=2),
}

# Peak dense bf16 FLOP/s by device name fragment, so MFU uses the card actually present.
DEVICE_PEAK_FLOPS = [
    ("H200", 989.5e12),
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989.5e12),
    ("GH200", 989.5e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10G", 70e12),
    ("RTX 5090", 209.5e12),
    ("RTX 4090", 165.2e12),
    ("RTX 3090", 71e12),
]


def get_profile(name=None, budget=None):
    """The named profile, else $AUTORESEARCH_PROFILE, else the one detected from the hardware; with a budget
    (seconds, else $AUTORESEARCH_BUDGET, else one named as 'h100@60s'), that profile with its training budget
    replaced and the budget in its name."""
    name = name or os.environ.get("AUTORESEARCH_PROFILE") or detect()
    base, _, named_budget = name.partition("@")
    if base not in PROFILES:
        raise ContractError(
            f"Unknown profile '{name}'. The profiles are: {', '.join(PROFILES)}. "
            "Name one with PROFILE=<name> (make) or AUTORESEARCH_PROFILE=<name>, or leave both unset "
            "to pick one from the hardware.")
    budget = budget or os.environ.get("AUTORESEARCH_BUDGET") or named_budget or None
    if budget is None:
        return PROFILES[base]
    seconds = parse_budget(budget)
    if seconds == PROFILES[base].time_budget:
        return PROFILES[base]
    return replace(PROFILES[base], name=f"{base}@{seconds:g}s", time_budget=seconds)


def parse_budget(budget):
    """Seconds of training from 60, '60', '60s' or '1.5m'; a ContractError naming the form otherwise."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([sm]?)\s*", str(budget))
    seconds = float(m.group(1)) * (60 if m.group(2) == "m" else 1) if m else 0.0
    if seconds <= 0:
        raise ContractError(
            f"The training budget '{budget}' is not a positive number of seconds. Give one as BUDGET=60 (make), "
            "--budget 60 or AUTORESEARCH_BUDGET=60 (a number of seconds, or minutes as 1.5m).")
    return seconds


def nvidia_gpu_name():
    """The first NVIDIA GPU's name from nvidia-smi, or None. No framework import needed."""
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    names = [line.strip() for line in out.stdout.splitlines() if line.strip()]
    return names[0] if out.returncode == 0 and names else None


def is_apple_silicon():
    return _platform.system() == "Darwin" and _platform.machine() == "arm64"


def detect():
    """Profile name for this machine: h100 for H100/H200-class cards, gpu for other NVIDIA cards,
    apple on Apple silicon, cpu otherwise."""
    gpu = nvidia_gpu_name()
    if gpu:
        return "h100" if any(k in gpu for k in ("H100", "H200", "GH200", "B200")) else "gpu"
    if is_apple_silicon():
        return "apple"
    return "cpu"


def peak_flops(device_name, profile):
    """Peak bf16 FLOP/s of the device actually present; the profile's figure when it is not known."""
    for fragment, flops in DEVICE_PEAK_FLOPS:
        if device_name and fragment in device_name:
            return flops
    return profile.peak_flops


def auto_backend():
    """BACKEND=auto: cuda on an NVIDIA GPU, mlx on Apple silicon, else the PyTorch trainer on the CPU."""
    if nvidia_gpu_name():
        return "cuda"
    if is_apple_silicon():
        return "mlx"
    return "cuda"
