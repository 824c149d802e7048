"""Containers: build the images, train once in one, and reproduce a logged result.

    python -m agent.container build     [--image cpu|cuda] [--base-image IMG] [--offline]
    python -m agent.container check-wheelhouse [--folder docker/wheelhouse]
    python -m agent.container run       [--image cpu|cuda] [--backend cuda|jax|mlx] [--profile P] [--data DIR]
    python -m agent.container reproduce --commit SHA [--runs K] [--data DIR]

Everything goes through the docker Python SDK; no shell strings. Training containers get no network, the data
and the cache mounted read-only, and the GPUs only for the cuda image. `reproduce` takes the commit's train.py
and its results.jsonl record, runs that canvas under the record's backend and profile, and judges the
difference against the run's measured noise (python -m agent noise).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from common.data import cache_dir, get_source
from common.errors import ContractError, run_cli
from common.platform import PROFILES, nvidia_gpu_name
from common.summary import parse_summary

REPO = Path(__file__).resolve().parent.parent
IMAGES = {"cpu": "autoresearch:cpu", "cuda": "autoresearch:cuda"}
START_ALLOWANCE = 600    # seconds for start-up, compilation and evaluation on top of 2 x the budget
NOISE_SIGMAS = 3.0       # a reproduction within this many standard deviations of the run-to-run spread agrees


def engine():
    import docker
    try:
        client = docker.from_env()
        client.ping()
        return client
    except docker.errors.DockerException as e:
        raise ContractError(
            f"No Docker engine answers ({e}). Start Docker (or the engine named by DOCKER_HOST), check that this "
            "user may use it (`docker version` must show a Server section), then run the command again.") from None


def build(image="cpu", base_image=None, offline=False, log=print):
    """Build docker/Dockerfile.<image> from the repo root; streams the build output."""
    client = engine()
    args = {"OFFLINE": "1" if offline else "0"}
    if base_image:
        args["BASE_IMAGE"] = base_image
    if offline and not any((REPO / "docker" / "wheelhouse").glob("*.whl")):
        raise ContractError("--offline builds install only from docker/wheelhouse, which is empty. Fill it first on a "
                            f"machine with PyPI: make docker-wheelhouse BACKEND={image}.")
    if offline and image == "cuda":
        check_cuda_wheelhouse()
    log(f"building {IMAGES[image]} from docker/Dockerfile.{image} ({', '.join(f'{k}={v}' for k, v in args.items())})")
    for chunk in client.api.build(path=str(REPO), dockerfile=f"docker/Dockerfile.{image}", tag=IMAGES[image],
                                  buildargs=args, network_mode="host", rm=True, decode=True):
        if "error" in chunk:
            raise ContractError(f"The image build failed: {chunk['error'].strip()}. Read the build output above; "
                                "with no registry reachable, pass a local base image (--base-image) and --offline.")
        text = chunk.get("stream", "").rstrip()
        if text:
            log(text)
    return IMAGES[image]


def check_cuda_wheelhouse(folder=REPO / "docker" / "wheelhouse"):
    """Refuse a wheelhouse without a CUDA build of the pinned torch, for Linux: an OFFLINE=1 cuda image built from
    it would train on the CPU without a word. A +cpu wheel beside the CUDA one is fine: the CPU image shares the
    folder, and requirements-cuda.txt excludes +cpu. Returns the CUDA wheel."""
    requirements = (REPO / "docker" / "requirements-cuda.txt").read_text().splitlines()
    pin = next(line.split("==")[1].split(",")[0].strip() for line in requirements if line.startswith("torch=="))
    wheels = sorted(Path(folder).glob(f"torch-{pin}[-+]*.whl"))
    for wheel in wheels:
        local, platform = wheel.name.split("-")[1].partition("+")[2], wheel.stem.split("-")[-1]
        if "linux" in platform and not local.startswith("cpu"):
            return wheel
    found = "only " + ", ".join(w.name for w in wheels) if wheels else f"no torch {pin} wheel"
    raise ContractError(
        f"{folder} holds {found}: no CUDA build of torch {pin} for Linux, so an OFFLINE=1 cuda image built from it "
        "would train on the CPU. Fetch the CUDA build on a Linux machine with PyPI: make docker-wheelhouse "
        f"BACKEND=cuda (it asks for torch=={pin},!={pin}+cpu, PyPI's Linux wheel, which is built with CUDA), then "
        "make docker-build BACKEND=cuda OFFLINE=1.")


def train_in_container(image="cpu", backend="cuda", profile="smoke", data=None, canvas=None, timeout=None, log=print):
    """One training run in a container: no network, data and cache read-only, killed past the hard timeout
    (2 x the budget + START_ALLOWANCE unless given). Returns (exit code, output)."""
    import docker
    import requests
    gpus = image == "cuda"
    if gpus and not nvidia_gpu_name():
        raise ContractError("The cuda image needs an NVIDIA GPU, and this machine shows none (nvidia-smi finds no "
                            "GPU). Use the CPU image instead: BACKEND=cpu (it trains on the CPU), or run on a GPU "
                            "machine with the NVIDIA container toolkit installed.")
    client = engine()
    tag = IMAGES[image]
    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        raise ContractError(f"There is no image {tag}. Build it first: make docker-build BACKEND={image}.") from None
    cache = cache_dir()
    if not cache.is_dir():
        raise ContractError(f"The data cache {cache} does not exist, so there is nothing to mount. Prepare the data on "
                            "this machine first: make prepare [DATA=folder].")
    volumes = {str(cache): {"bind": "/cache", "mode": "ro"}}
    environment = {"AUTORESEARCH_PROFILE": profile}
    if data:
        data = Path(data).resolve()
        if not data.is_dir():
            raise ContractError(f"The data folder {data} does not exist, so it cannot be mounted into the container. "
                                "Name the folder the result was trained on with DATA=.")
        volumes[str(data)] = {"bind": "/data", "mode": "ro"}
        environment["AUTORESEARCH_DATA"] = "/data"
    command = ["--backend", backend, "--profile", profile]
    if canvas:
        volumes[str(Path(canvas).resolve())] = {"bind": "/canvas/train.py", "mode": "ro"}
        command += ["--canvas", "/canvas/train.py"]
    gpu_request = [docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])] if gpus else None
    try:
        # A user's own uid reads their cache and data; root's files must be readable by the image's user (lab).
        user = f"{os.getuid()}:{os.getgid()}" if os.getuid() != 0 else None
        container = client.containers.run(tag, command=command, volumes=volumes, environment=environment, user=user,
                                          network_mode="none", device_requests=gpu_request, detach=True)
    except docker.errors.APIError as e:
        if gpus and "gpu" in str(e).lower():
            raise ContractError(f"Docker could not give the container a GPU ({e.explanation or e}). Install the NVIDIA "
                                "container toolkit and restart Docker, or use BACKEND=cpu.") from None
        raise ContractError(f"Docker refused to start the container: {e.explanation or e}.") from None
    output = []

    def follow():
        for chunk in container.logs(stream=True, follow=True):
            text = chunk.decode(errors="replace")
            output.append(text)
            log(text.rstrip("\n"))

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    timeout = timeout or 2 * PROFILES[profile].time_budget + START_ALLOWANCE
    try:
        code = container.wait(timeout=timeout)["StatusCode"]
    except requests.exceptions.ConnectionError:  # the wait timed out: kill the run, as the agent's runner does
        container.kill()
        output.append(f"\nKILLED: the run exceeded its hard timeout of {timeout:.0f} s\n")
        code = 124
    finally:
        reader.join(timeout=10)
        container.remove(force=True)
    return code, "".join(output)


def find_record(commit):
    """The results.jsonl row of a commit (any run under runs/), and the run folder it came from."""
    for path in sorted((REPO / "runs").glob("*/results.jsonl")):
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            if row.get("commit") and commit and row["commit"].startswith(commit) and row.get("val_bpb") is not None:
                return row, path.parent
    return None, None


def noise_floor(run_folder, record):
    """The standard deviation of val_bpb between runs of one canvas: from noise.jsonl, else the record's repeats."""
    values = []
    noise = run_folder / "noise.jsonl"
    if noise.exists():
        values = [json.loads(line).get("val_bpb") for line in noise.read_text().splitlines() if line.strip()]
    values = [v for v in values if v is not None] or record.get("val_bpb_runs") or []
    return statistics.stdev(values) if len(values) >= 2 else None


def reproduce(commit, runs=1, data=None, log=print):
    full = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}"], cwd=REPO,
                          capture_output=True, text=True).stdout.strip()
    if not full:
        raise ContractError(f"'{commit}' is not a commit of this repository. Take one from the commit column of "
                            "runs/<tag>/results.tsv (git log autoresearch/<tag> lists the kept ones).")
    record, run_folder = find_record(full)
    if record is None:
        raise ContractError(f"Commit {full[:12]} has no results record with a val_bpb in runs/*/results.jsonl, so "
                            "there is nothing to compare with. Reproduce a commit that the agent logged (a crashed "
                            "experiment has no val_bpb).")
    backend, profile = record["backend"], record["profile"]
    if profile not in PROFILES:
        raise ContractError(f"The record's profile '{profile}' is not one of {', '.join(PROFILES)}.")
    image = "cuda" if profile in ("h100", "gpu") else "cpu"
    if image == "cuda" and backend != "cuda":
        raise ContractError(f"Only the cuda backend has a GPU image; this record used {backend} on {profile}.")
    data = data or record_data(record)
    recorded = (record.get("data") or {}).get("sha256")
    if recorded:
        source = get_source(str(data) if data else None)
        source.verify()
        if source.identity()["sha256"] != recorded:
            raise ContractError(f"The data at {source.root} is not the data the result was trained on (the shard "
                                "hashes differ from the record's). Point DATA= at the original data.")
    canvas_text = subprocess.run(["git", "show", f"{full}:backends/{backend}/train.py"], cwd=REPO,
                                 capture_output=True, text=True, check=True).stdout
    values = []
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o755)
        canvas = Path(tmp) / "train.py"
        canvas.write_text(canvas_text)
        os.chmod(canvas, 0o644)
        for i in range(runs):
            log(f"reproduce {full[:12]}: run {i + 1}/{runs} in {IMAGES[image]} ({backend}, profile {profile})")
            code, output = train_in_container(image, backend, profile, data, canvas, log=log)
            if code != 0:
                raise ContractError(f"The reproduction run exited with status {code}; its output is above.")
            values.append(parse_summary(output)["val_bpb"])
    logged, reproduced = record["val_bpb"], statistics.fmean(values)
    sigma = noise_floor(run_folder, record)
    diff = reproduced - logged
    if sigma is None:
        verdict = "UNJUDGED: no noise measurement for this run (python -m agent noise --runs 5)"
    elif abs(diff) <= NOISE_SIGMAS * sigma:
        verdict = f"REPRODUCED: within {NOISE_SIGMAS:g} x the noise floor ({sigma:.6f})"
    else:
        verdict = f"NOT REPRODUCED: {abs(diff) / sigma:.1f} x the noise floor ({sigma:.6f})"
    log(f"logged val_bpb     {logged:.6f}\nreproduced val_bpb {reproduced:.6f}  ({len(values)} run(s))\n"
        f"difference         {diff:+.6f}\nverdict            {verdict}")
    return {"commit": full, "logged": logged, "reproduced": reproduced, "runs": values, "diff": diff,
            "noise_sigma": sigma, "verdict": verdict.split(":")[0]}


def record_data(record):
    source = (record.get("data") or {}).get("source", "")
    return Path(source[len("local:"):]) if source.startswith("local:") else None


def main():
    p = argparse.ArgumentParser(prog="python -m agent.container", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("--image", choices=IMAGES, default="cpu")
    b.add_argument("--base-image", help="the FROM image (default: python:3.11-slim-bookworm)")
    b.add_argument("--offline", action="store_true", help="install only from docker/wheelhouse")
    r = sub.add_parser("run")
    r.add_argument("--image", choices=IMAGES, default="cpu")
    r.add_argument("--backend", choices=("cuda", "jax", "mlx"), default="cuda", help="the trainer (cuda = PyTorch)")
    r.add_argument("--profile", choices=list(PROFILES), default=None)
    r.add_argument("--data", default=os.environ.get("AUTORESEARCH_DATA"))
    w = sub.add_parser("check-wheelhouse", help="refuse a wheelhouse without a CUDA torch (for the cuda image)")
    w.add_argument("--folder", default=REPO / "docker" / "wheelhouse", type=Path)
    x = sub.add_parser("reproduce")
    x.add_argument("--commit", required=True)
    x.add_argument("--runs", type=int, default=1)
    x.add_argument("--data", default=os.environ.get("AUTORESEARCH_DATA"))
    args = p.parse_args()
    if args.cmd == "build":
        build(args.image, args.base_image, args.offline)
    elif args.cmd == "check-wheelhouse":
        print(f"{args.folder}: {check_cuda_wheelhouse(args.folder).name}, a CUDA build of torch, for the cuda image")
    elif args.cmd == "run":
        profile = args.profile or ("h100" if args.image == "cuda" else "cpu")
        code, output = train_in_container(args.image, args.backend, profile, args.data)
        sys.exit(code)
    else:
        if args.runs < 1:
            raise ContractError("--runs must be at least 1.")
        result = reproduce(args.commit, args.runs, args.data)
        sys.exit(0 if result["verdict"] != "NOT REPRODUCED" else 1)


if __name__ == "__main__":
    run_cli(main)
