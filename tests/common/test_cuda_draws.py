"""common/cuda_draws.py: the Philox core against Random123's known answers, and the generator's offsets and
draws. That its draws are torch's on a GPU is `python bench/torch_cuda_draws.py check`, on one (fidelity.md
section 23); tests/parity checks that every canvas draws them in the reference's order."""

import numpy as np
import pytest

from common.cuda_draws import CudaGenerator, philox4x32_10


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
    assert not np.array_equal(CudaGenerator(43).raw(8192 * 512), first)


def test_the_draws_do_not_depend_on_how_many_cores_share_out_the_threads(monkeypatch):
    """The GPU's threads are split between the host's cores (up to 16): one core or sixteen give the same
    words and values."""
    import os
    results = []
    for cores in (1, 16):
        monkeypatch.setattr(os, "cpu_count", lambda cores=cores: cores)
        gen = CudaGenerator(7)
        results.append((gen.raw(300_000), gen.normal((300, 1000)), gen.uniform((513, 77), -0.5, 0.5)))
    for one_core, many_cores in zip(*results):
        np.testing.assert_array_equal(one_core, many_cores)


def test_the_draws_have_their_distributions():
    gen = CudaGenerator(42)
    u = gen.uniform((512, 512), -0.5, 0.5)
    assert u.dtype == np.float32 and u.min() >= -0.5 and u.max() < 0.5
    assert abs(float(u.mean())) < 0.005 and float(u.std()) == pytest.approx(12**-0.5, rel=0.01)
    z = gen.normal((1000, 1000), std=0.001)
    assert z.dtype == np.float32 and z.shape == (1000, 1000)
    assert abs(float(z.mean())) < 1e-5 and float(z.std()) == pytest.approx(0.001, rel=0.01)


def test_the_first_draws_are_what_torch_drew_on_an_h200():
    """The cuda canvas's first three init_weights calls for seed 42 at the h100 profile's shapes (wte, lm_head,
    blocks.0.attn.c_q), against the values torch 2.11 drew on an NVIDIA H200 (2026-12-01, fidelity.md section
    23, printed to 9 digits, which name a float32 exactly): the uniform draws bit for bit, the normal ones
    within the GPU's fast sin and cos."""
    gen = CudaGenerator(42)
    wte, lm_head = gen.normal((8192, 512), 1.0), gen.normal((8192, 512), 0.001)
    c_q = gen.uniform((512, 512), -(3**0.5) * 512**-0.5, 3**0.5 * 512**-0.5)
    assert wte.reshape(-1)[:3] == pytest.approx([0.194018796, 2.16137362, -0.172050223], abs=3e-6)
    assert lm_head.reshape(-1)[:3] == pytest.approx([-0.00126822153, -3.82963481e-05, -0.000102942395], abs=3e-9)
    assert c_q.reshape(-1)[:3].tolist() == np.float32([0.00734986225, 0.0273247566, -0.0163710937]).tolist()
