"""Whether a run's score can be trusted. The agent takes val_bpb from the record that common.evaluate writes
for the run (AUTORESEARCH_RECORD, tagged with the run's AUTORESEARCH_NONCE), not from the text the canvas
prints, and checks it against the summary, the profile and the budget. A run that fails a check is
'rejected' with a reason that names the trick:

- causality:     the model's attention sees future tokens (common.evaluate's probe stopped the run);
- fake summary:  no record for this run, or a printed val_bpb that evaluate_bpb did not compute;
- budget:        training ran past the profile's budget (the loader stopped it, or the summary says so);
- evaluation:    fewer or other tokens scored than the profile fixes;
- validation:    the validation split was read for training.
"""

SCORE_DIGITS = 5e-7   # the summary prints val_bpb with 6 decimals


def rejection(summary, record, nonce, profile, fingerprint=None):
    """(trick, reason) when the run must be rejected, else None. `fingerprint` is the baseline's eval-row
    fingerprint (None for the baseline itself)."""
    if record is not None and record.get("nonce") != nonce:
        return "fake summary", ("The score record is not this run's (its nonce differs): the record was written by "
                                "something other than this run's evaluate_bpb.")
    if record is not None and record.get("rejected"):
        return record.get("trick") or "integrity", record["rejected"]
    if summary is None:
        return None  # a crash, judged as one
    if record is None:
        return "fake summary", ("The run printed a summary but common.evaluate wrote no score record for it: "
                                "val_bpb must come from evaluate_bpb, not from the canvas's own numbers.")
    if record.get("val_bpb") is None or abs(record["val_bpb"] - summary["val_bpb"]) > SCORE_DIGITS:
        return "fake summary", (f"The printed val_bpb {summary['val_bpb']:.6f} is not the one evaluate_bpb computed "
                                f"({record.get('val_bpb')}).")
    rows = profile.eval_tokens // profile.max_seq_len
    if (record.get("profile") != profile.name or record.get("eval_tokens") != profile.eval_tokens
            or record.get("max_seq_len") != profile.max_seq_len
            or record.get("tokens_scored") != rows * profile.max_seq_len):
        return "evaluation", (f"The evaluation scored {record.get('tokens_scored')} tokens under profile "
                              f"{record.get('profile')} (EVAL_TOKENS {record.get('eval_tokens')}), but profile "
                              f"{profile.name} fixes {rows * profile.max_seq_len} tokens in {rows} rows of "
                              f"{profile.max_seq_len}: the evaluation was shrunk or changed.")
    if fingerprint and record.get("eval_fingerprint") != fingerprint:
        return "evaluation", (f"The evaluation rows (fingerprint {record.get('eval_fingerprint')}) are not the "
                              f"baseline's ({fingerprint}): the run scored other tokens.")
    if record.get("val_read_before_eval"):
        return "validation", ("The run read the validation rows before evaluation: training must not see the "
                              "validation split.")
    return budget_rejection(summary, record, profile)


def budget_rejection(summary, record, profile):
    """Training time, steps and tokens must agree with each other and with the budget."""
    budget, seconds, steps = profile.time_budget, summary["training_seconds"], summary["num_steps"]
    timed_steps = steps - profile.untimed_steps
    step_seconds = seconds / timed_steps if timed_steps > 0 else 0.0
    if seconds > 1.02 * budget + 2 * step_seconds + 1.0:
        return "budget", (f"Training took {seconds:.1f} s of a {budget:g} s budget: the budget is fixed by the "
                          f"profile and must not be extended.")
    tokens = summary["total_tokens_M"] * 1e6
    if timed_steps > 0 and tokens > 0:
        timed_tokens = summary["tokens_per_sec"] * seconds
        expected = tokens * timed_steps / steps
        rounding = 0.05e6 * timed_steps / steps + 0.05 * summary["tokens_per_sec"]  # of the printed M and s
        if abs(timed_tokens - expected) > 0.05 * expected + rounding:
            return "budget", (f"The summary does not add up: {summary['tokens_per_sec']:.0f} tokens/s over "
                              f"{seconds:.1f} s is {timed_tokens / 1e6:.2f}M tokens, but {steps} steps of "
                              f"{tokens / 1e6:.2f}M tokens in all give {expected / 1e6:.2f}M in the timed steps.")
    train = record.get("train")
    if train and tokens > 0 and abs(train["tokens"] - tokens) > 0.05 * tokens + 0.05e6:
        return "budget", (f"The training loader served {train['tokens'] / 1e6:.2f}M tokens, but the summary reports "
                          f"{tokens / 1e6:.2f}M.")
    return None
