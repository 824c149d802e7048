"""Train once: prepare data and tokenizer if missing, then run a backend's train.py and pass on its exit status.

    python -m common.run [--backend auto|cuda|jax|mlx] [--profile NAME] [--budget SECONDS] [--data FOLDER]
                         [--canvas PATH]

This is what `make run` and the docker images' entrypoint call. --canvas runs another copy of a train.py
(for example one taken from a logged commit) in place of backends/<backend>/train.py.
"""

import argparse
import os
import subprocess
import sys
from pathlib import Path

from common.errors import ContractError, run_cli
from common.platform import PROFILES, auto_backend, get_profile
from common.prepare import prepare

REPO = Path(__file__).resolve().parent.parent
BACKENDS = ("cuda", "jax", "mlx")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default=os.environ.get("BACKEND", "auto"), choices=("auto",) + BACKENDS)
    parser.add_argument("--profile", default=os.environ.get("AUTORESEARCH_PROFILE"),
                        help=f"platform profile: {', '.join(PROFILES)} (default: from the hardware)")
    parser.add_argument("--budget", default=os.environ.get("AUTORESEARCH_BUDGET"),
                        help="training seconds, replacing the profile's (recorded as e.g. h100@60s)")
    parser.add_argument("--data", default=os.environ.get("AUTORESEARCH_DATA"), help="local data folder")
    parser.add_argument("--num-shards", type=int, default=10)
    parser.add_argument("--canvas", help="a train.py to run instead of backends/<backend>/train.py")
    args = parser.parse_args()

    backend = auto_backend() if args.backend == "auto" else args.backend
    canvas = Path(args.canvas) if args.canvas else REPO / "backends" / backend / "train.py"
    if not canvas.is_file():
        raise ContractError(f"No trainer at {canvas}. Name an existing backend with BACKEND= "
                            f"({', '.join(BACKENDS)}), or a train.py file with --canvas.")
    env = dict(os.environ)
    if args.data:
        env["AUTORESEARCH_DATA"] = str(Path(args.data).resolve())
    if args.profile or args.budget:
        env["AUTORESEARCH_PROFILE"] = get_profile(args.profile, args.budget).name  # fails early on a bad name
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    prepare(env.get("AUTORESEARCH_DATA"), args.num_shards, if_needed=True)
    sys.exit(subprocess.call([sys.executable, str(canvas)], env=env))


if __name__ == "__main__":
    run_cli(main)
