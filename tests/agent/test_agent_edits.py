"""The SEARCH/REPLACE protocol: parsing and applying replies as text."""

import pytest

from agent.edits import EditError, edit_canvas

CANVAS = "backends/cuda/train.py"
TEXT = "import math\n\nMATRIX_LR = 0.04  \nDEPTH = 8\n\ndef f():\n    return MATRIX_LR\n"


def reply(*blocks, description="DESCRIPTION: raise the LR", path=CANVAS):
    body = "".join(f"{path}\n<<<<<<< SEARCH\n{s}\n=======\n{r}\n>>>>>>> REPLACE\n" for s, r in blocks)
    return f"{description}\n\n{body}"


def test_good_reply_in_a_fence_with_loose_whitespace():
    blocks = reply(("MATRIX_LR = 0.04\nDEPTH = 8", "MATRIX_LR = 0.05\nDEPTH = 8"), ("DEPTH = 8", "DEPTH = 9"),
                   description="")
    r = "Here is my change.\nDESCRIPTION: raise LR and depth\n```python\n" + blocks.strip() + "\n```\n"
    description, new = edit_canvas(r, TEXT, CANVAS)
    assert description == "raise LR and depth"
    assert "MATRIX_LR = 0.05\nDEPTH = 9\n" in new


def test_file_line_may_be_omitted_or_short():
    assert "DEPTH = 9" in edit_canvas(reply(("DEPTH = 8", "DEPTH = 9"), path=""), TEXT, CANVAS)[1]
    assert "DEPTH = 9" in edit_canvas(reply(("DEPTH = 8", "DEPTH = 9"), path="train.py"), TEXT, CANVAS)[1]


@pytest.mark.parametrize("text,message", [
    ("I think we should raise the LR.", "no edit blocks"),
    (reply(("DEPTH = 8", "DEPTH = 9"), path="common/evaluate.py"), "Only backends/cuda/train.py may be changed"),
    (reply(("DEPTH = 7", "DEPTH = 9")), "does not occur"),
    (reply(("MATRIX_LR", "LR")), "occurs 2 times"),
    (reply(("DEPTH = 8", "DEPTH = 8")), "unchanged"),
    (reply(("DEPTH = 8", "DEPTH = (")), "not valid Python"),
    ("DESCRIPTION: x\n<<<<<<< SEARCH\nDEPTH = 8\n=======\nDEPTH = 9\n", "not closed"),
])
def test_bad_replies_name_the_problem(text, message):
    with pytest.raises(EditError, match=message):
        edit_canvas(text, TEXT, CANVAS)
