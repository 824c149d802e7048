"""evaluate_bpb: the one ground-truth metric, shared by every backend.

Bits per byte = sum of per-token cross-entropy (nats) / (ln 2 * sum of the targets' UTF-8 bytes), special
tokens (zero bytes) excluded from both sums. The validation rows are fixed by the profile: EVAL_TOKENS //
MAX_SEQ_LEN rows packed from the validation split (cycled if it is shorter), built once and cached on disk, so
every backend and every batch size scores exactly the same tokens.

Before scoring, a probe checks that loss_fn is causal (causal_check), and the score goes into the run record
(common/record.py) that the agent trusts over the printed summary.
"""

import hashlib
import math
import time

import numpy as np

from common import record
from common.data import get_source
from common.loader import BestFitPacker, document_batches
from common.tokenizer import Tokenizer


def eval_rows(profile, source=None, tokenizer=None):
    """The fixed validation rows for a profile: int32 array (EVAL_TOKENS // T, T + 1), cached per tokenizer.
    Read outside evaluate_bpb, the run record notes it (val_read_before_eval)."""
    record.note_val_read()
    source = source or get_source()
    tokenizer = tokenizer or Tokenizer.load(source)
    seq_len = profile.max_seq_len
    n_rows = profile.eval_tokens // seq_len
    path = source.workdir / "eval" / f"val_T{seq_len}_rows{n_rows}_{tokenizer.fingerprint[:12]}.npy"
    source.verify()
    if path.exists():
        return np.load(path)
    # Upstream's val loader packs this stream the same way, so these are exactly its first rows.
    packer = BestFitPacker(document_batches(source, tokenizer, "val"))
    rows = np.empty((n_rows, seq_len + 1), dtype=np.int32)
    for r in range(n_rows):
        packer.fill(rows[r])
    try:  # a read-only cache (a container's mount) just rebuilds the rows next time
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npy")
        np.save(tmp, rows)
        tmp.replace(path)
    except OSError:
        pass
    return rows


PROBE_ROWS = 4   # rows of the first batch that causal_check perturbs


def batch_at(rows, start, batch_size):
    """Rows start.. start + batch_size, topped up with repeated rows to batch_size."""
    batch = rows[start:start + batch_size]
    if len(batch) < batch_size:
        batch = np.concatenate([batch, rows[np.arange(batch_size - len(batch)) % len(rows)]])
    return batch


def inputs_targets(batch):
    return np.ascontiguousarray(batch[:, :-1]), np.ascontiguousarray(batch[:, 1:])


def loss_gap(a, b):
    """|a - b| elementwise, 0 where both are equal (inf and NaN included), inf where only one is NaN."""
    same = (a == b) | (np.isnan(a) & np.isnan(b))
    return np.nan_to_num(np.where(same, 0.0, np.abs(a - b)), nan=np.inf)


def resolution(dtype):
    """The relative precision of the losses' dtype (bfloat16, which numpy does not know, and non-floats: 2^-7)."""
    try:
        return float(np.finfo(dtype).eps)
    except (TypeError, ValueError):
        return 2.0 ** -7


def causal_check(loss_fn, rows, batch_size):
    """Whether loss_fn is causal: in the first PROBE_ROWS rows of the first batch, the tokens after a cut t
    (T/2, and T/8 in every other row) are replaced by another row's, inputs and targets alike from t + 1 on,
    so that input t + 1 no longer matches target t; the losses at positions <= t must not change. The
    tolerance is a few units of the losses' precision at their magnitude, or 4x the change between two calls
    on the same batch, for nondeterministic kernels (a causal model usually gives identical bits). Costs two
    calls beyond the first batch, whose losses it returns (B, T) with the check as the record keeps it."""
    batch = batch_at(rows, 0, batch_size)
    inputs, targets = inputs_targets(batch)
    B, T = inputs.shape
    out = loss_fn(inputs, targets)
    dtype = np.asarray(out).dtype
    base = np.array(out, dtype=np.float64).reshape(B, T)   # a copy: loss_fn may reuse its output buffer
    noise = loss_gap(np.asarray(loss_fn(inputs, targets), dtype=np.float64).reshape(B, T), base).max()
    cuts = [(T // 2, T // 8)[i % 2] for i in range(min(PROBE_ROWS, B))]
    x, y = inputs.copy(), targets.copy()
    for i, t in enumerate(cuts):
        # Another row's tokens (valid, in-distribution), from one whose token t + 1 differs: rows repeat
        # when the validation split is short.
        others = np.flatnonzero(rows[:, t + 1] != batch[i, t + 1])
        donor = rows[others[i % len(others)]] if len(others) else np.roll(batch[i], 1)
        x[i, t + 1:], y[i, t + 1:] = donor[t + 1:-1], donor[t + 2:]
    changed = np.asarray(loss_fn(x, y), dtype=np.float64).reshape(B, T)
    gaps = [loss_gap(changed[i, :t + 1], base[i, :t + 1]).max() for i, t in enumerate(cuts)]
    worst = int(np.argmax(gaps))
    magnitude = np.abs(base[np.isfinite(base)]).max(initial=1.0)
    tolerance = max(8 * resolution(dtype) * magnitude, 4 * noise)
    return base, dict(ok=bool(gaps[worst] <= tolerance), max_diff=float(gaps[worst]), tolerance=float(tolerance),
                      position=cuts[worst])


def evaluate_bpb(loss_fn, batch_size, profile, source=None, progress=None):
    """Validation bits per byte. loss_fn(inputs, targets) takes int32 numpy arrays of shape (B, T) and
    returns the per-token loss in nats, shape (B, T). The last batch is topped up with repeated rows whose
    losses are ignored, so every call sees the same shape. First causal_check probes loss_fn (a leak raises
    IntegrityError); the result goes into the run record."""
    if record.rejection:  # a guard already rejected this run: no score for it
        record.reject(*record.rejection)
    source = source or get_source()
    tokenizer = Tokenizer.load(source)
    record.scoring = True
    try:
        rows = eval_rows(profile, source, tokenizer)
    finally:
        record.scoring = False
    n_rows, T = rows.shape[0], rows.shape[1] - 1
    scored = dict(profile=profile.name, eval_tokens=profile.eval_tokens, max_seq_len=profile.max_seq_len,
                  eval_rows=n_rows, eval_fingerprint=hashlib.sha256(rows.tobytes()).hexdigest()[:16])
    first, scored["causal_check"] = causal_check(loss_fn, rows, batch_size)
    check = scored["causal_check"]
    if not check["ok"]:
        t = check["position"]
        record.reject("causality", (
            f"The model's attention sees future tokens: changing the tokens after position {t} changed the "
            f"losses at positions <= {t} by {check['max_diff']:.3g} (tolerance {check['tolerance']:.3g}). "
            "A language model may use only earlier tokens to predict the next one: keep the causal mask in "
            "attention (is_causal=True, or a mask that lets query i see keys j <= i only) and in anything else "
            "that mixes positions."), **scored)
    token_bytes = tokenizer.token_bytes
    total_nats, total_bytes = 0.0, 0
    t0 = time.time()
    for start in range(0, n_rows, batch_size):
        inputs, targets = inputs_targets(batch_at(rows, start, batch_size))
        real = min(batch_size, n_rows - start)
        losses = first if start == 0 else np.asarray(loss_fn(inputs, targets), dtype=np.float64)
        losses = losses.reshape(batch_size, -1)[:real]
        nbytes = token_bytes[targets[:real]]
        total_nats += float(losses[nbytes > 0].sum())
        total_bytes += int(nbytes.sum())
        if progress:
            progress(min(start + batch_size, n_rows), n_rows, time.time() - t0)
    val_bpb = total_nats / (math.log(2) * total_bytes)
    record.write(val_bpb=val_bpb, tokens_scored=n_rows * T, bytes_scored=total_bytes, **scored)
    return val_bpb
