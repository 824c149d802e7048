"""bench/torch_cuda_draws.py on the CPU: the Philox core against Random123's known answers, and the weights it
draws against the cuda canvas's own names, shapes and non-random values. Whether its draws are torch's on a
GPU is `python bench/torch_cuda_draws.py check`, on one."""

import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

import anchor  # noqa: E402
from torch_cuda_draws import CudaGenerator, canvas_initial_weights, philox4x32_10  # noqa: E402


@pytest.mark.parametrize("ctr, key, want", [
    # Random123's tests/kat_vectors, the three philox4x32 10 lines
    ((0, 0, 0, 0), (0, 0), (0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8)),
    ((0xffffffff,) * 4, (0xffffffff, 0xffffffff), (0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd)),
    ((0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344), (0xa4093822, 0x299f31d0),
     (0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1)),
])
def test_philox_gives_random123s_known_answers(ctr, key, want):
    got = philox4x32_10(*(np.uint64(c) for c in ctr), key)
    assert tuple(int(w) for w in got) == want


def test_each_call_moves_the_offset_as_torch_counts_its_passes():
    """An H100's launch: 1056 blocks of 256 threads at most, four words per thread and pass; the offset moves
    by four per pass, so a later call's draws never reuse an earlier one's counters."""
    gen = CudaGenerator(42)
    first = gen.raw(8192 * 512)  # 4 passes of 270,336 threads
    assert first.shape == (4, 4, 270336) and gen.offset == 16
    second = gen.raw(1000)       # 4 blocks, one pass
    assert second.shape == (1, 4, 1024) and gen.offset == 20
    again = CudaGenerator(42)
    assert np.array_equal(again.raw(8192 * 512), first)
    u = gen.uniform((512, 512), -0.5, 0.5)
    assert u.min() >= -0.5 and u.max() < 0.5 and abs(float(u.mean())) < 0.01


def test_the_drawn_weights_have_the_canvas_names_shapes_and_fixed_values():
    from common.platform import get_profile
    cuda = anchor.load_canvas(REPO / "backends" / "cuda" / "train.py")
    profile = get_profile("smoke")
    config = cuda.model_config(profile.depth, profile.max_seq_len, 512)
    canvas = cuda.export_weights(cuda.build_model(config, "cpu", seed=42))
    drawn = canvas_initial_weights(config, 42)
    assert set(drawn) == set(canvas)
    for name, want in canvas.items():
        assert drawn[name].shape == want.shape and drawn[name].dtype == np.float32, name
        if not want.std():  # the zeros and the scalars are no draws: equal exactly
            assert np.array_equal(drawn[name], want), name
    assert abs(float(drawn["wte.weight"].std()) - 1.0) < 0.02
    assert abs(float(drawn["lm_head.weight"].std()) - 0.001) < 0.00002
    s = 3**0.5 * config.n_embd**-0.5
    assert 0.95 * s < np.abs(drawn["blocks.0.attn.c_q.weight"]).max() <= s


def test_fused_and_unfused_rounding_differ_only_in_the_last_bit():
    """`check` reports which rounding of a * b + c nvcc compiled (one fused multiply-add or two roundings): the
    two draw the same numbers to float32's last bit, and not all of them identically."""
    fused = CudaGenerator(42).uniform((512, 512), -0.0765, 0.0765)
    unfused = CudaGenerator(42, fused=False).uniform((512, 512), -0.0765, 0.0765)
    assert np.allclose(fused, unfused, rtol=0, atol=np.spacing(np.float32(0.0765)))
    assert 0 < np.mean(fused != unfused) < 1
