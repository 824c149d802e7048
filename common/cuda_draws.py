"""torch's CUDA random draws, reproduced on the host with numpy, so that every backend starts from the cuda
backend's initial weights for a seed: upstream's, as torch draws them on an H100 or an H200.

Without it each backend drew its own weights, and jax from its own seed-42 draws trained about 0.001 bpb worse
at 200 steps than from cuda's (docs/notes/fidelity.md section 22): a seed lottery, not a difference in what
the backends compute. Checked on an H200 (fidelity section 23, `python bench/torch_cuda_draws.py check`):
uniform draws bit-identical, normal draws within 3.1e-6 x their sd, the error of the GPU's fast sin and cos.

How torch 2.11 draws (ATen/native/cuda/DistributionTemplates.h, cuRAND's curand_kernel.h):
- torch.manual_seed(seed) gives the CUDA generator that seed and Philox offset 0. Each normal_ / uniform_ call
  launches blocks of 256 threads, grid = min(ceil(numel / 256), multiprocessors * (threads per multiprocessor //
  256)) of them, and advances the offset by 4 per pass over the tensor. The layout depends on the GPU: 132
  multiprocessors of 2048 threads on an H100 and an H200, the layout assumed here.
- Thread t runs Philox4x32-10 with key = seed and counter (offset // 4 + k, t) at its k-th pass and writes its
  four outputs to elements t + stride * (4k + i), i = 0..3, stride = 256 * grid.
- uniform: u = x * 2^-32 + 2^-33 in (0, 1]; the value is fma(u, high - low, low), and high maps to low.
  normal: Box-Muller on each pair of outputs, sqrt(-2 log u1) times (sin, cos)(2 pi u2), then fma(z, std, mean).
"""

import operator
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

H100_LAYOUT = (132, 2048)  # multiprocessors, threads per multiprocessor (an H200 has the same)
M0, M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)  # Philox4x32 multipliers
W0, W1 = 0x9E3779B9, 0xBB67AE85                          # and key increments
LOW = np.uint64(0xFFFFFFFF)


def philox4x32_10(c0, c1, c2, c3, key):
    """Philox4x32-10 (Salmon et al. 2011, as cuRAND computes it) over arrays of 32-bit counter words held in
    uint64; key (k0, k1) are Python ints. Returns the four output words as uint64 arrays."""
    k0, k1 = key
    for _ in range(10):
        p0, p1 = M0 * c0, M1 * c2
        c0, c1, c2, c3 = ((p1 >> 32) ^ c1 ^ np.uint64(k0)), p1 & LOW, ((p0 >> 32) ^ c3 ^ np.uint64(k1)), p0 & LOW
        k0, k1 = (k0 + W0) & 0xFFFFFFFF, (k1 + W1) & 0xFFFFFFFF
    return c0, c1, c2, c3


class CudaGenerator:
    """torch's default CUDA generator after torch.manual_seed(seed), on a GPU of the given layout. Call normal()
    and uniform() in the order the cuda canvas calls nn.init.normal_ and nn.init.uniform_: each call moves the
    generator on, as torch's does."""

    def __init__(self, seed, layout=H100_LAYOUT):
        self.seed, self.offset = operator.index(seed), 0  # an int: a jax key or a float is a mistake
        self.multiprocessors, self.threads_per_multiprocessor = layout

    def raw(self, numel, transform=None, dtype=np.uint32):
        """The 32-bit words one call of numel elements draws, shaped (passes, 4, stride): word [k, i, t] is for
        element stride * (4k + i) + t (those past numel are drawn and dropped); through `transform` (elementwise
        within each thread's four words) if given. Advances the offset as torch does."""
        grid = min(-(-numel // 256), self.multiprocessors * (self.threads_per_multiprocessor // 256))
        stride = 256 * grid
        passes = (numel - 1) // (stride * 4) + 1
        k = np.arange(passes, dtype=np.uint64)[:, None] + np.uint64(self.offset // 4)
        key = (self.seed & 0xFFFFFFFF, self.seed >> 32)
        out = np.empty((passes, 4, stride), dtype)

        def fill(first, last):  # GPU threads first..last-1; numpy lets go of the GIL, so the host's cores share them
            t = np.arange(first, last, dtype=np.uint64)[None, :]
            words = np.stack(np.broadcast_arrays(*philox4x32_10(k & LOW, k >> 32, t & LOW, t >> 32, key)), axis=1)
            out[:, :, first:last] = transform(words.astype(np.uint32)) if transform else words

        bounds = np.linspace(0, stride, min(os.cpu_count() or 1, 16) + 1).astype(int)
        with ThreadPoolExecutor() as pool:
            list(pool.map(fill, bounds[:-1], bounds[1:]))
        self.offset += passes * 4
        return out

    def uniform(self, shape, low, high):
        """float32 values in [low, high), as nn.init.uniform_(tensor, low, high)."""
        low32, high32 = np.float32(low), np.float32(high)

        def transform(words):
            value = fused_multiply_add(unit(words), high32 - low32, low32)
            return np.where(value == high32, low32, value)

        return self.values(shape, transform)

    def normal(self, shape, std=1.0, mean=0.0):
        """float32 values, as nn.init.normal_(tensor, mean, std)."""
        step = np.float32(2.0**-32) * np.float32(6.2831855)  # cuRAND's 2^-32 x 2 pi, in float32

        def transform(words):  # Box-Muller on each thread's words (0, 1) and (2, 3)
            out = np.empty(words.shape, np.float32)
            for i in (0, 2):
                radius = np.sqrt(np.float32(-2.0) * np.log(unit(words[:, i])))
                angle = fused_multiply_add(words[:, i + 1].astype(np.float32), step, step / 2)
                out[:, i], out[:, i + 1] = np.sin(angle) * radius, np.cos(angle) * radius
            return fused_multiply_add(out, np.float32(std), np.float32(mean))

        return self.values(shape, transform)

    def values(self, shape, transform):
        """float32 values of `shape` from one call's words through transform, in torch's element order."""
        numel = int(np.prod(shape))
        return self.raw(numel, transform, np.float32).reshape(-1)[:numel].reshape(shape)


def unit(words):
    """cuRAND's uniform float in (0, 1]: x * 2^-32 + 2^-33, exact in float64, rounded once to float32."""
    return (words.astype(np.float32).astype(np.float64) * 2.0**-32 + 2.0**-33).astype(np.float32)


def fused_multiply_add(a, b, c):
    """a * b + c of float32 values, as the GPU's fma: the product exact in float64, the sum rounded to float64 and
    then to float32 (twice, which could differ from fma's single rounding in rare near-ties; on an H200 all of
    the h100 model's 31 M uniform draws, for seeds 42 and 43, came out bit-identical)."""
    a, b, c = (np.asarray(x, np.float32).astype(np.float64) for x in (a, b, c))
    return (a * b + c).astype(np.float32)
