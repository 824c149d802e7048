"""The offline proposer's reading and rewriting of module-level constants."""

from agent.proposers.base import Context
from agent.proposers.offline import OfflineProposer, constants, moves, replace_value
from common.platform import get_profile

SRC = '''"""doc"""
import os
MATRIX_LR = 0.04  # comment kept
WARMDOWN_RATIO = 0.5
TOTAL_BATCH_SIZE = 2**19
DEPTH = 8
HEAD_DIM: int = 128
ADAM_BETAS = (0.8, 0.95)
FLAG = True
DEVICE = os.environ.get("X", "cpu")
lower_case = 3.0

def f():
    INNER = 1.0
'''


def test_constants_are_module_level_numbers_only():
    c = constants(SRC)
    assert sorted(c) == ["DEPTH", "HEAD_DIM", "MATRIX_LR", "TOTAL_BATCH_SIZE", "WARMDOWN_RATIO"]
    assert c["TOTAL_BATCH_SIZE"].value == 2**19


def test_moves_and_rewrites_keep_the_form():
    c = constants(SRC)
    assert dict(moves(c["MATRIX_LR"], 0)) == {"up": "0.08", "down": "0.02"}
    assert dict(moves(c["MATRIX_LR"], 1)) == {"up": "0.0566", "down": "0.0283"}
    assert dict(moves(c["WARMDOWN_RATIO"], 0)) == {"up": "0.75", "down": "0.25"}
    assert dict(moves(c["TOTAL_BATCH_SIZE"], 0)) == {"up": "2**20", "down": "2**18"}
    assert dict(moves(c["DEPTH"], 0)) == {"up": "9", "down": "7"}
    assert dict(moves(c["HEAD_DIM"], 0)) == {"up": "256", "down": "64"}
    assert moves(c["DEPTH"], 1) == []
    new = replace_value(SRC, c["MATRIX_LR"], "0.08")
    assert "MATRIX_LR = 0.08  # comment kept\n" in new and new.replace("0.08", "0.04") == SRC
    # an aligned comment keeps its column while it can
    assert "MATRIX_LR = 0.5   # comment kept\n" in replace_value(SRC, c["MATRIX_LR"], "0.5")
    assert "MATRIX_LR = 0.0566 # comment kept\n" in replace_value(SRC, c["MATRIX_LR"], "0.0566")
    assert "MATRIX_LR = 0.05657 # comment kept\n" in replace_value(SRC, c["MATRIX_LR"], "0.05657")
    assert "TOTAL_BATCH_SIZE = 2**20\n" in replace_value(SRC, c["TOTAL_BATCH_SIZE"], "2**20")


def test_proposals_follow_the_history():
    p = OfflineProposer(seed=0)
    ctx = Context("/", "train.py", SRC, [], "", "cuda", get_profile("smoke"), 1.0)
    first = p.propose(ctx)
    assert first.description == p.propose(ctx).description  # deterministic
    # after a keep, the same move again from the new value (momentum)
    kept = {"n": 1, "status": "keep", "proposer": "offline", "meta": first.meta}
    ctx2 = Context("/", "train.py", first.text, [kept], "", "cuda", get_profile("smoke"), 0.9)
    second = p.propose(ctx2)
    assert second.meta["name"] == first.meta["name"] and second.meta["direction"] == first.meta["direction"]
    # after a discard, another constant comes next and the same change is never repeated
    lost = {"n": 1, "status": "discard", "proposer": "offline", "meta": first.meta}
    ctx3 = Context("/", "train.py", SRC, [lost], "", "cuda", get_profile("smoke"), 1.0)
    third = p.propose(ctx3)
    assert third.meta["name"] != first.meta["name"]
