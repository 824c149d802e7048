"""bench/rounding_points.py and the variants it motivates, on the CPU."""

import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

import ablations  # noqa: E402
import anchor  # noqa: E402
import rounding_points  # noqa: E402


def test_the_probe_tells_the_two_roundings_apart():
    """Every expression lands on one of the two references, and on the CPU compiled torch multiplies by the
    float32 value where eager torch rounds it first: the fact behind the bf16-rotary-tables variant (the cuda
    canvas's .to(q.dtype) on its float32 tables does not round them once compiled)."""
    rows = rounding_points.torch_rows() + rounding_points.jax_rows()
    assert {row[-1] for row in rows} <= {"bf16", "float32"}, rows
    verdicts = {(row[2], row[3]): row[-1] for row in rows if row[0].startswith("torch")}
    assert verdicts[("eager", "scalar * x (upstream, cuda canvas)")] == "bf16"
    assert verdicts[("compiled", "scalar * x (upstream, cuda canvas)")] == "float32"
    assert verdicts[("compiled", "x * table.to(x.dtype) (cuda canvas's rotary)")] == "float32"


def test_the_float32_lambdas_variant_mixes_at_float32(tmp_path):
    """jax-float32-lambdas computes the per-layer mix with the float32 scalars and rounds once to the stream's
    bf16; the canvas multiplies by the scalars rounded to bf16 (1.005 -> 1.0078). At init every block's output
    projections are zero, so the first block's output is the mix of x0 with itself, in the bf16 model on the CPU."""
    import jax
    import jax.numpy as jnp

    path = tmp_path / "train_jax_float32_lambdas.py"
    path.write_text(ablations.apply(ablations.VARIANTS["jax-float32-lambdas"],
                                    (REPO / "backends" / "jax" / "train.py").read_text()))
    outputs = {}
    for name, module in (("canvas", anchor.load_canvas(REPO / "backends" / "jax" / "train.py", "jax")),
                         ("variant", anchor.load_canvas(path, "jax"))):
        config = module.tiny_config()
        model = module.GPT(config, jnp.bfloat16, "xla")
        model.init_weights(jax.random.key(0))
        idx = jnp.asarray(np.random.default_rng(0).integers(0, config.vocab_size, (2, config.sequence_len)), jnp.int32)
        x0, first = model.hidden_states(idx)[:2]
        assert first.dtype == jnp.bfloat16
        outputs[name] = np.asarray(first, np.float32)
    lam, lam0 = np.asarray(model.resid_lambdas[...])[0], np.asarray(model.x0_lambdas[...])[0]  # the same in both
    exact = (lam * np.asarray(x0, np.float32) + lam0 * np.asarray(x0, np.float32)).astype(jnp.bfloat16)
    np.testing.assert_array_equal(outputs["variant"], np.asarray(exact, np.float32))
    assert not np.array_equal(outputs["canvas"], outputs["variant"])
