"""The LLM reply protocol: a one-line description, then SEARCH/REPLACE blocks for the canvas.

    DESCRIPTION: raise the matrix learning rate to 0.05
    backends/cuda/train.py
    <<<<<<< SEARCH
    MATRIX_LR = 0.04
    =======
    MATRIX_LR = 0.05
    >>>>>>> REPLACE

The file line is optional (the canvas is assumed); a block naming any other file is refused. Replies are
parsed and applied as plain text, never executed.
"""

import ast
from dataclasses import dataclass

SEARCH, DIVIDER, REPLACE = "<<<<<<< SEARCH", "=======", ">>>>>>> REPLACE"

FORMAT_HELP = f"""Reply in exactly this format and nothing else:
DESCRIPTION: <one line saying what you changed and why>
{{canvas}}
{SEARCH}
<lines copied exactly from the current file>
{DIVIDER}
<the lines that replace them>
{REPLACE}
Use one or more blocks. Each SEARCH must match exactly one place in the current file; include enough lines to
make it unique. Only {{canvas}} may be edited."""


class EditError(Exception):
    """A reply that cannot be parsed or applied; the message goes back to the model."""


@dataclass
class Block:
    path: str | None
    search: str
    replace: str


def parse_reply(text):
    """(description, [Block]) from a reply, or EditError."""
    lines = text.replace("\r\n", "\n").split("\n")
    description, blocks, i = None, [], 0
    last_plain = None  # the most recent non-fence line outside a block: a file name when a block follows
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if stripped.startswith(SEARCH[:7]) and stripped.endswith("SEARCH"):
            search, replace, i = _read_block(lines, i + 1)
            blocks.append(Block(_path_or_none(last_plain), search, replace))
            last_plain = None
            continue
        if stripped and not stripped.startswith("```"):
            if description is None:
                description = stripped
            else:
                last_plain = stripped
        i += 1
    tagged = [ln.strip().strip("*# ") for ln in lines if ln.strip().strip("*# ").lower().startswith("description:")]
    description = tagged[0] if tagged else description
    if description is None or description.startswith(SEARCH[:7]):
        raise EditError("The reply has no description line. Start with 'DESCRIPTION: <one line>'.")
    if description.lower().startswith("description:"):
        description = description[len("description:"):]
    description = description.strip("*# ").strip()
    if not description:
        raise EditError("The description line is empty.")
    if not blocks:
        raise EditError(f"The reply has no edit blocks ('{SEARCH}' ... '{DIVIDER}' ... '{REPLACE}').")
    return description[:200], blocks


def _read_block(lines, i):
    search, replace, part = [], [], None
    part = search
    while i < len(lines):
        stripped = lines[i].strip()
        if stripped == DIVIDER and part is search:
            part = replace
        elif stripped.startswith(REPLACE[:7]) and stripped.endswith("REPLACE"):
            if part is search:
                break
            return "\n".join(search), "\n".join(replace), i + 1
        else:
            part.append(lines[i])
        i += 1
    raise EditError(f"An edit block is not closed: each needs '{SEARCH}', '{DIVIDER}' and '{REPLACE}' lines, in order.")


def _path_or_none(line):
    """The file a block names: the line just before it, when that line looks like a path."""
    if line is None:
        return None
    name = line.strip("`*: ").removeprefix("./")
    if not name or any(c.isspace() for c in name) or not ("." in name or "/" in name):
        return None
    return name


def _is_canvas(path, canvas):
    if path is None:
        return True
    name = path
    return name == canvas or (("/" not in name) and canvas.endswith("/" + name))


def apply_blocks(text, blocks, canvas):
    """The canvas text after the blocks, or EditError naming the first block that does not apply."""
    for k, block in enumerate(blocks, 1):
        if not _is_canvas(block.path, canvas):
            raise EditError(f"Block {k} edits '{block.path}'. Only {canvas} may be changed; everything else "
                            "(common/, the evaluation, other files) is fixed.")
        if not block.search.strip():
            raise EditError(f"Block {k} has an empty SEARCH part. Copy the lines to replace from the file.")
        count = text.count(block.search)
        if count == 1:
            text = text.replace(block.search, block.replace, 1)
            continue
        if count > 1:
            raise EditError(f"Block {k}'s SEARCH text occurs {count} times in {canvas}; add lines to make it unique.")
        loose = _loose_replace(text, block.search, block.replace)
        if loose is None:
            raise EditError(f"Block {k}'s SEARCH text does not occur in {canvas}. Copy the lines exactly from "
                            f"the current file:\n{block.search[:500]}")
        text = loose
    return text


def _loose_replace(text, search, replace):
    """Match ignoring trailing whitespace per line: models often drop it."""
    lines = text.split("\n")
    want = [s.rstrip() for s in search.split("\n")]
    hits = [i for i in range(len(lines) - len(want) + 1)
            if [s.rstrip() for s in lines[i:i + len(want)]] == want]
    if len(hits) != 1:
        return None
    i = hits[0]
    return "\n".join(lines[:i] + replace.split("\n") + lines[i + len(want):])


def check_python(text, canvas):
    try:
        ast.parse(text)
    except SyntaxError as e:
        raise EditError(f"After the edits, {canvas} is not valid Python: {e.msg} at line {e.lineno}.") from None


def edit_canvas(reply, text, canvas):
    """(description, new_text) for a reply against the canvas text, or EditError."""
    description, blocks = parse_reply(reply)
    new = apply_blocks(text, blocks, canvas)
    if new == text:
        raise EditError("The edits leave the file unchanged. Propose an actual change.")
    check_python(new, canvas)
    return description, new
