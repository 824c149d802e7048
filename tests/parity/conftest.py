import sys
from functools import cached_property
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # harness and the backend adapters

import harness  # noqa: E402


@pytest.fixture(scope="session")
def prepared(corpus, corpus_cache):
    """The shared corpus with the session's cache and the tokenizer trained once, for common's loader and eval."""
    from common.prepare import prepare
    env = pytest.MonkeyPatch()
    env.setenv("AUTORESEARCH_DATA", str(corpus))
    env.setenv("AUTORESEARCH_CACHE", str(corpus_cache))
    prepare(str(corpus), if_needed=True)
    yield
    env.undo()


class Case:
    """The weights, the batch and the reference's results, each computed once per session."""

    def __init__(self):
        self.config = harness.CONFIG
        self.reference = harness.load_backend(harness.REFERENCE)
        self.weights = harness.reference_weights()
        self.inputs, self.targets = harness.train_batches()  # (A, B, T)

    @cached_property
    def hidden_states(self):
        return self.reference.hidden_states(self.config, self.weights, self.inputs[0])

    @cached_property
    def losses(self):
        return self.reference.losses(self.config, self.weights, self.inputs[0], self.targets[0])

    @cached_property
    def grads(self):
        return self.reference.grads(self.config, self.weights, self.inputs[0], self.targets[0])

    @cached_property
    def step(self):
        return self.reference.step(self.config, self.weights, self.inputs, self.targets, harness.SCHEDULE)

    @cached_property
    def bpb(self):
        from common.platform import get_profile
        return self.reference.bpb(self.config, self.weights, get_profile(harness.PROFILE), harness.EVAL_BATCH_SIZE)


@pytest.fixture(scope="session")
def case(prepared):
    if not harness.load_backend(harness.REFERENCE).available():
        pytest.skip("the reference backend (torch) is not installed")
    return Case()
