"""The cuda image never gets a CPU-only torch: the wheelhouse check (make docker-wheelhouse BACKEND=cuda, and
--offline cuda builds) and the build step docker/require_cuda_torch.py. Runs on a CPU; the container test needs a
Docker engine and the CPU image that test_docker.py builds, and skips without them."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.container import check_cuda_wheelhouse
from common.errors import ContractError

ROOT = Path(__file__).resolve().parents[2]
CPU_WHEEL = "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"
CUDA_WHEEL = "torch-2.13.0-cp311-cp311-manylinux_2_28_x86_64.whl"


def wheelhouse(folder, *names):
    folder.mkdir()
    for name in (*names, "numpy-2.4.6-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl"):
        (folder / name).write_bytes(b"PK\x05\x06" + bytes(18))        # an empty zip: only names are read
    return folder


def test_a_wheelhouse_with_only_a_cpu_torch_is_refused_for_the_cuda_image(tmp_path):
    folder = wheelhouse(tmp_path / "wheels", CPU_WHEEL)
    with pytest.raises(ContractError) as e:
        check_cuda_wheelhouse(folder)
    message = str(e.value)
    assert CPU_WHEEL in message and "no CUDA build of torch 2.13.0" in message
    assert "make docker-wheelhouse BACKEND=cuda" in message and "\n" not in message


def test_a_wheelhouse_with_no_linux_torch_is_refused(tmp_path):
    folder = wheelhouse(tmp_path / "wheels", "torch-2.13.0-cp311-cp311-macosx_14_0_arm64.whl")
    with pytest.raises(ContractError, match="no CUDA build of torch 2.13.0 for Linux"):
        check_cuda_wheelhouse(folder)
    with pytest.raises(ContractError, match="holds no torch 2.13.0 wheel"):
        check_cuda_wheelhouse(wheelhouse(tmp_path / "empty"))


def test_a_cuda_torch_passes_even_beside_the_cpu_images_cpu_torch(tmp_path):
    folder = wheelhouse(tmp_path / "wheels", CPU_WHEEL, CUDA_WHEEL)
    assert check_cuda_wheelhouse(folder).name == CUDA_WHEEL
    local = wheelhouse(tmp_path / "local", CPU_WHEEL, "torch-2.13.0+cu130-cp311-cp311-manylinux_2_28_x86_64.whl")
    assert check_cuda_wheelhouse(local).name.startswith("torch-2.13.0+cu130")


def test_the_make_step_refuses_with_one_paragraph(tmp_path):
    folder = wheelhouse(tmp_path / "wheels", CPU_WHEEL)
    out = subprocess.run([sys.executable, "-m", "agent.container", "check-wheelhouse", "--folder", str(folder)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and CPU_WHEEL in out.stderr


def test_the_cuda_images_build_step_refuses_a_cpu_torch():
    torch = pytest.importorskip("torch")
    out = subprocess.run([sys.executable, "docker/require_cuda_torch.py"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    if torch.version.cuda is not None:          # a CUDA build here: the step passes and says so
        assert out.returncode == 0 and f"CUDA {torch.version.cuda}" in out.stdout
        return
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert "CPU-only build" in out.stderr and "make docker-wheelhouse BACKEND=cuda" in out.stderr


def test_the_build_step_refuses_the_cpu_images_torch_in_a_container():
    try:
        import docker
        client = docker.from_env()
        client.ping()
        client.images.get("autoresearch:cpu")
    except Exception as e:  # noqa: BLE001 - any failure means: no engine or no image here
        pytest.skip(f"needs a Docker engine and the autoresearch:cpu image (tests/docker/test_docker.py builds it): {e}")
    script = ROOT / "docker" / "require_cuda_torch.py"
    container = client.containers.run("autoresearch:cpu", entrypoint=["python", "/check/require_cuda_torch.py"],
                                      volumes={str(script.parent): {"bind": "/check", "mode": "ro"}},
                                      user=f"{os.getuid()}:{os.getgid()}" if os.getuid() else None,
                                      network_mode="none", detach=True)
    try:
        code = container.wait(timeout=120)["StatusCode"]
        logs = container.logs().decode()
    finally:
        container.remove(force=True)
    assert code == 1 and "CPU-only build" in logs and "Traceback" not in logs
