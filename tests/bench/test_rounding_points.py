"""bench/rounding_points.py on the CPU."""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

import rounding_points  # noqa: E402


def test_the_probe_tells_the_two_roundings_apart():
    """Every expression lands on one of the two references, and on the CPU compiled torch multiplies by the
    float32 value where eager torch rounds it first: why the cuda canvas stores its rotary tables in bf16
    (store_in_bf16) and jax and mlx mix with the float32 scalars (the tests of each backend check those)."""
    rows = rounding_points.torch_rows() + rounding_points.jax_rows()
    assert {row[-1] for row in rows} <= {"bf16", "float32"}, rows
    verdicts = {(row[2], row[3]): row[-1] for row in rows if row[0].startswith("torch")}
    assert verdicts[("eager", "scalar * x (upstream, cuda canvas)")] == "bf16"
    assert verdicts[("compiled", "scalar * x (upstream, cuda canvas)")] == "float32"
    assert verdicts[("compiled", "x * table.to(x.dtype) (cuda's rotary until 2026-11-30)")] == "float32"
    assert verdicts[("compiled, training", "scalar * x (upstream, cuda canvas)")] == "float32"

