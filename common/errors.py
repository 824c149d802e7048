"""One kind of error for bad input: a paragraph that names the problem and the fix, never a traceback wall."""

import sys


class ContractError(Exception):
    """Bad input or missing preparation. The message is one paragraph for the user, naming the fix."""


class IntegrityError(ContractError):
    """The run broke the rules of the measurement (a causal leak, training past the budget, training on the
    validation split): rejected, with one paragraph naming the trick (common/record.py writes it down)."""


def run_cli(main, *args, **kwargs):
    """Run main(); a ContractError prints its paragraph to stderr and exits with status 2."""
    try:
        return main(*args, **kwargs)
    except ContractError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
