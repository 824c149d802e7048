"""The offline proposer: coordinate search over the canvas's module-level numeric constants. No network.

One constant changes per experiment. Floats move by a factor (x2 or /2, then sqrt of that after both
directions failed, and so on); ratios in [0, 1] move a fraction of the way to 0 or to 1; small ints by one,
larger ints and `2**k` forms by a factor 2. After a keep, the same move is tried again (momentum). Constants
with fewer failures since their last keep come first; ties are broken by a seeded order. The proposal is a
pure function of (canvas, history, seed), so a resumed run continues exactly.
"""

import ast
import math
import operator
import random
import re
from dataclasses import dataclass

from agent.proposers.base import NoProposal, Proposal

CONSTANT = re.compile(r"^[A-Z][A-Z0-9_]*$")
RATIO = re.compile(r"RATIO|FRAC|MOMENTUM|BETA|DROPOUT|PROB")
SKIP = re.compile(r"SEED|UNTIMED|VERBOSE|PRINT|LOG_|EVAL")  # not hyperparameters, or part of the measurement
MAX_LEVEL_FLOAT = 3
OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
       ast.FloorDiv: operator.floordiv, ast.Pow: operator.pow}


@dataclass
class Constant:
    name: str
    value: float | int
    src: str
    node: ast.expr


def constants(text):
    """The module-level NAME = <number> assignments of a Python source, by name (names assigned twice skipped)."""
    found, seen = {}, set()
    for stmt in ast.parse(text).body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            name, value = stmt.targets[0].id, stmt.value
        elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
            name, value = stmt.target.id, stmt.value
        else:
            continue
        if name in seen:
            found.pop(name, None)
            continue
        seen.add(name)
        number = _number(value)
        if CONSTANT.match(name) and not SKIP.search(name) and number is not None:
            found[name] = Constant(name, number, ast.get_source_segment(text, value), value)
    return found


def _number(node):
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _number(node.operand)
        return None if v is None else (-v if isinstance(node.op, ast.USub) else v)
    if isinstance(node, ast.BinOp) and type(node.op) in OPS:
        a, b = _number(node.left), _number(node.right)
        if a is None or b is None or (isinstance(node.op, ast.Pow) and abs(b) > 64):
            return None
        try:
            v = OPS[type(node.op)](a, b)
        except (ZeroDivisionError, OverflowError):
            return None
        return v if type(v) in (int, float) and math.isfinite(v) else None
    return None


def replace_value(text, const, new_src):
    """The source with one constant's value expression replaced (ast offsets are UTF-8 byte columns)."""
    lines = text.split("\n")
    n = const.node
    first, last = lines[n.lineno - 1].encode(), lines[n.end_lineno - 1].encode()
    rest = last[n.end_col_offset:]
    pad = re.match(rb"( +)#", rest)
    if pad:  # keep an aligned trailing comment in its column
        width = max(len(pad.group(1)) + len(const.src.encode()) - len(new_src.encode()), 1)
        rest = b" " * width + rest[len(pad.group(1)):]
    joined = (first[:n.col_offset] + new_src.encode() + rest).decode()
    return "\n".join(lines[:n.lineno - 1] + [joined] + lines[n.end_lineno:])


def _fmt_float(x):
    s = f"{x:.3g}"
    return s if any(c in s for c in ".e") else s + ".0"


def moves(const, level):
    """[(direction, new_src)] for one constant at a step level; empty when the level is beyond its range."""
    v, src = const.value, const.src.replace(" ", "")
    out = []
    if isinstance(v, int):
        if level > 0:
            return []
        pow2 = re.fullmatch(r"2\*\*(\d+)", src)
        if pow2:
            k = int(pow2.group(1))
            out = [("up", f"2**{k + 1}")] + ([("down", f"2**{k - 1}")] if k > 0 else [])
        elif abs(v) >= 16:
            out = [("up", str(v * 2)), ("down", str(v // 2))]
        else:
            out = [("up", str(v + 1))] + ([("down", str(v - 1))] if v > 1 else [])
    else:
        if level > MAX_LEVEL_FLOAT:
            return []
        f = 2 ** (1 / 2 ** level)
        if RATIO.search(const.name) and 0 <= v <= 1:
            d = 1 - 1 / f
            out = [("up", _fmt_float(v + (1 - v) * d)), ("down", _fmt_float(v * (1 - d)))]
        elif v != 0:
            out = [("up", _fmt_float(v * f)), ("down", _fmt_float(v / f))]
    return [(d, s) for d, s in out if s != src and _number(ast.parse(s, mode="eval").body) != v]


class OfflineProposer:
    name = "offline"
    model = None
    needs_program = False  # reads no program.md

    def __init__(self, seed=0):
        self.seed = seed

    def propose(self, ctx):
        consts = constants(ctx.text)
        if not consts:
            raise NoProposal(f"{ctx.canvas} has no module-level numeric constants (NAME = number) for the offline "
                             "search to change. Use an LLM proposer, or write the hyperparameters as constants.",
                             exhausted=True)
        past = [r.get("meta") or {} for r in ctx.history if r.get("proposer") == "offline" and r.get("meta")]
        kept = {id(m) for r in ctx.history for m in [r.get("meta")] if r.get("status") == "keep" and m}
        running = [f["meta"] for f in ctx.in_flight if f.get("meta") and "name" in f["meta"]]
        tried = {(m["name"], m["old"], m["new"]) for m in past + running}
        fails, last_dir = {}, {}
        for m in past:
            if id(m) in kept:
                fails[m["name"]] = 0
                last_dir[m["name"]] = m["direction"]
            else:
                fails[m["name"]] = fails.get(m["name"], 0) + 1
        order = sorted(consts)
        random.Random(self.seed).shuffle(order)
        rank = {name: i for i, name in enumerate(order)}

        candidates = []
        if past and id(past[-1]) in kept and past[-1]["name"] in consts:
            m = past[-1]  # momentum: the move that just helped, once more
            candidates.append((m["name"], m["level"], [m["direction"]]))
        for name in sorted(consts, key=lambda n: (fails.get(n, 0), rank[n])):
            first = last_dir.get(name) or ("up" if random.Random(f"{self.seed}:{name}").random() < 0.5 else "down")
            dirs = [first, "down" if first == "up" else "up"]
            for level in range(fails.get(name, 0) // 2, MAX_LEVEL_FLOAT + 1):
                candidates.append((name, level, dirs))

        for name, level, dirs in candidates:
            const = consts[name]
            options = dict(moves(const, level))
            for d in dirs:
                new = options.get(d)
                if new is None or (name, const.src, new) in tried:
                    continue
                return Proposal(
                    description=f"{name} {const.src} -> {new}",
                    text=replace_value(ctx.text, const, new),
                    meta={"name": name, "old": const.src, "new": new, "direction": d, "level": level})
        raise NoProposal("The offline search has tried every one-constant change it knows from the current best "
                         "canvas; stopping. Use an LLM proposer for structural changes.", exhausted=True)

    def fix(self, ctx, proposal, feedback):
        return None  # a crashing constant is simply recorded; the search moves on
