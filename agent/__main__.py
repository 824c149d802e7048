"""python -m agent [run] | noise | report: the overnight loop, the baseline's noise, the morning report."""

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta

from common.errors import ContractError, run_cli

COMMANDS = ("run", "noise", "report")


def today_tag():
    return datetime.now().strftime("%b%d").lower()


def parse_deadline(text):
    """Epoch seconds from '07:00' (the next such time), '2026-11-27T07:00' or a duration ('8h', '90m', '1h30m')."""
    if text is None:
        return None
    text = text.strip()
    m = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text)
    if m and any(m.groups()):
        h, mi, s = (int(g or 0) for g in m.groups())
        return time.time() + 3600 * h + 60 * mi + s
    now = datetime.now()
    try:
        if re.fullmatch(r"\d{1,2}:\d{2}", text):
            t = datetime.strptime(text, "%H:%M").time()
            when = datetime.combine(now.date(), t)
            return (when if when > now else when + timedelta(days=1)).timestamp()
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise ContractError(f"--deadline '{text}' is not a time. Give a clock time ('07:00', the next one), a date "
                            "and time ('2026-11-27T07:00') or a duration ('8h', '90m', '1h30m').") from None


def latest_tag(root, runs_dir):
    folder = os.path.join(root, runs_dir)
    runs = [d for d in os.listdir(folder) if os.path.exists(os.path.join(folder, d, "results.jsonl"))] \
        if os.path.isdir(folder) else []
    return max(runs, key=lambda d: os.path.getmtime(os.path.join(folder, d, "results.jsonl")), default=None)


def resolve_tag(args):
    if args.tag:
        if not re.fullmatch(r"[A-Za-z0-9._-]+", args.tag):
            raise ContractError(f"--tag '{args.tag}' may hold only letters, digits, '.', '_' and '-'.")
        return args.tag
    root = args.repo or os.getcwd()
    if args.cmd == "run" and args.resume:
        branch = subprocess.run(["git", "rev-parse", "--abbrev-ref", "HEAD"], cwd=root, capture_output=True,
                                text=True).stdout.strip()
        if branch.startswith("autoresearch/"):
            return branch.split("/", 1)[1]
        return latest_tag(root, args.runs_dir) or today_tag()
    if args.cmd == "report":
        return latest_tag(root, args.runs_dir) or today_tag()
    return today_tag()


def parser():
    from common.platform import PROFILES
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--backend", default=os.environ.get("BACKEND") or None,
                        help="the backend whose backends/<name>/train.py is the canvas (default: from the hardware)")
    common.add_argument("--profile", help=f"platform profile: {', '.join(sorted(PROFILES))} (default: from the hardware)")
    common.add_argument("--budget", default=os.environ.get("AUTORESEARCH_BUDGET"),
                        help="training seconds per run, replacing the profile's; recorded in the profile's name "
                        "(h100@60s), so results at different budgets never mix")
    common.add_argument("--tag", help="names the branch autoresearch/<tag> and runs/<tag>/ "
                        "(default: today, e.g. nov26)")
    common.add_argument("--repo", help="the project's git repository (default: the current directory)")
    common.add_argument("--runs-dir", default="runs", help="folder for run results, inside the repo, git-ignored")
    common.add_argument("--data", help="a local folder of data shards (sets AUTORESEARCH_DATA)")
    common.add_argument("--timeout", type=float, help="hard limit per training run in seconds "
                        "(default: 2 x the profile's budget + --startup-allowance)")
    common.add_argument("--startup-allowance", type=float, default=120.0,
                        help="seconds added to 2 x budget for start-up, compilation and evaluation")

    p = argparse.ArgumentParser(prog="python -m agent", description=__doc__)
    sub = p.add_subparsers(dest="cmd")
    run = sub.add_parser("run", parents=[common], help="the experiment loop (the default command)")
    run.add_argument("--proposer", default="auto", choices=("auto", "offline", "anthropic", "openai", "command"),
                     help="auto: anthropic or openai when its key is set, else offline")
    run.add_argument("--max-experiments", type=int,
                     help="stop after this many experiments in all, resumes included (the baseline not counted)")
    run.add_argument("--deadline",
                     help="start no experiment that would end after this: '07:00', an ISO time, or '8h'")
    run.add_argument("--resume", action="store_true", help="continue the branch and logs of an earlier run")
    run.add_argument("--confirm", type=int, default=0,
                     help="re-run a candidate improvement K more times; keep it on the mean")
    run.add_argument("--baseline-runs", type=int,
                     help="train the unchanged baseline K times at the start; their spread is the noise figure "
                     "that decides which gains are re-run before they are kept (default: 2 on GPU profiles, 1 on "
                     "cpu and smoke; `python -m agent noise` results take precedence)")
    run.add_argument("--fix-attempts", type=int, default=2, help="times a crash goes back to the proposer for a fix")
    run.add_argument("--seed", type=int, default=0, help="the offline search's seed")
    run.add_argument("--search", choices=("coordinate", "optuna"), default="coordinate",
                     help="the offline proposer's search: coordinate (one constant at a time, deterministic) or "
                     "optuna (TPE over the constants' ranges, learning from every result; see README)")
    run.add_argument("--strategy", choices=("greedy", "tree"), default="greedy",
                     help="greedy: every experiment edits the best canvas; tree: a frontier of the best distinct "
                     "canvases, the parent picked by a UCB rule (see README)")
    run.add_argument("--gpus", default=os.environ.get("GPUS") or None,
                     help="run one experiment on each of these GPUs at once: '0,1' or 'all' (see README)")
    run.add_argument("--workers", type=int, default=1,
                     help="without --gpus: this many experiments at once on the CPU (smoke-size runs); with "
                     "--cluster ray on a cluster without GPUs: this many tasks at once")
    run.add_argument("--cluster", choices=("local", "ray"), default="local",
                     help="local: subprocesses on this host; ray: one Ray task per experiment, on any node")
    run.add_argument("--ray-address", default="auto", help="for --cluster ray: auto (on a node of the cluster) "
                     "or ray://HEAD:10001")
    run.add_argument("--model", help="LLM model name (default: $ANTHROPIC_MODEL / $OPENAI_MODEL or a current model)")
    run.add_argument("--base-url", help="API base URL: any OpenAI-compatible server, e.g. http://localhost:8000/v1")
    run.add_argument("--price", help="LLM price as 'IN,OUT' USD per million tokens, for the cost column")
    run.add_argument("--retries", type=int, default=3, help="times a malformed or unappliable reply is sent back")
    run.add_argument("--api-backoff", type=float, default=10.0, help="first wait in seconds after an API failure")
    run.add_argument("--command", help="for --proposer command: the coding agent CLI, e.g. 'claude -p'")
    run.add_argument("--command-timeout", type=float, default=1800.0, help="seconds the coding agent may take")
    noise = sub.add_parser("noise", parents=[common], help="train the unchanged canvas K times: the run-to-run spread")
    noise.add_argument("--runs", type=int, default=5)
    report = sub.add_parser("report", parents=[common], help="write progress.png and report.md for a run")
    del report  # only the common options
    return p


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help")):
        argv.insert(0, "run")
    args = parser().parse_args(argv)
    args.tag = resolve_tag(args)

    if args.cmd == "report":
        from agent.git import Git
        from agent.report import write_report
        from agent.results import RunFolder
        root = Git.toplevel(args.repo or os.getcwd())
        folder = RunFolder(os.path.join(root, args.runs_dir, args.tag))
        if not folder.exists():
            raise ContractError(f"There are no results at {folder.jsonl}. Name the run with --tag (the folders are in "
                                f"{os.path.join(root, args.runs_dir)}).")
        png, md = write_report(folder)
        print(f"wrote {png}\nwrote {md}")
        return 0

    if not args.backend or args.backend == "auto":
        from common.platform import auto_backend
        args.backend = auto_backend()
    if args.timeout is not None and args.timeout <= 0:
        raise ContractError("--timeout must be a positive number of seconds.")
    if args.cmd == "noise":
        if args.runs < 1:
            raise ContractError("--runs must be at least 1 (5 or more give a useful spread).")
        from agent.loop import noise
        noise(args)
        return 0
    for name in ("max_experiments", "confirm", "fix_attempts", "retries"):
        if getattr(args, name) is not None and getattr(args, name) < 0:
            raise ContractError(f"--{name.replace('_', '-')} must not be negative.")
    if args.baseline_runs is not None and args.baseline_runs < 1:
        raise ContractError("--baseline-runs must be at least 1 (2 or more give a noise figure).")
    args.deadline = parse_deadline(args.deadline)
    from agent.loop import run
    run(args)
    return 0


def _sigterm(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _sigterm)  # kill, systemd, CI: stop as cleanly as Ctrl-C
    sys.exit(run_cli(main))
