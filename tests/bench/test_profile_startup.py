"""bench/profile_startup.py: py-spy's samples summed by what the canvas's main() was doing."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

import profile_startup  # noqa: E402

RAW = """\
thread (7): MainThread;<module> (train.py:5) 30
thread (7);_find_and_load (<frozen importlib._bootstrap>:1176) 20
thread (7): MainThread;<module> (gpu.py:3);main (/x/backends/cuda/train.py:703);train_step (/x/backends/cuda/train.py:500);_compile (torch/_dynamo/convert_frame.py:9);trace (symbolic_convert.py:1) 150
thread (7): MainThread;<module> (gpu.py:3);main (/x/backends/cuda/train.py:657);build_model (/x/backends/cuda/train.py:600);init_weights (/x/backends/cuda/train.py:300) 40
thread (7): MainThread;<module> (gpu.py:3);main (/x/backends/cuda/train.py:703);train_step (/x/backends/cuda/train.py:500);coordinate_descent_tuning (triton_heuristics.py:1276) 250
thread (9): Thread-1 (loader);run (loader.py:10);encode (tokenizer.py:3) 900
thread (7): MainThread;<module> (gpu.py:3);main (/x/backends/cuda/train.py:657);build_model (/x/backends/cuda/train.py:601) 10
thread (7): MainThread;<module> (gpu.py:3);main (/x/backends/cuda/train.py:640) 5
"""


def test_samples_are_summed_by_what_main_called_in_the_order_of_its_lines_on_the_main_thread_alone():
    rows = profile_startup.phases(profile_startup.main_thread(RAW.splitlines()), rate=100)
    assert [(phase, seconds) for phase, seconds, _ in rows] == [
        ("before main(): interpreter, imports", 0.5), ("build_model", 0.5), ("train_step", 4.0),
        ("main() itself", 0.05)]
    inside = dict((phase, heavy) for phase, _, heavy in rows)
    # inside a phase, what took part of it, the largest first; the loader thread's 9 s count nowhere
    assert inside["train_step"] == [("coordinate_descent_tuning (triton_heuristics.py)", 2.5),
                                    ("_compile (convert_frame.py)", 1.5), ("trace (symbolic_convert.py)", 1.5)]
    assert inside["build_model"] == [("init_weights (train.py)", 0.4)]


@pytest.mark.slow
@pytest.mark.skipif(not profile_startup.py_spy(), reason="py-spy is not installed (the dev extras have it)")
def test_a_real_run_of_the_cuda_canvas_on_the_cpu_is_profiled_end_to_end(tmp_path, prepared_env):
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "profile_startup.py"), "--backend", "cuda",
                           "--profile", "smoke", "--budget", "2", "--out", str(tmp_path)],
                          cwd=REPO, env=prepared_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = (tmp_path / "startup.md").read_text()
    for phase in ("| before main(): interpreter, imports |", "| build_model |", "| train_step |", "| evaluate_bpb |"):
        assert phase in report
    assert "startup_seconds:" in report and (tmp_path / "samples.txt").stat().st_size > 0
