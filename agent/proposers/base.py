"""What every proposer takes and returns."""

from dataclasses import dataclass, field


@dataclass
class Context:
    root: str            # repository root
    canvas: str          # the canvas path relative to root, e.g. backends/cuda/train.py
    text: str            # the canvas as it is now (the branch tip)
    history: list        # results.jsonl rows so far
    program: str         # program.md
    backend: str
    profile: object      # common.platform.Profile
    best: float | None   # best val_bpb so far
    noise: float | None = None  # standard deviation of val_bpb between runs of an unchanged canvas, if measured
    in_flight: list = field(default_factory=list)  # experiments running now: {description, diff, meta} each
    parent: dict | None = None  # --strategy tree: the canvas edited, when it may not be the best (strategy.py)


@dataclass
class Proposal:
    description: str
    text: str | None              # the new canvas; None when the proposer edited the working tree itself
    meta: dict = field(default_factory=dict)
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float | None = None
    seconds: float = 0.0


class NoProposal(Exception):
    """The proposer could not produce a valid change (retries spent, or nothing left to try)."""

    def __init__(self, message, tokens_in=0, tokens_out=0, cost_usd=None, exhausted=False):
        super().__init__(message)
        self.tokens_in, self.tokens_out, self.cost_usd, self.exhausted = tokens_in, tokens_out, cost_usd, exhausted
