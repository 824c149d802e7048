"""Where a backend's seconds outside training go: one short run of its canvas (bench/gpu.py's child) under py-spy,
the main thread sampled with its waits included (a wait for the GPU or for a lock is time too), and the samples
summed by what main() was doing at the time.

    python bench/profile_startup.py --backend cuda [--budget 10] [--profile h100] [--rate 100] [--out DIR]

Prints, and writes to DIR/startup.md: the run's own summary lines (startup, untimed, eval and training seconds),
then one row per phase (before main(): the interpreter and the imports; then each function that main() called,
in the order of main()'s lines) with its seconds and the functions inside it that took the most of them (not the
wrappers that every sample of the phase passes through). The raw samples (py-spy's collapsed stacks) are kept
as DIR/samples.txt. Needs py-spy (`pip install py-spy`, in the dev extras).
"""

import argparse
import collections
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
FRAME = re.compile(r"^(?P<function>.+?) \((?P<file>[^():]+?)(?::(?P<line>\d+))?\)$")


def frames(stack):
    """py-spy's 'f (file:line);g (file:line)' as [(function, file, line), ...], the outermost first."""
    out = []
    for text in stack.split(";"):
        m = FRAME.match(text.strip())
        out.append((m["function"], m["file"], int(m["line"] or 0)) if m else (text.strip(), "", 0))
    return out


def main_thread(lines):
    """[(frames, samples)] of the process's main thread, from py-spy's raw output with --threads (a line is
    'thread (ID): NAME;frames COUNT'; the main thread's first samples, before it is named, lack ': NAME')."""
    parsed = []
    for line in lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        head, _, rest = stack.partition(";")
        if head.startswith("thread (") and count.isdigit():
            parsed.append((head[len("thread ("):].partition(")")[0], head, rest, int(count)))
    named = [ident for ident, head, _, _ in parsed if head.endswith(": MainThread")]
    main_id = named[0] if named else (parsed[0][0] if parsed else None)
    return [(frames(rest) if rest else [], count) for ident, _, rest, count in parsed if ident == main_id]


def phases(samples, rate, entry=("main", "train.py"), top=4, wrapper_share=0.95):
    """[(phase, seconds, [(function, seconds), ...])]: 'before main()', then what `entry` called, in the order
    of main()'s lines (py-spy's samples carry no time order). Inside a phase, the functions that took most of its
    time, leaving out those in nearly all of its samples (the wrappers every call passes through)."""
    first_line, total, inside = {}, collections.Counter(), collections.defaultdict(collections.Counter)
    for stack, count in samples:
        at = next((i for i, (f, file, _) in enumerate(stack) if f == entry[0] and file.endswith(entry[1])), None)
        if at is None:
            phase, line, below = "before main(): interpreter, imports", -1, stack
        elif at + 1 < len(stack):
            phase, line, below = stack[at + 1][0], stack[at][2], stack[at + 2:]
        else:
            phase, line, below = "main() itself", float("inf"), []
        first_line[phase] = min(first_line.get(phase, line), line)
        total[phase] += count
        for function in {f"{f} ({Path(file).name})" for f, file, _ in below}:
            inside[phase][function] += count
    rows = []
    for phase in sorted(total, key=first_line.get):
        ranked = sorted(inside[phase].items(), key=lambda item: (-item[1], item[0]))
        heavy = [(f, n / rate) for f, n in ranked if n < wrapper_share * total[phase]]
        rows.append((phase, total[phase] / rate, heavy[:top]))
    return rows


def py_spy():
    """py-spy's executable, on PATH or beside this interpreter (a virtual environment's bin/), or None."""
    beside = Path(sys.executable).with_name("py-spy")
    return shutil.which("py-spy") or (str(beside) if beside.exists() else None)


def run(args, out):
    if not py_spy():
        raise SystemExit("py-spy is not installed: `pip install py-spy` (it is in the dev extras), then run again.")
    from anchor import allow_bytecode
    from gpu import child_command
    if note := allow_bytecode():
        print(note)
    samples, log = out / "samples.txt", out / f"{args.backend}.log"
    command = [py_spy(), "record", "--format", "raw", "--idle", "--threads", "--rate", str(args.rate),
               "--output", str(samples), "--"] + child_command(args.backend, args.profile, args.budget)
    with open(log, "w") as f:
        proc = subprocess.run(command, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
    text = log.read_text(errors="replace")
    if proc.returncode != 0 or not samples.exists():
        raise SystemExit(f"the profiled run failed (exit {proc.returncode}); its log is {log}:\n{text[-2000:]}")
    return samples.read_text().splitlines(), text


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="cuda", choices=["cuda", "jax", "mlx"])
    parser.add_argument("--profile", default="h100")
    parser.add_argument("--budget", type=float, default=10, help="training seconds of the profiled run")
    parser.add_argument("--rate", type=int, default=100, help="py-spy's samples per second")
    parser.add_argument("--out", default=str(REPO / "runs" / "startup"), help="samples, the run's log, startup.md")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines, log = run(args, out)
    summary = [line for line in log.splitlines()
               if re.match(r"(startup|untimed|eval|training|total)_seconds:", line)]
    report = [f"# {args.backend}, profile {args.profile}, budget {args.budget:g} s: the main thread's time by phase",
              "", *[f"    {line}" for line in summary], "", "| phase | s | the most of it |", "|---|---:|---|"]
    for phase, seconds, heavy in phases(main_thread(lines), args.rate):
        if seconds < 0.05:
            continue
        report.append(f"| {phase} | {seconds:.1f} | {'; '.join(f'{f} {s:.1f}' for f, s in heavy)} |")
    (out / "startup.md").write_text("\n".join(report) + "\n")
    print("\n".join(report))


if __name__ == "__main__":
    main()
