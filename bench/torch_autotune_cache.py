"""torch 2.13's autotune-cache fix, applied to torch 2.11 from the harness (`--variant torch-2.13-autotune-cache`),
so that a GPU machine with 2.11 can measure the warm start-up that the pinned 2.13 gives.

On 2.11, a kernel that inductor loads from its cache on a warm start (a "static autotuner") keeps its cached
best block sizes only when it has more than one candidate config, and even then loses the mark that coordinate
descent found them; so every warm process tunes those kernels by coordinate descent again
(pytorch/pytorch#172819: 30-50 s of the cuda canvas's warm start with TUNE_KERNELS). 2.13's
`CachingAutotuner.recheck_autotune_cache` keeps the cached config for any number of candidates and carries the
mark over. patch() wraps 2.11's method to do the same after it has run. It also counts the kernels that coordinate
descent tunes in the process and the seconds it takes, and prints them when the process ends. It patches
nothing on other versions. Never imported by the canvases themselves: only a variant's copy calls it.
"""

import atexit
import time

TUNED = {"kernels": 0, "seconds": 0.0}


def patch():
    """Wrap 2.11's recheck_autotune_cache (see the module docstring) and count coordinate descent; True if done."""
    import torch
    if not torch.__version__.startswith("2.11."):
        print(f"torch_autotune_cache: torch {torch.__version__} is not 2.11, nothing patched", flush=True)
        return False
    from torch._inductor.runtime import triton_heuristics as th

    recheck, tune = th.CachingAutotuner.recheck_autotune_cache, th.CachingAutotuner.coordinate_descent_tuning

    def recheck_keeping_coordesc(self, reload_kernel_from_src):
        configs = [result.config for result in self.compile_results]
        recheck(self, reload_kernel_from_src)
        cached, _, _ = th.check_autotune_cache(configs, self.filename, self.inductor_meta)
        if len(cached) != 1 or not getattr(cached[0], "found_by_coordesc", False):
            return
        best = th.triton_config_to_hashable(cached[0])
        kept = [r for r in self.compile_results if th.triton_config_to_hashable(r.config) == best]
        if not kept:  # the one candidate was where coordinate descent started, not what it found
            if self.fn.fn is None:
                self.fn = reload_kernel_from_src().fn
            kept = [self._precompile_config(cached[0])]
        kept[0].config.found_by_coordesc = True
        self.compile_results = kept[:1]

    untuned = {th.HeuristicType.TEMPLATE, th.HeuristicType.USER_AUTOTUNE, th.HeuristicType.FIXED}

    def counted_tuning(self, *args, **kwargs):
        t0 = time.time()
        try:
            return tune(self, *args, **kwargs)
        finally:  # templates (FlexAttention's) come here at every launch and return at once: not counted
            TUNED["kernels"] += self.heuristic_type not in untuned
            TUNED["seconds"] += time.time() - t0

    th.CachingAutotuner.recheck_autotune_cache = recheck_keeping_coordesc
    th.CachingAutotuner.coordinate_descent_tuning = counted_tuning
    atexit.register(lambda: print(f"torch_autotune_cache: coordinate descent tuned {TUNED['kernels']} kernels in "
                                  f"this process, {TUNED['seconds']:.1f} s", flush=True))
    print("torch_autotune_cache: torch 2.13's recheck_autotune_cache behaviour applied to torch 2.11", flush=True)
    return True
