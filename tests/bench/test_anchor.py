"""bench/anchor.py and bench/ablations.py on the CPU: the parts that need no GPU and no upstream checkout."""

import os
import re
import statistics
import subprocess
import sys
import time
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


@pytest.mark.parametrize("name", ["cross-entropy-head", "online-logsumexp-head"])
def test_the_loss_head_variants_compute_the_canvas_loss_and_gradients(tmp_path, name):
    """The canvas's logsumexp head and its variants (F.cross_entropy; keepdim sums) differ in the loss's code,
    not its math: per-token losses and every gradient of a tiny model agree in float32 (the reductions run in
    another order, so to rounding, not bit for bit)."""
    import torch
    path = tmp_path / f"train_{name.replace('-', '_')}.py"
    path.write_text(ablations.apply(ablations.VARIANTS[name], CANVAS))
    plain, variant = anchor.load_canvas(REPO / "backends" / "cuda" / "train.py"), anchor.load_canvas(path)
    config = plain.tiny_config()
    tokens = torch.randint(0, config.vocab_size, (3, config.sequence_len + 1), generator=torch.Generator().manual_seed(0))
    results = []
    for canvas in (plain, variant):
        model = canvas.build_model(config, seed=1)
        with torch.no_grad():  # non-zero output projections, so that every gradient is non-trivial
            for block in model.blocks:
                block.attn.c_proj.weight.normal_(std=0.02)
                block.mlp.c_proj.weight.normal_(std=0.02)
        losses = model(tokens[:, :-1], tokens[:, 1:])
        losses.mean().backward()
        results.append((losses.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert loss_a.shape == (3, config.sequence_len)
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-6, atol=1e-6)
    for name, grad in grads_a.items():
        torch.testing.assert_close(grads_b[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_the_autotune_cache_variant_keeps_the_canvas_lines_and_patches_torch_2_11_only(capsys):
    """The variant's canvas differs from the canvas on the import's line only (inductor's cached graphs carry
    line numbers), and bench/torch_autotune_cache.py leaves torch alone on any version but 2.11."""
    import torch
    from torch._inductor.runtime import triton_heuristics
    import torch_autotune_cache
    text = ablations.apply(ablations.VARIANTS["torch-2.13-autotune-cache"], CANVAS)
    changed = [(a, b) for a, b in zip(CANVAS.splitlines(), text.splitlines()) if a != b]
    assert len(text.splitlines()) == len(CANVAS.splitlines())
    assert changed == [("import torch", "import torch; __import__('torch_autotune_cache').patch()")]
    if torch.__version__.startswith("2.11."):
        pytest.skip("torch 2.11: patch() would change torch for the rest of this process")
    before = vars(triton_heuristics.CachingAutotuner).copy()
    assert torch_autotune_cache.patch() is False
    assert vars(triton_heuristics.CachingAutotuner) == before
    assert "nothing patched" in capsys.readouterr().out

def test_an_edit_that_no_longer_applies_names_itself():
    with pytest.raises(ValueError, match="finds 0 places"):
        ablations.apply(ablations.Variant("x", edits=(("no such line", "y"),)), CANVAS)


STUB_PREPARE = """\
TIME_BUDGET = 300
import os, pathlib
tokenizer = pathlib.Path(os.environ["HOME"]) / ".cache" / "autoresearch" / "tokenizer"
tokenizer.mkdir(parents=True, exist_ok=True)
(tokenizer / "tokenizer.pkl").write_text("merges")
with open(os.environ["STUB_LOG"], "a") as log:
    log.write(str(sorted(p.name for p in (tokenizer.parent / "data").iterdir())) + "\\n")
"""


def test_upstreams_home_and_tokenizer_are_kept_between_calls_and_renewed_when_the_data_change(tmp_path, monkeypatch):
    """Upstream's prepare.py (here a stand-in that records each run) trains its tokenizer once per set of data
    files, not once per call's --out folder; its HOME lives in our cache, keyed by the files."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("STUB_LOG", str(tmp_path / "prepare.log"))
    code, data = tmp_path / "upstream", tmp_path / "data"
    code.mkdir()
    data.mkdir()
    (code / "prepare.py").write_text(STUB_PREPARE)
    (code / "train.py").write_text("")
    for i in range(3):
        pq.write_table(pa.table({"text": [f"document {i}"]}), data / f"shard_{i:05d}.parquet")

    run_dir, env = anchor.prepare_upstream(code, str(data), tmp_path / "call1", 60)
    assert "TIME_BUDGET = 60" in (run_dir / "prepare.py").read_text()
    _, env2 = anchor.prepare_upstream(code, str(data), tmp_path / "call2", 300)
    runs = (tmp_path / "prepare.log").read_text().splitlines()
    assert runs == [str(["shard_00000.parquet", "shard_00001.parquet", anchor.UPSTREAM_VAL_SHARD])]
    assert env["HOME"] == env2["HOME"] and Path(env["HOME"]).is_relative_to(tmp_path / "cache")

    pq.write_table(pa.table({"text": ["another document"]}), data / "shard_00001.parquet")
    _, env3 = anchor.prepare_upstream(code, str(data), tmp_path / "call3", 60)
    assert env3["HOME"] != env["HOME"] and len((tmp_path / "prepare.log").read_text().splitlines()) == 2

def test_a_machine_that_forbids_bytecode_gets_it_written_once_to_our_cache(tmp_path, monkeypatch):
    """The GPU machines set PYTHONDONTWRITEBYTECODE over a torch without .pyc files: every trainer compiled
    torch's Python again. allow_bytecode() lets the trainers write it to our cache and read it back."""
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    monkeypatch.delenv("PYTHONPYCACHEPREFIX", raising=False)
    (tmp_path / "some_module.py").write_text("X = 1\n")

    def child():
        subprocess.run([sys.executable, "-c", "import some_module"], cwd=tmp_path, env=dict(os.environ), check=True)

    child()
    assert not list(tmp_path.rglob("*.pyc"))
    assert "PYTHONDONTWRITEBYTECODE" in anchor.allow_bytecode() and "PYTHONDONTWRITEBYTECODE" not in os.environ
    child()
    assert len(list((tmp_path / "cache" / "pycache").rglob("some_module*.pyc"))) == 1
    assert anchor.allow_bytecode() == ""  # a machine that allows bytecode is left as it is

def test_upstreams_summary_block_is_parsed_with_its_untimed_steps():
    text = ("step 00200 (99.9%) | loss: 3.1\r\n---\nval_bpb:          1.049149\ntraining_seconds: 60.1\n"
            "total_seconds:    87.5\npeak_vram_mb:     45063.6\nmfu_percent:      40.15\ntotal_tokens_M:   105.4\n"
            "num_steps:        201\nnum_params_M:     50.3\ndepth:            8\n")
    s = anchor.parse_upstream(text)
    assert s["val_bpb"] == 1.049149 and s["num_steps"] == 201
    assert s["tokens_per_sec"] == pytest.approx((201 - 11) * 105.4e6 / 201 / 60.1)
    with pytest.raises(ContractError, match="crashed"):
        anchor.parse_upstream("Traceback (most recent call last): ...")


def runs_on_a_line(group, offset, steps, slope=-0.0005, base=1.05, wobble=(0.0001, -0.0001, 0.00005)):
    """Result rows of a group whose val_bpb falls `slope` a step from `base + offset` at 197 steps."""
    return [dict(name=f"{group}_{i}", group=group, budget=60.0, gpu="0", steps=s, tokens_per_sec=1.6e6, mfu=39.0,
                 peak_gb=45.0, overhead_s=30.0, val_bpb=base + offset + slope * (s - 197) + wobble[i % len(wobble)])
            for i, s in enumerate(steps)]


def test_the_equal_step_fit_separates_speed_from_what_a_step_is_worth():
    """cuda 0.0020 worse per step and 3 steps slower than upstream: raw means say +0.0035, the fit +0.0020."""
    rows = runs_on_a_line("upstream", 0.0, [200, 198, 201]) + runs_on_a_line("cuda", 0.0020, [197, 195, 198])
    slope, resid_sd, n, diffs = anchor.equal_step_fit(rows)[60.0]
    assert n == 6 and slope == pytest.approx(-0.0005, abs=1e-4) and resid_sd < 2e-4
    assert diffs["cuda"][0] == pytest.approx(0.0020, abs=2e-4) and diffs["cuda"][1] < 5e-4
    text = anchor.table(rows, "heading")
    assert "| cuda | 60 | 3 |" in text and f"{diffs['cuda'][0]:+.4f} ± " in text
    assert f"common slope, {slope:+.5f} val_bpb per step, fitted over 6 runs" in text


def test_the_table_reads_jax_against_cuda_in_cudas_sd():
    """Issue 10 asks for jax within 2 sd of cuda: the summary gives jax's difference to cuda's mean, and in
    units of cuda's sd; upstream and cuda themselves get no such entry."""
    rows = (runs_on_a_line("upstream", 0.0, [200, 200, 200]) + runs_on_a_line("cuda", 0.0, [200, 200, 200])
            + runs_on_a_line("jax", 0.0010, [200, 200, 200]))
    cuda = [r["val_bpb"] for r in rows if r["group"] == "cuda"]
    jax = [r["val_bpb"] for r in rows if r["group"] == "jax"]
    diff = sum(jax) / 3 - sum(cuda) / 3
    lines = {line.split(" | ")[0]: line for line in anchor.table(rows, "heading").splitlines() if line.startswith("| ")}
    assert f"| {diff:+.4f} ({diff / statistics.stdev(cuda):+.1f} sd) |" in lines["| jax"]
    assert lines["| cuda"].split(" | ")[6] == "" and lines["| upstream"].split(" | ")[5:7] == ["", ""]


def test_no_fit_where_the_slope_cannot_be_told_from_the_groups():
    """Every run of a group at one step count: a slope and the groups' offsets explain the same thing."""
    rows = runs_on_a_line("upstream", 0.0, [200, 200, 200]) + runs_on_a_line("cuda", 0.002, [196, 196, 196])
    assert anchor.equal_step_fit(rows) == {}
    assert "common slope" not in anchor.table(rows, "heading")


def test_one_table_over_the_results_of_two_calls(tmp_path):
    import json
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    rows = runs_on_a_line("upstream", 0.0, [200, 198, 201]) + runs_on_a_line("cuda", 0.0020, [197, 195, 198])
    first.write_text("".join(json.dumps(dict(r, heading="call A")) + "\n" for r in rows[:3] + rows[3:4]))
    second.write_text("".join(json.dumps(dict(r, heading="call B")) + "\n" for r in rows[4:]))
    out = subprocess.run([sys.executable, "bench/anchor.py", "table", str(first), str(second)], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("call A\ncall B") and "| cuda | 60 | 3 |" in out.stdout
    assert "fitted over 6 runs" in out.stdout
    missing = subprocess.run([sys.executable, "bench/anchor.py", "table", str(tmp_path / "none.jsonl")], cwd=REPO,
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode != 0 and "is not a file" in missing.stderr
    (tmp_path / "log.txt").write_text("step 00001 | loss 9.0\n")
    garbled = subprocess.run([sys.executable, "bench/anchor.py", "table", str(tmp_path / "log.txt")], cwd=REPO,
                             capture_output=True, text=True, timeout=60)
    assert garbled.returncode != 0 and "log.txt, line 1, is not JSON" in garbled.stderr


def test_side_by_side_pairs_swap_gpus_from_one_repeat_to_the_next(tmp_path):
    """Upstream and ours alternate between the two GPUs (each side gets both cards), and a job with no slot
    (an --extra backend) goes to whichever GPU is free. Real processes; CUDA_VISIBLE_DEVICES is what each saw."""
    code = "import os; print(f'gpu={os.environ[\"CUDA_VISIBLE_DEVICES\"]}')"
    def job(group, index, slot):
        return anchor.Job(group, 0.1, index, [sys.executable, "-c", code], tmp_path, dict(os.environ),
                          lambda text: dict(num_steps=1, tokens_per_sec=1.0, mfu_percent=1.0, peak_vram_mb=1.0,
                                            val_bpb=1.0, training_seconds=0.1, seen=text), slot)
    jobs = [j for i in range(3) for j in (job("upstream", i + 1, i % 2), job("cuda", i + 1, (i + 1) % 2))]
    jobs.append(job("jax", 1, None))
    rows = anchor.run_all(jobs, ["3", "5"], tmp_path, None, timeout=60, progress=lambda line: None)
    gpu = {r["name"]: r["gpu"] for r in rows}
    assert [gpu[f"upstream_0.1s_{i}"] for i in (1, 2, 3)] == ["3", "5", "3"]
    assert [gpu[f"cuda_0.1s_{i}"] for i in (1, 2, 3)] == ["5", "3", "5"]
    assert gpu["jax_0.1s_1"] in ("3", "5") and len(rows) == 7
    for r in rows:
        assert f"gpu={r['gpu']}" in (tmp_path / "logs" / f"{r['name']}.log").read_text()


def test_without_upstream_our_backends_take_turns(tmp_path):
    """--no-upstream --backend cuda --extra jax: cuda and jax alternate run by run, so that on one GPU a drift of
    its speed over the call falls on both; the variants come after."""
    import argparse
    args = argparse.Namespace(backend="cuda", extra=["jax"], variant=["before"], profile="smoke", data=None)
    jobs = anchor.plan(args, None, tmp_path, 60, 2, 1)
    assert [j.name for j in jobs] == ["cuda_60s_1", "jax_60s_1", "cuda_60s_2", "jax_60s_2", "cuda-before_60s_1"]
    assert all(j.slot is None for j in jobs)


def test_the_deadline_reckons_a_run_at_what_its_group_last_took(tmp_path):
    """A 2.5-s run, then another of its group: it can end before a 62-s deadline, so it runs. A run of a group
    that has not run yet is reckoned at its budget and a minute, so at 5 s it is skipped."""
    def job(group, index, sleep):
        return anchor.Job(group, 0.1, index, [sys.executable, "-c", f"import time; time.sleep({sleep})"], tmp_path,
                          dict(os.environ), lambda text: dict(num_steps=1, tokens_per_sec=1.0, mfu_percent=1.0,
                                                              peak_vram_mb=1.0, val_bpb=1.0, training_seconds=0.1))
    rows = anchor.run_all([job("cuda", 1, 2.5), job("cuda", 2, 2.5), job("jax", 1, 0)], [""], tmp_path, 62,
                          timeout=60, progress=lambda line: None, pin=False)
    assert [("val_bpb" in r, r.get("error")) for r in rows] == [
        (True, None), (True, None), (False, "skipped: would end after the deadline")]


def test_side_by_side_runs_each_have_their_own_cpus_and_each_row_is_recorded_as_it_ends(tmp_path):
    """With two GPUs each run is pinned to its GPU's half of the CPUs, threads included (a thread started in the
    child reports its own set), and record() sees every row once, the first before the last run has ended. With
    pin=False every run may use every CPU."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs two CPUs")
    code = ("import os, sys, threading, time; seen = []; t = threading.Thread(target=lambda: seen.append("
            "sorted(os.sched_getaffinity(0)))); t.start(); t.join(); print('cpus=' + repr(seen[0])); "
            "time.sleep(float(sys.argv[1]))")
    def job(index, slot, sleep):
        return anchor.Job("cuda", 0.1, index, [sys.executable, "-c", code, str(sleep)], tmp_path, dict(os.environ),
                          lambda text: dict(num_steps=1, tokens_per_sec=1.0, mfu_percent=1.0, peak_vram_mb=1.0,
                                            val_bpb=1.0, training_seconds=0.1), slot)
    recorded = []
    rows = anchor.run_all([job(1, 0, 0), job(2, 1, 0), job(3, 0, 1.5)], ["0", "1"], tmp_path, None, timeout=60,
                          progress=lambda line: None, record=lambda row: recorded.append((row["name"], time.time())))
    assert sorted(name for name, _ in recorded) == ["cuda_0.1s_1", "cuda_0.1s_2", "cuda_0.1s_3"]
    assert recorded[-1][0] == "cuda_0.1s_3" and recorded[0][1] < recorded[-1][1] - 1.0
    half = len(cpus) // 2
    seen = {}
    for row in rows:
        text = (tmp_path / "logs" / f"{row['name']}.log").read_text()
        seen[row["gpu"]] = set(eval(re.search(r"cpus=(\[.*\])", text).group(1)))
        assert row["cpus"] == anchor.cpu_list(sorted(seen[row["gpu"]]))
    assert seen["0"] == set(cpus[:half]) and seen["1"] == set(cpus[half:2 * half])
    shared = anchor.run_all([job(4, 0, 0)], ["0", "1"], tmp_path, None, timeout=60, progress=lambda line: None,
                            pin=False)
    assert "cpus" not in shared[0]
    assert f"cpus={cpus!r}" in (tmp_path / "logs" / "cuda_0.1s_4.log").read_text()


def test_cpu_lists_are_written_as_taskset_writes_them():
    assert anchor.cpu_list([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8" and anchor.cpu_list([3]) == "3"


def test_an_upstream_folder_without_its_files_is_a_clear_error(tmp_path):
    with pytest.raises(ContractError, match="prepare.py and train.py"):
        anchor.upstream_code(tmp_path)


@pytest.mark.slow
def test_ours_and_a_variant_side_by_side_on_the_cpu(prepared_env, tmp_path):
    """The whole harness without upstream: our trainer and the 'before' ablation under the smoke profile, each
    warmed up by a 1-s run that stays out of the table and the results, then one table, logs and results."""
    out = subprocess.run([sys.executable, "bench/anchor.py", "--no-upstream", "--profile", "smoke", "--budget", "2",
                          "--repeat", "1", "--gpus", "", "--variant", "before", "--warmup", "1", "--out", str(tmp_path)],
                         cwd=REPO, env=prepared_env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    table = (tmp_path / "anchor.md").read_text()
    assert "| cuda_2s_1 |" in table and "| cuda-before_2s_1 |" in table and "budget 2 s" in table
    assert "warm-up: 2 run(s) of 1 s" in out.stdout and "_1s_" not in table
    assert "smoke@1s" in (tmp_path / "logs" / "cuda-before_1s_1.log").read_text()
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 2
    assert (tmp_path / "logs.tar.gz").stat().st_size > 0
    log = (tmp_path / "logs" / "cuda_2s_1.log").read_text()
    assert "profile:            smoke@2s" in log


@pytest.mark.slow
def test_jax_from_the_cuda_backends_initial_weights(prepared_env, tmp_path):
    """--variant from-cuda-init and from-cuda-init-seed-43: the cuda model's initial weights for each seed are
    exported (on the CPU here: torch's CPU draws; on a GPU, the GPU's) and each jax run starts from its own;
    jax-random-draws trains from jax.random's draws instead of the canvas's reproduction of torch's CUDA draws."""
    pytest.importorskip("jax")
    out = subprocess.run([sys.executable, "bench/anchor.py", "--no-upstream", "--profile", "smoke", "--budget", "2",
                          "--repeat", "0", "--gpus", "", "--variant", "from-cuda-init", "--variant",
                          "from-cuda-init-seed-43", "--variant", "jax-random-draws", "--out", str(tmp_path)],
                         cwd=REPO, env=prepared_env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    table = (tmp_path / "anchor.md").read_text()
    assert "| jax-from-cuda-init_2s_1 |" in table and "| jax-from-cuda-init-seed-43_2s_1 |" in table
    assert "| jax-jax-random-draws_2s_1 |" in table
    import numpy as np
    seed42, seed43 = (np.load(tmp_path / f"cuda_init_{seed}.npz") for seed in (42, 43))
    assert seed42["wte.weight"].shape == (8192, 128) and not seed42["blocks.0.mlp.c_proj.weight"].any()
    assert not np.array_equal(seed42["wte.weight"], seed43["wte.weight"])
    # The canvas's own initial weights, every tensor (until 2026-12-01 the scalars were upstream's 1.0 and 0.1).
    from common.platform import get_profile
    cuda, profile = anchor.load_canvas(REPO / "backends" / "cuda" / "train.py"), get_profile("smoke")
    config = cuda.model_config(profile.depth, profile.max_seq_len, seed42["wte.weight"].shape[0])
    canvas = cuda.export_weights(cuda.build_model(config, "cpu", seed=42))
    assert set(canvas) == set(seed42.files)
    assert all(np.array_equal(canvas[name], seed42[name]) for name in canvas), "not the canvas's weights"
    # Step 1 shows step 0's loss: the two runs share the canvas's SEED and data, so only the weights differ.
    first_loss = [next(line for line in (tmp_path / "logs" / f"{name}_2s_1.log").read_text().splitlines()
                       if line.startswith("step 00001")) for name in ("jax-from-cuda-init", "jax-from-cuda-init-seed-43")]
    assert first_loss[0].split("|")[1] != first_loss[1].split("|")[1], first_loss


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


@pytest.mark.slow
def test_same_steps_trains_both_backends_on_the_same_batches_and_scores_each_with_both_evaluations(
        prepared_env, tmp_path):
    """bench/same_steps.py on the CPU (float32, smoke model): from the same weights and batches, the two
    trainers' per-step losses agree, and each run's final weights score alike under either backend's
    evaluation (on a GPU, where they differ, that separates training from evaluation)."""
    pytest.importorskip("jax")
    out = subprocess.run([sys.executable, "bench/same_steps.py", "--profile", "smoke", "--steps", "3", "--gpus", "",
                          "--run", "cuda", "--run", "jax", "--run", "jax:jax-xla-window-attention",
                          "--run", "jax-own-init", "--out", str(tmp_path)], cwd=REPO, env=prepared_env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    import json
    runs = {r: json.loads((tmp_path / f"train_{r}.json").read_text())
            for r in ("cuda", "jax", "jax-jax-xla-window-attention")}
    assert all(len(r["losses"]) == 3 for r in runs.values())
    for r in runs.values():
        assert r["losses"] == pytest.approx(runs["cuda"]["losses"], rel=1e-5)
    assert runs["cuda"]["losses"][2] < runs["cuda"]["losses"][0]  # it trained
    own = json.loads((tmp_path / "train_jax-own-init.json").read_text())["losses"]  # jax's own draws: others
    assert own[0] != pytest.approx(runs["cuda"]["losses"][0], rel=1e-5)
    scores = {b: json.loads((tmp_path / f"eval_{b}.json").read_text()) for b in ("cuda", "jax")}
    assert set(scores["cuda"]) == set(scores["jax"]) == set(runs) | {"jax-own-init"}
    for name in runs:
        assert scores["jax"][name] == pytest.approx(scores["cuda"]["cuda"], rel=1e-5)
        assert scores["cuda"][name] == pytest.approx(scores["cuda"]["cuda"], rel=1e-5)
    assert "| jax:jax-xla-window-attention |" in (tmp_path / "same_steps.md").read_text()


def test_same_steps_refuses_a_variant_that_acts_through_main(prepared_env, tmp_path):
    """A variant that edits main() (from-cuda-init loads weights there) would silently change nothing in a
    harness that drives train_step itself: it is refused, naming bench/anchor.py, before anything trains."""
    out = subprocess.run([sys.executable, "bench/same_steps.py", "--profile", "smoke", "--steps", "3", "--gpus", "",
                          "--run", "cuda", "--run", "jax:from-cuda-init", "--out", str(tmp_path)], cwd=REPO,
                         env=prepared_env, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "edits main()" in out.stderr + out.stdout and "anchor.py" in out.stderr + out.stdout
    assert not list(tmp_path.glob("train_*.json"))
