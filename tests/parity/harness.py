"""Cross-backend parity: with the same weights and the same batch, every backend computes what the reference
(backends/cuda/train.py, run on the CPU in float32) computes, within float32 tolerances.

test_parity.py runs every name in BACKENDS against the reference, skipping a backend whose adapter module
tests/parity/backend_<name>.py is missing or whose available() is False; conftest.py prepares the data and
computes the reference's results once per session. A backend plugs in through its adapter alone (a new one also
adds its name to BACKENDS). The adapter defines these functions (arrays are numpy; none is modified in place):

    available() -> bool
        True when the backend's framework imports and runs on this machine; the tests skip it otherwise.
    initial_weights(config, seed) -> {name: array}
        The trainer's own initial weights for the seed (its init_weights): the reference's as torch draws them
        on an H100/H200, exactly (common/cuda_draws.py).
    constants() -> dict
        The trainer's hyperparameter constants: hyperparameters(trainer module) below. Each reference
        constant must be there with the same value.
    hidden_states(config, weights, inputs) -> list of arrays
        The forward pass, layer by layer: the normalised embedding x0 (B, T, D), the residual stream after each
        block (B, T, D), then the soft-capped float32 logits (B, T, V).
    losses(config, weights, inputs, targets) -> (B, T) float32
        Per-token cross-entropy in nats.
    grads(config, weights, inputs, targets) -> {name: array}
        Gradients of the mean per-token loss, one per parameter, under the reference's names.
    step(config, weights, inputs, targets, schedule) -> {name: array}
        The trainer's own optimizer step (MuonAdamW, every group), fresh optimizer state. inputs and targets are
        (A, B, T): A micro-batches whose gradients are averaged. One step per (progress, step) pair of the list
        `schedule` (training-time progress in [0, 1] sets the LR and weight-decay schedules, the step count the
        Muon momentum ramp), each on the same micro-batches. Returns the weights after the last step.
    bpb(config, weights, profile, batch_size) -> float
        common.evaluate.evaluate_bpb with the backend's per-token loss function at that batch size.

config is a dict of the reference's GPTConfig fields (sequence_len, vocab_size, n_layer, n_head, n_embd,
window_pattern). weights is {reference parameter name: float32 array}, the exchange format described in the
reference's module docstring. inputs/targets are int32. load_trainer(name) loads backends/<name>/train.py.
Computation is float32 on the CPU. The reference's adapter (backend_cuda.py) has init_weights(config), its CPU initialisation, and
cuda_initial_weights(config, seed), its initialisation as on an H100/H200, in place of initial_weights.
"""

import importlib.util
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

REFERENCE = "cuda"
BACKENDS = ["jax", "mlx"]

# Small, float32, with every feature on: T = 64 so that the "S" windows (32) really cut the context, value
# embeddings on layers 1 and 3, two heads of 32; the corpus tokenizer's full vocabulary.
CONFIG = dict(sequence_len=64, vocab_size=8192, n_layer=4, n_head=2, n_embd=64, window_pattern="SSSL")
BATCH_SIZE = 4
ACCUM_STEPS = 2
# Two optimizer steps, as (progress, step count): the second uses momentum/second-moment state, warmdown LRs
# and the Muon momentum halfway up its ramp (0.90 at step 150).
SCHEDULE = [(0.0, 0), (0.6, 150)]
PROFILE = "smoke"       # evaluate_bpb over its fixed rows (T = 64, 128 rows)
EVAL_BATCH_SIZE = 16

# Tolerances, as relative errors ||got - want|| / ||want|| per array (losses: per token).
# - Forward: float32 carries ~6e-8 relative; a 4-layer forward accumulates a few hundred roundings per value in
#   a framework-specific order, so 1e-7..1e-6 differences are rounding. 1e-5 is the forward budget.
# - Gradients pass through the backward of the same ops plus softmax's and the soft-cap's: 3e-5.
# - Optimizer steps are compared on the update (new - old weights), the optimizer's output, after two steps
#   (the second uses the momentum and second-moment state, bias correction at step 2 and warmdown LRs).
#   Three things in the reference's own numerics make float32 rounding grow there, whatever the port:
#   the cautious-decay mask (g * p >= 0) flips on rounding where g * p is near 0, moving that element by
#   lr * wd * |p|; AdamW's first step g / (|g| + 1e-10) moves elements whose gradient is near 1e-10 by up to
#   lr on a rounding-level change of g; both touch a few elements per array, so the comparison drops the
#   largest 0.1% of element differences per array (trimmed_relative_error). Third, Polar Express composes
#   five polynomials whose slope at small singular values is 8.2 x 4.0 x 3.9 x 3.3 x 2.3 ~ 990, so gradient
#   rounding along small singular directions comes out up to ~1000x larger in the Muon update, and the second
#   step starts from weights that already differ by the first step's rounding: that error is spread over the
#   whole matrix and is not trimmed. Measured on this batch, trimmed, over six weight seeds (jax, 2026-11-26):
#   AdamW groups at most 3e-5, Muon matrices at most 1.3e-3 (seed 5; 4.5e-5 at seed 0, the one used here);
#   mlx at seed 0: 1.7e-4. Tolerances 5e-4 (AdamW) and 5e-3 (Muon). A real error in an LR, a beta, the bias
#   correction, the momentum, the NorMuon axis or the cautious mask moves the update by 1e-2 or far more.
# - evaluate_bpb sums in float64 over 8192 tokens of per-token losses good to ~1e-7: 1e-5.
# Measured at this config, 2026-11-26 (jax / mlx): hidden 6e-7 / 6e-7, losses 2e-7 / 4e-7, gradients 1.3e-6 /
# 4e-6, trimmed updates AdamW 3e-6 / 9e-6 and Muon 4.5e-5 / 1.7e-4, bpb 9e-11 / 9e-10.
TOLERANCE = dict(hidden=1e-5, losses=1e-5, grads=3e-5, step_adamw=5e-4, step_muon=5e-3, bpb=1e-5)
TRIM = 1e-3  # the fraction of element differences per array that trimmed_relative_error drops


def load_trainer(name):
    """backends/<name>/train.py as a module named <name>_train (every backend's file is called train.py). A module
    of that name loaded from another file (bench/anchor.load_canvas registers a variant's canvas so) is replaced."""
    module_name, path = f"{name}_train", REPO / "backends" / name / "train.py"
    if getattr(sys.modules.get(module_name), "__file__", None) != str(path):
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[module_name]
            raise
    return sys.modules[module_name]


# Constants that set how one backend runs on its GPU (how fast, whether deterministic), not what it computes: no
# other backend has them.
SPEED_ONLY = {"TUNE_KERNELS",   # cuda: inductor's coordinate-descent tuning of its kernels' block sizes
              "WINDOW_KERNEL",  # cuda: FlexAttention or cuDNN for the sliding windows on a GPU
              "DETERMINISTIC"}  # cuda: deterministic kernels (make_deterministic)


def hyperparameters(module):
    """A trainer module's plain upper-case constants (numbers, strings, tuples/lists of them, None), less
    SPEED_ONLY."""
    plain = (int, float, str, tuple, list, type(None))
    return {k: v for k, v in vars(module).items() if k.isupper() and isinstance(v, plain) and k not in SPEED_ONLY}


def load_backend(name):
    """The adapter module tests/parity/backend_<name>.py, or None when it does not exist."""
    path = HERE / f"backend_{name}.py"
    if not path.exists():
        return None
    module_name = f"parity_backend_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[module_name] = module
    return sys.modules[module_name]


def reference_weights(seed=0):
    """The reference's initialisation of CONFIG, then its zero-initialised matrices (c_proj, ve_gate) filled
    and the per-layer scalars perturbed from a fixed numpy seed. At the true init every block's output is
    zero, so most gradients would be exactly zero and most of the model would go untested."""
    weights = load_backend(REFERENCE).init_weights(CONFIG)
    rng = np.random.default_rng(seed)
    s = (3 / CONFIG["n_embd"]) ** 0.5
    for name, w in weights.items():
        if name.endswith("c_proj.weight"):
            weights[name] = rng.uniform(-s, s, w.shape).astype(np.float32)
        elif name.endswith("ve_gate.weight"):
            weights[name] = rng.normal(0, 0.5, w.shape).astype(np.float32)
        elif name.endswith("_lambdas"):
            weights[name] = (w + rng.normal(0, 0.1, w.shape)).astype(np.float32)
    return weights


def train_batches():
    """ACCUM_STEPS batches from common's loader on the training split: int32 inputs and targets (A, B, T)."""
    from common.loader import make_loader

    loader = make_loader("train", BATCH_SIZE, CONFIG["sequence_len"], seed=0)
    batches = [next(loader)[:2] for _ in range(ACCUM_STEPS)]
    return np.stack([x for x, _ in batches]), np.stack([y for _, y in batches])


def relative_error(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        return float("inf")
    scale = np.linalg.norm(want)
    diff = np.linalg.norm(got - want)
    return float(diff / scale) if scale > 0 else float(diff)


def trimmed_relative_error(got, want, trim=TRIM):
    """relative_error without the ceil(trim * size) largest element differences."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        return float("inf")
    diff = np.sort(np.abs(got - want).ravel())[:-int(np.ceil(trim * want.size))]
    scale = np.linalg.norm(want)
    return float(np.linalg.norm(diff) / scale) if scale > 0 else float(np.linalg.norm(diff))


def compare(what, got, want, tolerance, error=relative_error):
    """None when every array of `got` is within tolerance of `want` (dicts keyed alike; order = want's) by
    `error`. Otherwise a message that names the first array that diverges, then lists every array's error."""
    rows, first = [], None
    for name, w in want.items():
        if name not in got:
            rows.append(f"  {name}: missing")
            first = first or name
            continue
        if np.shape(got[name]) != np.shape(w):
            err, shown = float("inf"), f"shape {np.shape(got[name])}, want {np.shape(w)}"
        else:
            err = error(got[name], w)
            shown = f"{err:.2e}"
        bad = not err <= tolerance
        rows.append(f"  {name}: {shown}{'  <-- over' if bad else ''}")
        if bad and first is None:
            first = name
    extra = sorted(set(got) - set(want))
    if first is None and not extra:
        return None
    head = f"{what}: first divergence at {first}" if first else f"{what}: unexpected names {extra}"
    return f"{head} (relative error over tolerance {tolerance:.0e})\n" + "\n".join(rows)


def is_muon(name):
    """The reference gives every block matrix to Muon and everything else to AdamW."""
    return name.startswith("blocks.")


def hidden_names(config):
    return ["x0"] + [f"blocks.{i}" for i in range(config["n_layer"])] + ["logits"]
