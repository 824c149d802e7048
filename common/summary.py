"""The result block every trainer prints last, and its parser.

The block is upstream autoresearch's ("---" then "key: value" lines) plus backend, profile and
tokens_per_sec. The agent, the tests and docker reproduce all read it back through parse_summary.
"""

import math

from common import record
from common.errors import ContractError

# key -> (type, format) in the order printed
FIELDS = {
    "val_bpb": (float, "{:.6f}"),
    "training_seconds": (float, "{:.1f}"),
    "total_seconds": (float, "{:.1f}"),
    "peak_vram_mb": (float, "{:.1f}"),
    "mfu_percent": (float, "{:.2f}"),
    "total_tokens_M": (float, "{:.1f}"),
    "num_steps": (int, "{:d}"),
    "num_params_M": (float, "{:.1f}"),
    "depth": (int, "{:d}"),
    "backend": (str, "{}"),
    "profile": (str, "{}"),
    "tokens_per_sec": (float, "{:.0f}"),
}


def format_summary(**values):
    missing = [k for k in FIELDS if k not in values]
    if missing:
        raise ValueError(f"summary is missing {', '.join(missing)}")
    lines = ["---"]
    for key, (kind, fmt) in FIELDS.items():
        lines.append(f"{key + ':':<20}{fmt.format(kind(values[key]))}")
    return "\n".join(lines)


def print_summary(**values):
    if record.train is not None:  # a line above the block (which stays upstream's): did the data keep up?
        print(f"data_wait_seconds: {record.train['data_wait_s']:.1f}")
    print(format_summary(**values), flush=True)


def parse_summary(text):
    """The fields of the last summary block in a trainer's output, typed. Raises ContractError when the
    output has no complete block (the run crashed or was cut short)."""
    start = ("\n" + text).rfind("\n---\n")      # the leading newline finds a block at the very start too
    if start < 0:
        raise ContractError("The trainer's output has no summary block ('---' followed by 'val_bpb: ...'): "
                            "the run crashed or was stopped before it finished. Read the end of its log for the cause.")
    values = {}
    for line in text[start + 4:].splitlines():
        key, sep, value = line.partition(":")
        key = key.strip()
        if sep and key in FIELDS and key not in values:
            kind = FIELDS[key][0]
            try:
                values[key] = kind(value.strip()) if kind is not int else int(float(value.strip()))
            except ValueError:
                raise ContractError(f"The summary line '{line.strip()}' does not hold a {kind.__name__}. "
                                    "The trainer must print its summary through common.summary.print_summary.")
    missing = [k for k in FIELDS if k not in values]
    if missing:
        raise ContractError(f"The trainer's summary block lacks {', '.join(missing)}: the run was cut short or "
                            "the trainer does not print through common.summary.print_summary.")
    if not math.isfinite(values["val_bpb"]):
        raise ContractError(f"The run's val_bpb is {values['val_bpb']}: training diverged.")
    return values
