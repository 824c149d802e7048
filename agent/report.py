"""The morning report: progress.png (every experiment, kept ones labelled, the running best) and report.md."""

import os
import statistics
from datetime import datetime

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from agent.results import noise_figure  # noqa: E402
from common.errors import ContractError  # noqa: E402


def gains(rows):
    """[(gain, row)] for kept experiments: how much each lowered the best val_bpb at the time."""
    out, best = [], None
    for r in rows:
        if r["status"] == "keep":
            if best is not None and r.get("kind") == "experiment":
                out.append((best - r["val_bpb"], r))
            best = r["val_bpb"]
    return out


def plot(rows, noise_rows, path, title):
    done = [r for r in rows if r["status"] in ("keep", "discard", "crash", "rejected")]
    measured = [r for r in done if r.get("val_bpb") is not None]
    baseline = measured[0]["val_bpb"]
    best_val = min(r["val_bpb"] for r in measured)
    span = max(baseline - best_val, 0.002 * baseline)
    lo = best_val - 0.25 * span
    top = min(max(r["val_bpb"] for r in measured), baseline + 1.5 * span)  # far-off points become markers
    hi = top + 0.12 * (top - lo)

    fig, ax = plt.subplots(figsize=(12, 6.5), dpi=120)
    noise = [r["val_bpb"] for r in noise_rows if r.get("val_bpb") is not None]
    if len(noise) > 1:
        m, sd = statistics.fmean(noise), statistics.stdev(noise)
        ax.axhspan(m - 2 * sd, m + 2 * sd, color="tab:blue", alpha=0.08,
                   label=f"baseline noise (±2 sd, {len(noise)} runs)")
    disc = [r for r in measured if r["status"] == "discard"]
    ax.scatter([r["n"] for r in disc], [min(r["val_bpb"], hi) for r in disc], s=22, color="0.65", zorder=2,
               label=f"discarded ({len(disc)})")
    keep = [r for r in measured if r["status"] == "keep"]
    ax.scatter([r["n"] for r in keep], [r["val_bpb"] for r in keep], s=60, color="tab:green", edgecolor="black",
               linewidth=0.6, zorder=4, label=f"kept ({len(keep) - 1}) and baseline")
    for r in keep:
        label = "baseline" if r.get("kind") == "baseline" else r["description"]
        label = label if len(label) <= 42 else label[:40] + "…"
        ax.annotate(label, (r["n"], r["val_bpb"]), xytext=(6, 8), textcoords="offset points", fontsize=8,
                    rotation=20, color="darkgreen", zorder=5)
    over = [r for r in disc if r["val_bpb"] > hi]
    if over:
        ax.scatter([r["n"] for r in over], [hi] * len(over), marker="^", s=40, color="0.4", zorder=3,
                   label=f"off the chart ({len(over)})")
    crashes = [r for r in done if r["status"] == "crash"]
    if crashes:
        y = hi - 0.04 * (hi - lo)
        ax.scatter([r["n"] for r in crashes], [y] * len(crashes), marker="x", s=55, color="tab:red", zorder=3,
                   linewidth=2, label=f"crashed ({len(crashes)})")
    rejected = [r for r in done if r["status"] == "rejected"]
    if rejected:
        y = hi - 0.08 * (hi - lo)
        ax.scatter([r["n"] for r in rejected], [y] * len(rejected), marker="s", s=40, color="tab:purple", zorder=3,
                   label=f"rejected: score not trusted ({len(rejected)})")
    xs, ys, best = [], [], None
    for r in done:
        if r["status"] == "keep":
            best = r["val_bpb"]
        if best is not None:
            xs.append(r["n"])
            ys.append(best)
    ax.step(xs, ys, where="post", color="tab:green", linewidth=1.8, zorder=3, label="best so far")
    slots = sorted({r["slot"] for r in done if r.get("slot")})
    if len(slots) > 1:  # which worker ran each experiment: a strip of coloured ticks along the bottom
        y = lo + 0.03 * (hi - lo)
        for i, slot in enumerate(slots):
            ran = [r["n"] for r in done if r.get("slot") == slot]
            ax.scatter(ran, [y] * len(ran), marker="|", s=120, color=plt.cm.tab10(i % 10), zorder=3,
                       label=f"ran on {'GPU ' if slot.isdigit() else ''}{slot}")
    ax.set_ylim(lo, hi)
    ax.set_xlim(-0.5, max(r["n"] for r in done) + 1.5)
    ax.set_xlabel("experiment")
    ax.set_ylabel("val_bpb (lower is better)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8, framealpha=0.9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def markdown(rows, noise_rows, title):
    done = [r for r in rows if r["status"] in ("keep", "discard", "crash", "rejected")]
    exps = [r for r in done if r.get("kind") == "experiment"]
    invalid = [r for r in rows if r["status"] == "invalid"]
    base = done[0]
    best = min((r for r in done if r["status"] == "keep"), key=lambda r: r["val_bpb"])
    count = {s: sum(1 for r in exps if r["status"] == s) for s in ("keep", "discard", "crash", "rejected")}
    minutes = statistics.fmean(r["total_seconds"] for r in done) / 60 if done else 0.0
    tin = sum(r.get("tokens_in") or 0 for r in rows)
    tout = sum(r.get("tokens_out") or 0 for r in rows)
    costs = [r["cost_usd"] for r in rows if r.get("cost_usd") is not None]
    proposers = sorted({r["proposer"] for r in rows if r.get("proposer")})
    cost = f"${sum(costs):.2f}" if costs else ("$0 (no LLM)" if not tin else "unknown (no price for the model)")
    confirm = max((len(r.get("val_bpb_runs") or []) for r in done), default=1) - 1
    delta = base["val_bpb"] - best["val_bpb"]
    lines = [
        f"# {title}", "",
        f"Backend **{base.get('backend')}**, profile **{base.get('profile')}**, "
        f"proposer {', '.join(proposers) or '-'}, "
        f"from {base.get('finished_at', '?')} to {rows[-1].get('finished_at', '?')}.", "",
        "| | |", "|---|---|",
        f"| baseline val_bpb | {base['val_bpb']:.6f} |",
        f"| best val_bpb | {best['val_bpb']:.6f} (experiment {best['n']}, commit {best['commit'][:7]}) |",
        f"| total improvement | {delta:.6f} ({100 * delta / base['val_bpb']:.2f} %) |",
        f"| experiments | {len(exps)}: kept {count['keep']}, discarded {count['discard']}, crashed {count['crash']}"
        + (f", rejected {count['rejected']}" if count["rejected"] else "")
        + (f"; {len(invalid)} proposals could not be applied" if invalid else "") + " |",
        f"| keep rate | {100 * count['keep'] / len(exps):.0f} % |" if exps else "| keep rate | - |",
        f"| crashes | {count['crash']} |",
        f"| minutes per experiment | {minutes:.2f} ({60 / minutes:.1f} per hour) |" if minutes
        else "| minutes per experiment | - |",
        f"| LLM tokens | {tin} in, {tout} out |",
        f"| LLM cost | {cost} |",
        f"| confirmation reruns | {confirm} per candidate gain |",
    ]
    sd, runs, source = noise_figure(rows, noise_rows)
    if sd is not None:
        lines.append(f"| baseline noise | std {sd:.6f} over {runs} runs ({source}); gains below {2 * sd:.6f} are "
                     "within 2 sd and were re-run before they were kept |")
    else:
        lines.append("| baseline noise | not measured (--baseline-runs K, or python -m agent noise --runs K) |")
    lines += ["", "![progress](progress.png)", "", "## Kept changes, ranked by gain", ""]
    ranked = sorted(gains(rows), key=lambda g: -g[0])
    if ranked:
        lines += ["| rank | experiment | commit | gain | gain / noise sd | val_bpb | change |",
                  "|---:|---:|---|---:|---:|---:|---|"]
        for i, (g, r) in enumerate(ranked, 1):
            vs = f"{g / sd:.1f}" if sd else "-"
            lines.append(f"| {i} | {r['n']} | {r['commit'][:7]} | {g:.6f} | {vs} | {r['val_bpb']:.6f} | "
                         f"{_cell(r['description'])} |")
    else:
        lines.append("No change beat the baseline.")
    lines += workers(rows)
    number = {r["commit"]: r["n"] for r in rows if r.get("commit")}  # the row that measured each commit
    lines += ["", "## Every experiment", "",
              "From: the experiment whose canvas it edited (the best at the time, or under --strategy tree "
              "another canvas of the frontier).", "",
              "| n | from | status | val_bpb | memory GB | minutes | worker | change |",
              "|---:|---:|---|---:|---:|---:|---|---|"]
    for r in done:
        bpb = f"{r['val_bpb']:.6f}" if r.get("val_bpb") is not None else "-"
        mem = f"{r['memory_gb']:.1f}" if r.get("memory_gb") is not None else "-"
        parent = number.get(r.get("parent"), "-")
        lines.append(f"| {r['n']} | {parent} | {r['status']} | {bpb} | {mem} | {r['total_seconds'] / 60:.2f} | "
                     f"{r.get('slot') or '-'} | {_cell(r['description'])} |")
    return "\n".join(lines) + "\n"


def workers(rows):
    """Experiments per hour in all and per worker, and each worker's idle time, over the span in which the
    workers ran (the first experiment's start to the last one's end). Empty for a one-worker run."""
    ran = [r for r in rows if r.get("slot") and r.get("started_at") and r.get("finished_at")]
    if len({r["slot"] for r in ran}) < 2:
        return []
    when = lambda t: datetime.fromisoformat(t).timestamp()  # noqa: E731
    start, end = min(when(r["started_at"]) for r in ran), max(when(r["finished_at"]) for r in ran)
    hours = max(end - start, 1.0) / 3600
    lines = ["", "## Workers", "", f"{len(ran)} experiments in {hours * 60:.1f} minutes: "
             f"**{len(ran) / hours:.1f} per hour** in all.", "",
             "| worker | experiments | per hour | busy minutes | idle minutes |", "|---|---:|---:|---:|---:|"]
    for slot in sorted({r["slot"] for r in ran}):
        mine = [r for r in ran if r["slot"] == slot]
        busy = sum(when(r["finished_at"]) - when(r["started_at"]) for r in mine)
        name = f"GPU {slot}" if slot.isdigit() else slot
        lines.append(f"| {name} | {len(mine)} | {len(mine) / hours:.1f} | {busy / 60:.1f} | "
                     f"{max(hours * 3600 - busy, 0.0) / 60:.1f} |")
    return lines


def _cell(text):
    return " ".join(str(text).split()).replace("|", "\\|")


def write_report(folder):
    rows = folder.rows()
    if not any(r["status"] == "keep" for r in rows):
        raise ContractError(f"{folder.jsonl} has no finished baseline yet, so there is nothing to report. Run the "
                            "agent first (python -m agent --max-experiments N).")
    noise_rows = folder.noise_rows()
    base = rows[0]
    tag = base.get("tag") or os.path.basename(folder.path)
    title = f"autoresearch {tag}: {base.get('backend')} / {base.get('profile')}"
    png = os.path.join(folder.path, "progress.png")
    md = os.path.join(folder.path, "report.md")
    plot(rows, noise_rows, png, title)
    with open(md, "w") as f:
        f.write(markdown(rows, noise_rows, title))
    return png, md
