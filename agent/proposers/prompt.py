"""The text every LLM proposer reads: program.md, the canvas, a compact history of results and diffs."""

from agent.edits import FORMAT_HELP

MAX_ROWS = 60
RECENT_DIFFS = 6
DIFF_CHARS = 1500


def system_prompt(ctx):
    return (ctx.program.strip() + "\n\n## How to reply\n" + FORMAT_HELP.format(canvas=ctx.canvas)).strip()


def history_table(history):
    rows = [r for r in history if r.get("status") in ("keep", "discard", "crash", "rejected")][-MAX_ROWS:]
    if not rows:
        return "(no experiments yet)"
    lines = ["n | status | val_bpb | description"]
    for r in rows:
        bpb = f"{r['val_bpb']:.6f}" if r.get("val_bpb") is not None else "-"
        why = f" (rejected: {r['rejected']})" if r.get("rejected") else ""
        lines.append(f"{r['n']} | {r['status']} | {bpb} | {r.get('description', '')}{why}")
    return "\n".join(lines)


def recent_diffs(history):
    rows = [r for r in history if r.get("diff") and r.get("status") in ("discard", "crash", "rejected")][-RECENT_DIFFS:]
    parts = []
    for r in rows:
        diff = r["diff"] if len(r["diff"]) <= DIFF_CHARS else r["diff"][:DIFF_CHARS] + "\n[... truncated]"
        parts.append(f"### experiment {r['n']} ({r['status']}): {r.get('description', '')}\n```diff\n{diff}```")
    return "\n\n".join(parts) or "(none)"


def running_now(in_flight):
    parts = []
    for r in in_flight:
        diff = r["diff"] if len(r["diff"]) <= DIFF_CHARS else r["diff"][:DIFF_CHARS] + "\n[... truncated]"
        parts.append(f"### {r['description']}\n```diff\n{diff}```" if diff.strip() else f"### {r['description']}")
    return "\n\n".join(parts)


def parent_section(ctx):
    """The heading of the canvas shown: the best, or (--strategy tree) another canvas of the frontier."""
    p = ctx.parent
    if not p or p["is_best"]:
        return f"## The current {ctx.canvas} (the best version so far)"
    tried = "\n".join(f"- {t['n']} ({t['status']}, {t['val_bpb']:.6f}): {t['description']}" if t["val_bpb"] is not None
                      else f"- {t['n']} ({t['status']}): {t['description']}" for t in p["tried"]) or "- nothing yet"
    return (f"## The {ctx.canvas} you edit: experiment {p['n']}'s (val_bpb {p['val_bpb']:.6f}), not the best\n"
            "The search keeps a few good canvases alive and now explores this one. Tried from it so far:\n"
            f"{tried}\n\nIts text:")


def user_prompt(ctx):
    best = f"{ctx.best:.6f}" if ctx.best is not None else "not measured yet"
    p = ctx.profile
    running = (f"## Running now on other workers, from this same canvas (propose something different)\n"
               f"{running_now(ctx.in_flight)}\n\n" if ctx.in_flight else "")
    noise = (f" Run-to-run noise of an unchanged canvas: {ctx.noise:.6f} (standard deviation); smaller differences "
             "are not evidence." if ctx.noise else "")
    return f"""Backend: {ctx.backend}. Profile: {p.name} ({p.time_budget:g} s of training per experiment, sequence \
length {p.max_seq_len}). Lower val_bpb is better. Best val_bpb so far: {best}.{noise}

## Results so far
{history_table(ctx.history)}

## Recent changes that did not help (already reverted; do not repeat them)
{recent_diffs(ctx.history)}

{running}{parent_section(ctx)}
```python
{ctx.text}```

Propose one change to {ctx.canvas} that you expect to lower val_bpb."""


def retry_prompt(error, canvas):
    return (f"Your reply could not be applied: {error}\n\n"
            + FORMAT_HELP.format(canvas=canvas))


def fix_prompt(ctx, description, feedback):
    return f"""Your change "{description}" made training fail:

{feedback}

Here is {ctx.canvas} with your change applied:
```python
{ctx.text}```

Reply with SEARCH/REPLACE blocks that fix the failure while keeping the idea of the change. Keep the \
description line (you may refine it)."""


def command_prompt(ctx):
    return f"""{ctx.program.strip()}

{user_prompt(ctx)}

Edit {ctx.canvas} in place (it is in the current directory's repository); change no other file and do not run \
git commands or training yourself. When done, print one final line: DESCRIPTION: <one line saying what you changed>."""
