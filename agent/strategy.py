"""Which canvas the next experiment starts from (--strategy).

greedy: always the best, the branch tip.
tree:   one of a small frontier of the best distinct canvases measured so far (kept or not), picked by a UCB
        rule: the parent with the lowest  val_bpb - EXPLORE * scale * sqrt(ln(N + 1) / (n + 1)),  where n is
        how many experiments started from it (those in flight included), N from any, and the scale is the
        noise sd (the spread of the frontier's values when the noise is not measured). A good canvas that was
        rarely tried is explored before the best is tried again and again. The branch still holds only the
        line of best canvases; every other experiment stays in the logs and diffs.
"""

import math
from collections import Counter

STRATEGIES = ("greedy", "tree")
FRONTIER = 4        # the distinct canvases a tree keeps alive
EXPLORE = 2.0       # the exploration bonus, in units of the scale


def frontier(rows, canvas_id):
    """The FRONTIER best measured rows with distinct canvases, best first. canvas_id(commit) names a canvas."""
    measured = [r for r in rows if r.get("commit") and r.get("val_bpb") is not None
                and r["status"] in ("keep", "discard", "rebase")]
    seen, out = set(), []
    for r in sorted(measured, key=lambda r: (r["val_bpb"], r["n"])):
        key = canvas_id(r["commit"])
        if key not in seen:
            seen.add(key)
            out.append(r)
        if len(out) == FRONTIER:
            break
    return out


def tried_counts(rows, in_flight_parents=()):
    """How many experiments started from each commit: the logged ones and those in flight."""
    started = [r.get("parent") for r in rows if r.get("kind") == "experiment" and r["status"] != "invalid"
               and not r.get("rerun_of")]
    return Counter(started) + Counter(in_flight_parents)


def ucb_scores(nodes, tried, noise):
    """{commit: score} of the frontier's rows; the lowest is picked."""
    values = [r["val_bpb"] for r in nodes]
    scale = noise or (max(values) - min(values))
    total = sum(tried.values())
    return {r["commit"]: r["val_bpb"] - EXPLORE * scale * math.sqrt(math.log(total + 1) / (tried[r["commit"]] + 1))
            for r in nodes}


def pick_parent(rows, canvas_id, noise, in_flight_parents=()):
    """The row whose canvas the next experiment edits, under --strategy tree."""
    nodes = frontier(rows, canvas_id)
    scores = ucb_scores(nodes, tried_counts(rows, in_flight_parents), noise)
    return min(nodes, key=lambda r: (scores[r["commit"]], r["val_bpb"], r["n"]))


def parent_summary(parent, rows, best):
    """What the proposer is told of the parent it edits: its value and what was tried from it."""
    tried = [r for r in rows if r.get("parent") == parent["commit"] and r.get("kind") == "experiment"
             and r["status"] != "invalid"]
    return {"n": parent["n"], "commit": parent["commit"], "val_bpb": parent["val_bpb"],
            "is_best": parent["val_bpb"] <= best,
            "tried": [{"n": r["n"], "status": r["status"], "val_bpb": r.get("val_bpb"),
                       "description": r.get("description", "")} for r in tried]}
