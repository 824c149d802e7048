"""evaluate_bpb: the one ground-truth metric, shared by every backend.

Bits per byte = sum of per-token cross-entropy (nats) / (ln 2 * sum of the targets' UTF-8 bytes), special
tokens (zero bytes) excluded from both sums. The validation rows are fixed by the profile: EVAL_TOKENS //
MAX_SEQ_LEN rows packed from the validation split (cycled if it is shorter), built once and cached on disk, so
every backend and every batch size scores exactly the same tokens.
"""

import math
import time

import numpy as np

from common.data import get_source
from common.loader import BestFitPacker, document_batches
from common.tokenizer import Tokenizer


def eval_rows(profile, source=None, tokenizer=None):
    """The fixed validation rows for a profile: int32 array (EVAL_TOKENS // T, T + 1), cached per tokenizer."""
    source = source or get_source()
    tokenizer = tokenizer or Tokenizer.load(source)
    seq_len = profile.max_seq_len
    n_rows = profile.eval_tokens // seq_len
    path = source.workdir / "eval" / f"val_T{seq_len}_rows{n_rows}_{tokenizer.fingerprint[:12]}.npy"
    source.verify()
    if path.exists():
        return np.load(path)
    # The same stream as make_loader("val"), so these are exactly the first rows of upstream's val loader.
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


def evaluate_bpb(loss_fn, batch_size, profile, source=None, progress=None):
    """Validation bits per byte. loss_fn(inputs, targets) takes int32 numpy arrays of shape (B, T) and
    returns the per-token loss in nats, shape (B, T). The last batch is topped up with repeated rows whose
    losses are ignored, so every call sees the same shape."""
    source = source or get_source()
    tokenizer = Tokenizer.load(source)
    rows = eval_rows(profile, source, tokenizer)
    token_bytes = tokenizer.token_bytes
    total_nats, total_bytes = 0.0, 0
    t0 = time.time()
    for start in range(0, len(rows), batch_size):
        batch = rows[start:start + batch_size]
        real = len(batch)
        if real < batch_size:
            batch = np.concatenate([batch, rows[np.arange(batch_size - real) % len(rows)]])
        inputs, targets = np.ascontiguousarray(batch[:, :-1]), np.ascontiguousarray(batch[:, 1:])
        losses = np.asarray(loss_fn(inputs, targets), dtype=np.float64).reshape(batch_size, -1)[:real]
        nbytes = token_bytes[targets[:real]]
        total_nats += float(losses[nbytes > 0].sum())
        total_bytes += int(nbytes.sum())
        if progress:
            progress(min(start + batch_size, len(rows)), len(rows), time.time() - t0)
    return total_nats / (math.log(2) * total_bytes)
