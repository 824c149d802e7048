"""make bench-gpu BACKEND=cuda|jax: train the baseline on a GPU and print a table of what it cost.

    python bench/gpu.py --backend cuda [--profile h100] [--budget 60] [--repeat 2] [--log-dir DIR]
    python bench/gpu.py --backend cuda --budget 0 --repeat 1     # the full 300-s baseline

Each run is a fresh process that loads backends/<backend>/train.py and calls its main(profile) with the
profile's time budget replaced by --budget (--budget 0: the profile's own, 300 s on h100). The data comes from
AUTORESEARCH_DATA / AUTORESEARCH_CACHE as for `make run`. A second run of the same config shows start-up with
a warm compilation cache.

Columns: tokens trained (timed and untimed steps); tokens/s and MFU over the timed steps; peak GPU memory;
start-up = process start to the first timed step (imports, data, model, compilation: wall - training - eval);
eval = evaluate_bpb; total - training = wall - training (bench-anchor's column); val_bpb. A backend's
trainer must have main(profile=None) and print the common summary block and, before it, an
`eval_seconds: X` line.
"""

import argparse
import datetime
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))


def child(backend, profile_name, budget):
    from common.errors import run_cli
    from common.platform import get_profile
    profile = get_profile(profile_name, budget or None)    # the budget goes into the name: h100@60s
    # The loader's budget guard reads the profile from the environment, as the agent fixes it for a run.
    os.environ.update(AUTORESEARCH_PROFILE=profile.name, AUTORESEARCH_BUDGET=f"{profile.time_budget:g}")
    from anchor import load_canvas
    run_cli(load_canvas(REPO / "backends" / backend / "train.py", backend).main, profile)


def child_command(backend, profile, budget):
    """The command of one run: a fresh process that runs the backend's canvas (bench/profile_startup.py too)."""
    return [sys.executable, str(Path(__file__).resolve()), "--child", "--backend", backend, "--profile", profile,
            "--budget", str(budget)]


def run_once(args, index):
    cmd = child_command(args.backend, args.profile, args.budget)
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if args.verbose:
            print(line, end="", flush=True)
    proc.wait()
    wall = time.time() - t0
    text = "".join(lines)
    if args.log_dir:
        Path(args.log_dir).mkdir(parents=True, exist_ok=True)
        (Path(args.log_dir) / f"{args.backend}_{args.profile}_{args.budget or 'full'}s_run{index}.log").write_text(text)
    from common.summary import parse_summary
    if proc.returncode != 0:
        print(text[-4000:])
        return dict(run=index, error=f"exit {proc.returncode}")
    s = parse_summary(text)
    eval_s = float(m.group(1)) if (m := re.search(r"^eval_seconds:\s*([\d.]+)", text, re.M)) else float("nan")
    return dict(run=index, steps=s["num_steps"], train_s=s["training_seconds"], tokens_m=s["total_tokens_M"],
                tok_s=s["tokens_per_sec"],
                mfu=s["mfu_percent"], peak_gb=s["peak_vram_mb"] / 1024, wall=wall,
                startup=wall - s["training_seconds"] - eval_s, eval=eval_s, overhead=wall - s["training_seconds"],
                val_bpb=s["val_bpb"])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="cuda", choices=["cuda", "jax"])
    parser.add_argument("--profile", default=os.environ.get("AUTORESEARCH_PROFILE") or "h100")
    parser.add_argument("--budget", type=float, default=60, help="training seconds per run; 0 = the profile's")
    parser.add_argument("--repeat", type=int, default=2, help="runs (the second has a warm compilation cache)")
    parser.add_argument("--log-dir", help="write each run's full log here")
    parser.add_argument("--verbose", action="store_true", help="stream the trainer's output")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.backend, args.profile, args.budget)

    from anchor import allow_bytecode, machine  # the card, its driver and the frameworks' versions
    from common.errors import run_cli
    from common.prepare import prepare
    bytecode = allow_bytecode()
    run_cli(prepare, os.environ.get("AUTORESEARCH_DATA"), if_needed=True)  # as `make run`: a no-op once prepared
    rows = [run_once(args, i + 1) for i in range(args.repeat)]
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"\n{args.backend} backend | profile {args.profile} | budget {args.budget or 'profile'} s | "
          f"{machine()} | {date}{f' | {bytecode}' if bytecode else ''}")
    header = (f"{'run':>3} {'steps':>6} {'train s':>8} {'tokens M':>9} {'tokens/s':>11} {'MFU %':>6} {'peak GB':>8} "
              f"{'start-up s':>10} {'eval s':>7} {'total - training s':>18} {'val_bpb':>9}")
    print(header)
    print("-" * len(header))
    for r in rows:
        if "error" in r:
            print(f"{r['run']:>3} {r['error']}")
            continue
        print(f"{r['run']:>3} {r['steps']:>6} {r['train_s']:>8.1f} {r['tokens_m']:>9.1f} {r['tok_s']:>11,.0f} "
              f"{r['mfu']:>6.1f} {r['peak_gb']:>8.1f} {r['startup']:>10.1f} {r['eval']:>7.1f} {r['overhead']:>18.1f} "
              f"{r['val_bpb']:>9.4f}")
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
