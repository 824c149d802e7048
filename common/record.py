"""The run record: what common/ itself measured of a training run, for the agent to trust over the summary
the canvas prints.

The agent sets AUTORESEARCH_RECORD (a file) and AUTORESEARCH_NONCE (a random string) for every run.
evaluate_bpb writes the record once it has scored; a guard that rejects the run (a causal leak, training past
the budget, a loader asked for the validation split) writes it at once and raises IntegrityError, which
run_cli turns into one paragraph and exit status 2. A rejection sticks: later records of the same process
keep it. Without AUTORESEARCH_RECORD (a manual run) nothing is written, but the guards still act.

    nonce                 $AUTORESEARCH_NONCE, or null
    profile, eval_tokens, max_seq_len
                          the profile evaluate_bpb scored under (null until it has been called)
    val_bpb               as evaluate_bpb computed it (null when the run was rejected before scoring)
    tokens_scored         target tokens scored: eval rows x T (top-up rows excluded)
    bytes_scored          their UTF-8 bytes (special tokens count 0)
    eval_rows             number of validation rows
    eval_fingerprint      first 16 hex digits of the SHA-256 of the rows array's bytes
    causal_check          {ok, max_diff, tolerance, position} of evaluate_bpb's probe, or null
    train                 {batches, tokens, first_batch_at, timed_start_at, last_batch_at, deadline_at, stopped,
                          data_wait_s} from the training loader (times: seconds since the epoch; data_wait_s: how
                          long timed training waited for the loader's batches), or null if none was made
    val_read_before_eval  validation rows or documents were read through common/ outside evaluate_bpb
    rejected, trick       null, or the reason (one paragraph) and one of causality, budget, validation
"""

import json
import os
from pathlib import Path

from common.errors import IntegrityError

train = None                    # the training loaders' counts (common.loader), shared by every loader of the run
val_read_before_eval = False
scoring = False                 # evaluate_bpb is reading its own rows
rejection = None                # (trick, reason) of the first guard that rejected the run


def reset():
    """Forget everything recorded so far (tests: one process, many runs)."""
    global train, val_read_before_eval, scoring, rejection
    train, val_read_before_eval, scoring, rejection = None, False, False, None


def training_counts():
    """The run's training counts, created by the first training loader."""
    global train
    if train is None:
        train = dict(batches=0, tokens=0, first_batch_at=None, timed_start_at=None, last_batch_at=None,
                     deadline_at=None, stopped=False, data_wait_s=0.0)
    return train


def note_val_read():
    """Validation rows or documents were read; before evaluation unless evaluate_bpb is reading them."""
    global val_read_before_eval
    if not scoring:
        val_read_before_eval = True


def write(**scored):
    """The record with the evaluation fields given (the rest null), written atomically to
    $AUTORESEARCH_RECORD when it is set. Returns it."""
    fields = dict(nonce=os.environ.get("AUTORESEARCH_NONCE"), profile=None, eval_tokens=None, max_seq_len=None,
                  val_bpb=None, tokens_scored=None, bytes_scored=None, eval_rows=None, eval_fingerprint=None,
                  causal_check=None)
    assert set(scored) <= set(fields) - {"nonce"}, sorted(scored)
    fields.update(scored)
    fields.update(train=dict(train) if train else None, val_read_before_eval=val_read_before_eval,
                  rejected=rejection[1] if rejection else None, trick=rejection[0] if rejection else None)
    path = os.environ.get("AUTORESEARCH_RECORD")
    if path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(fields, indent=1) + "\n")
        tmp.replace(path)
    return fields


def reject(trick, reason, **scored):
    """Reject the run: write the record with the reason and raise IntegrityError."""
    global rejection
    rejection = rejection or (trick, reason)
    write(**scored)
    raise IntegrityError(reason)
