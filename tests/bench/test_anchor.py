"""bench/anchor.py and bench/ablations.py on the CPU: the parts that need no GPU and no upstream checkout."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

import ablations  # noqa: E402
import anchor  # noqa: E402
from common.errors import ContractError  # noqa: E402

CANVAS = (REPO / "backends" / "cuda" / "train.py").read_text()


@pytest.mark.parametrize("name", sorted(ablations.VARIANTS))
def test_every_ablation_still_applies_to_its_canvas(name):
    """Each variant's edits find their place exactly once in today's canvas of its backend (a canvas change
    that moves one fails here, not on a GPU), and every variant but the profile-only one changes the text."""
    variant = ablations.VARIANTS[name]
    canvas = (REPO / "backends" / variant.backend / "train.py").read_text()
    text = ablations.apply(variant, canvas)
    assert (text != canvas) == bool(variant.edits)
    compile(text, "train.py", "exec")


def test_an_edit_that_no_longer_applies_names_itself():
    with pytest.raises(ValueError, match="finds 0 places"):
        ablations.apply(ablations.Variant("x", edits=(("no such line", "y"),)), CANVAS)


def test_upstreams_summary_block_is_parsed_with_its_untimed_steps():
    text = ("step 00200 (99.9%) | loss: 3.1\r\n---\nval_bpb:          1.049149\ntraining_seconds: 60.1\n"
            "total_seconds:    87.5\npeak_vram_mb:     45063.6\nmfu_percent:      40.15\ntotal_tokens_M:   105.4\n"
            "num_steps:        201\nnum_params_M:     50.3\ndepth:            8\n")
    s = anchor.parse_upstream(text)
    assert s["val_bpb"] == 1.049149 and s["num_steps"] == 201
    assert s["tokens_per_sec"] == pytest.approx((201 - 11) * 105.4e6 / 201 / 60.1)
    with pytest.raises(ContractError, match="crashed"):
        anchor.parse_upstream("Traceback (most recent call last): ...")


def test_an_upstream_folder_without_its_files_is_a_clear_error(tmp_path):
    with pytest.raises(ContractError, match="prepare.py and train.py"):
        anchor.upstream_code(tmp_path)


@pytest.mark.slow
def test_ours_and_a_variant_side_by_side_on_the_cpu(prepared_env, tmp_path):
    """The whole harness without upstream: our trainer and the 'before' ablation under the smoke profile,
    one table, logs and results written."""
    out = subprocess.run([sys.executable, "bench/anchor.py", "--no-upstream", "--profile", "smoke", "--budget", "2",
                          "--repeat", "1", "--gpus", "", "--variant", "before", "--out", str(tmp_path)],
                         cwd=REPO, env=prepared_env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    table = (tmp_path / "anchor.md").read_text()
    assert "| cuda_2s_1 |" in table and "| cuda-before_2s_1 |" in table and "budget 2 s" in table
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 2
    assert (tmp_path / "logs.tar.gz").stat().st_size > 0
    log = (tmp_path / "logs" / "cuda_2s_1.log").read_text()
    assert "profile:            smoke@2s" in log


@pytest.mark.slow
def test_jax_from_the_cuda_backends_initial_weights(prepared_env, tmp_path):
    """--variant from-cuda-init: the cuda model's initial weights are exported and the jax run starts from them
    (on the CPU here: torch's CPU draws; on a GPU, the GPU's)."""
    pytest.importorskip("jax")
    out = subprocess.run([sys.executable, "bench/anchor.py", "--no-upstream", "--profile", "smoke", "--budget", "2",
                          "--repeat", "0", "--gpus", "", "--variant", "from-cuda-init", "--out", str(tmp_path)],
                         cwd=REPO, env=prepared_env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "| jax-from-cuda-init_2s_1 |" in (tmp_path / "anchor.md").read_text()
    import numpy as np
    weights = np.load(tmp_path / "cuda_init.npz")
    assert weights["wte.weight"].shape == (8192, 128) and not weights["blocks.0.mlp.c_proj.weight"].any()


@pytest.mark.slow
def test_gpu_parity_runs_both_trainers_from_the_same_weights_on_the_cpu(prepared_env, tmp_path):
    """bench/gpu_parity.py on the CPU (float32, smoke model): cuda and jax from the cuda trainer's initial
    weights give the same first loss and gradients; jax from its own draws gives another first loss."""
    pytest.importorskip("jax")
    out = subprocess.run([sys.executable, "bench/gpu_parity.py", "--profile", "smoke", "--steps", "3",
                          "--out", str(tmp_path)], cwd=REPO, env=prepared_env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    import json
    cuda, jax, own = (json.loads((tmp_path / f"{s}.json").read_text()) for s in ("cuda", "jax", "jax-own-init"))
    assert jax["loss0"] == pytest.approx(cuda["loss0"], rel=1e-5)
    assert max(v for n, v in jax["grad_rel"].items() if "lambdas" not in n) < 1e-4
    assert own["loss0"] != pytest.approx(cuda["loss0"], rel=1e-5)
    assert len(cuda["losses"]) == len(jax["losses"]) == 3
    table = (tmp_path / "gpu_parity.md").read_text()
    assert "| jax-own-init |" in table and "x0_lambdas" in table
