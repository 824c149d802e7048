"""Profile a few optimizer steps of a real training run, any trainer's, upstream's train.py included (issue 11).

    python bench/profile_run.py [--skip 30] [--steps 5] [--json out.json] SCRIPT [ARGS...]

Runs SCRIPT as __main__ in this process (its folder first on sys.path, as `python SCRIPT` would) with one
global optimizer-step hook (torch.optim's register_optimizer_step_post_hook: any torch.optim.Optimizer, ours and
upstream's MuonAdamW alike). The hook times the wall clock between optimizer steps and drives a torch.profiler
over steps skip+2 .. skip+1+steps, so nothing in the trainer changes: its data loader, its loop and its
synchronisation are profiled as they run. The report (at the end of the profiled steps; the run then goes on)
gives the GPU kernels' time per step by the categories of bench/profile_step.py, the top kernels, and

    wall = median time between optimizer steps over the 10 steps before the profiler started;
    busy = wall x the share of the profiled span in which a kernel ran (the kernels of a pipelined loop do not
           line up with the profiler's step boundaries, so the span is measured, not counted in steps);
    idle = wall - busy: time the GPU had nothing to run (host work, synchronisation, the loader).

At the end it prints the wall clock between the optimizer steps of steps 11 onwards (the timed ones, upstream's
and ours): set against the trainer's own training_seconds it shows whether the trainer's clock counts all of its
loop (--steps 0 leaves the profiler out of that figure).

Where profile_step.py times the model's step alone on random tokens, this shows what the whole loop costs.
"""

import argparse
import json
import os
import runpy
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.profiler import ProfilerActivity, profile, schedule

sys.path.insert(0, str(Path(__file__).resolve().parent))
from profile_step import CATEGORIES, OTHER, category, op_times  # noqa: E402

UNTIMED = 11  # steps 0-10 are untimed, upstream's and ours


def busy_fraction(prof):
    """The GPU's kernels' summed time over the span from the first kernel's start to the last one's end (one
    stream): the share of the profiled time the GPU had work. A pipelined trainer's kernels do not line up with
    the profiler's step boundaries, so the window's own length is the denominator, not a step count."""
    from torch.autograd import DeviceType
    # The GPU timeline also carries the user annotations (ProfilerStep#, the compiled graphs' ranges), which
    # span many kernels each: left out, as in profile_step.op_times.
    kernels = [e.time_range for e in prof.events()
               if e.device_type == DeviceType.CUDA and not getattr(e, "is_user_annotation", False)
               and not e.name.startswith("ProfilerStep")]
    if not kernels:
        return None
    span = max(r.end for r in kernels) - min(r.start for r in kernels)
    return sum(r.end - r.start for r in kernels) / span if span > 0 else None


def report(prof, steps, wall_ms, top, json_path):
    on_gpu = torch.cuda.is_available()
    rows = sorted(op_times(prof, on_gpu), key=lambda r: -r[1])
    total = sum(us for _, us, _ in rows)
    fraction = busy_fraction(prof) if on_gpu else None
    busy = wall_ms * fraction if fraction else total / 1000 / steps
    per_category = {cat: 0.0 for cat, _ in CATEGORIES} | {OTHER: 0.0}
    for name, us, _ in rows:  # each category's share of the busy time
        per_category[category(name)] += busy * us / total
    what = "GPU kernels" if on_gpu else "CPU operators (self time)"
    lines = [f"\n[profile_run] {len(rows)} kinds of {what}, {steps} steps profiled | wall {wall_ms:.1f} ms/step "
             f"(unprofiled) | busy {busy:.1f} ms/step"
             + (f" ({100 * fraction:.1f} % of the profiled span)" if fraction else "")
             + f" | idle {wall_ms - busy:.1f} ms/step"]
    lines += [f"[profile_run]   {cat:18s} {ms:8.2f} ms/step" for cat, ms in per_category.items()]
    lines += [f"[profile_run]   top: {busy * us / total:7.2f} ms/step {100 * us / total:5.1f} %  {category(name):18s} "
              f"{name[:90]}" for name, us, _ in rows[:top]]
    print("\n".join(lines), flush=True)
    if json_path:
        Path(json_path).write_text(json.dumps(dict(
            script=sys.argv[0], device=torch.cuda.get_device_name() if on_gpu else "cpu", torch=torch.__version__,
            steps=steps, wall_ms=wall_ms, busy_fraction=fraction, busy_ms=busy, idle_ms=wall_ms - busy,
            categories=per_category, top=[dict(name=n, ms=busy * us / total, share=us / total) for n, us, _ in rows[:top]]),
            indent=2) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip", type=int, default=30, help="optimizer steps before profiling (compilation, warm-up)")
    parser.add_argument("--steps", type=int, default=5, help="optimizer steps profiled (0: none, only the wall clock)")
    parser.add_argument("--top", type=int, default=25, help="how many kernels to list")
    parser.add_argument("--json", help="write the numbers here")
    parser.add_argument("script", help="the training script, run as __main__")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="its arguments")
    args = parser.parse_args()
    if args.skip < 11:
        sys.exit("--skip must be at least 11: the wall time is taken over the 10 steps before profiling starts")

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    stamps = []
    prof = None
    if args.steps:
        prof = profile(activities=activities, schedule=schedule(wait=args.skip, warmup=1, active=args.steps, repeat=1),
                       on_trace_ready=lambda p: report(p, args.steps, wall_ms(), args.top, args.json))

    def wall_ms():
        before = stamps[args.skip - 10:args.skip + 1]
        return statistics.median(b - a for a, b in zip(before, before[1:])) * 1000

    def on_step(optimizer, *_):
        stamps.append(time.perf_counter())
        if prof:
            prof.step()

    register_optimizer_step_post_hook(on_step)
    script = str(Path(args.script).resolve())
    sys.argv = [script, *args.args]
    sys.path.insert(0, os.path.dirname(script))
    if prof:
        prof.start()
    try:
        runpy.run_path(script, run_name="__main__")
    finally:
        if prof and len(stamps) < args.skip + 1 + args.steps:
            print(f"[profile_run] the run took {len(stamps)} optimizer steps, fewer than --skip + 1 + --steps "
                  f"({args.skip + 1 + args.steps}): nothing profiled. Lengthen the run or lower --skip.", flush=True)
        if len(stamps) > UNTIMED + 1:
            # Against the trainer's own training_seconds: does its clock count all of the loop's time?
            wall = stamps[-1] - stamps[UNTIMED - 1]
            print(f"[profile_run] {len(stamps)} optimizer steps; steps {UNTIMED}-{len(stamps) - 1} took {wall:.2f} s "
                  f"of wall clock between optimizer steps ({1000 * wall / (len(stamps) - UNTIMED):.1f} ms per step"
                  f"{', profiled steps included' if prof else ''})", flush=True)


if __name__ == "__main__":
    main()
