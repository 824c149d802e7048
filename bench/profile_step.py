"""Where one training step of the cuda canvas goes, on a GPU: a torch.profiler breakdown by kernel kind (issue 11).

    python bench/profile_step.py [--profile h100] [--warmup 5] [--steps 5] [--json out.json]
    python bench/profile_step.py --profile smoke --no-compile        # on a CPU: a test of the script itself

Builds the model and optimizer as backends/cuda/train.py's main() does (the canvas's DEPTH / DEVICE_BATCH_SIZE /
TOTAL_BATCH_SIZE, else the profile's; compiled unless --no-compile), feeds it random token ids (no tokenizer, no
data; --real-tokens: the prepared data's validation rows), runs --warmup steps (the first compiles), then times
--steps steps back to back, as the trainer queues them: median ms per step, tokens/s and MFU; then how long the
CPU takes to queue one step onto an idle GPU (near the step's time, the GPU waits on the CPU). Then it profiles
--profiled-steps more steps and sorts the GPU kernels' time per step into the CATEGORIES below by kernel name,
with the top kernels by time.

busy = the kernels' summed time per step (kernels on concurrent streams would count twice; this trainer uses
one); idle = the timed step (without the profiler) - busy: the time the GPU waits on the CPU. Without CUDA the
same table is made of the CPU operators' self time (all threads), so idle is then the untraced Python time.
"""

import argparse
import datetime
import gc
import json
import os
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

# A kernel's (on a CPU: an operator's) category is the first one with a fragment in its name, case ignored.
# Attention comes before matmul: cuDNN's attention kernels have "wgmma" in their names too. triton_tem_fused:
# FlexAttention's Triton template kernels.
CATEGORIES = [
    ("attention", ["flash", "fmha", "cudnn", "attention", "flex", "triton_tem_fused"]),
    ("matmul", ["gemm", "gemv", "cutlass", "sm90_xmma", "nvjet", "cublas", "wgmma",
                "aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"]),              # the last four: CPU operators
    ("optimizer", ["foreach", "multi_tensor", "_amp_", "adam"]),
    # "copy_kernel", not "copy_": inductor's fused kernels are named after their ops (triton_poi_fused__to_copy_0)
    ("copy/memset", ["memcpy", "memset", "copy_kernel", "catarraybatched", "aten::copy_"]),
    ("elementwise/fused", ["triton_", "elementwise", "vectorized", "reduce"]),          # triton_: inductor's kernels
]
OTHER = "other"


def category(name):
    lower = name.lower()
    for cat, fragments in CATEGORIES:
        if any(f in lower for f in fragments):
            return cat
    return OTHER


def timed(fn, n, on_gpu):
    """ms of each of n calls of fn. On a GPU the calls are queued back to back (no sync between them, as in the
    trainer) and each is timed by CUDA events on the GPU's timeline."""
    if on_gpu:
        import torch
        events = [torch.cuda.Event(enable_timing=True) for _ in range(n + 1)]
        events[0].record()
        for event in events[1:]:
            fn()
            event.record()
        torch.cuda.synchronize()
        return [a.elapsed_time(b) for a, b in zip(events, events[1:])]
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - t0))
    return times


def queue_times(fn, n, on_gpu):
    """ms the CPU takes to queue each of n calls of fn onto an idle GPU (a sync before and after each): when
    that nears the step's time, the GPU waits on the CPU. Without CUDA it is the step's time."""
    import torch
    times = []
    for _ in range(n):
        if on_gpu:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - t0))
        if on_gpu:
            torch.cuda.synchronize()
    return times


def op_times(prof, on_gpu):
    """[(name, microseconds, calls)] over the profile: GPU kernels (and memcpy/memset) on a GPU, as torch's own
    table totals them (device events, user annotations left out); the CPU operators' self time otherwise."""
    from torch.autograd import DeviceType
    rows = []
    for evt in prof.key_averages():
        if on_gpu:
            if evt.device_type != DeviceType.CUDA or getattr(evt, "is_user_annotation", False):
                continue
            us = getattr(evt, "self_device_time_total", None)
            us = getattr(evt, "self_cuda_time_total", 0) if us is None else us  # torch before 2.4
        else:
            if evt.device_type != DeviceType.CPU:
                continue
            us = evt.self_cpu_time_total
        if us > 0:
            rows.append((evt.key, us, evt.count))
    return rows


def optimizer_us(prof, on_gpu):
    """Time inside torch's 'Optimizer.step#...' range (every torch.optim.Optimizer's step records one): the GPU
    time of the kernels launched in it, or its CPU time. Name-based categories cannot see an unfused optimizer."""
    from torch.autograd import DeviceType
    for evt in prof.key_averages():
        if evt.key.startswith("Optimizer.step#") and evt.device_type == DeviceType.CPU:
            if not on_gpu:
                return evt.cpu_time_total
            us = getattr(evt, "device_time_total", None)
            return getattr(evt, "cuda_time_total", 0) if us is None else us
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="h100", help="common/platform.py profile: model size and batch")
    parser.add_argument("--canvas", default=str(REPO / "backends" / "cuda" / "train.py"), help="the trainer to load")
    parser.add_argument("--vocab", type=int, default=8192, help="vocabulary size (the tokenizer's: 8192)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (the first compiles)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps; the median is reported")
    parser.add_argument("--profiled-steps", type=int, default=2, help="steps under torch.profiler")
    parser.add_argument("--top", type=int, default=15, help="how many kernels to list")
    parser.add_argument("--no-compile", action="store_true", help="skip canvas.compile_model")
    parser.add_argument("--real-tokens", action="store_true",
                        help="feed the validation rows of the prepared data (common.evaluate.eval_rows) instead of "
                             "random ids: real text's skewed token counts make the embeddings' backward different")
    parser.add_argument("--json", help="write the numbers here")
    args = parser.parse_args()

    os.environ.setdefault("PYTORCH_ALLOC_CONF", "expandable_segments:True")  # as main()
    import torch
    from rich.console import Console
    from rich.table import Table
    from torch.profiler import ProfilerActivity, profile

    from anchor import load_canvas
    from common.platform import get_profile, peak_flops

    canvas = load_canvas(args.canvas)
    prof_cfg = get_profile(args.profile)
    on_gpu = torch.cuda.is_available()
    device = torch.device("cuda" if on_gpu else "cpu")
    torch.manual_seed(getattr(canvas, "SEED", 42))
    torch.set_float32_matmul_precision("high")
    depth = getattr(canvas, "DEPTH", None) or prof_cfg.depth
    device_batch = getattr(canvas, "DEVICE_BATCH_SIZE", None) or prof_cfg.device_batch_size
    total_batch = getattr(canvas, "TOTAL_BATCH_SIZE", None) or prof_cfg.total_batch_size
    seq_len = prof_cfg.max_seq_len
    if total_batch % (device_batch * seq_len):
        sys.exit(f"total batch {total_batch} is not a multiple of device batch x sequence length "
                 f"({device_batch} x {seq_len})")
    accum_steps = total_batch // (device_batch * seq_len)

    config = canvas.model_config(depth, seq_len, args.vocab)
    model = canvas.build_model(config, device)
    flops_per_token = model.flops_per_token()
    num_params = sum(p.numel() for p in model.parameters())
    optimizer = canvas.build_optimizer(model)
    if not args.no_compile:
        canvas.compile_model(model)
    if on_gpu:
        canvas.compile_optimizer(optimizer)  # as main(): Polar Express compiled on a GPU
        from torch._inductor import config as inductor_config
        inductor_config.cpp.vec_isa_ok = False  # as main(): no CPU kernels to vectorise, skip the ISA probes
    device_name = torch.cuda.get_device_name() if on_gpu else "cpu"
    peak = peak_flops(device_name, prof_cfg)
    config_dict = asdict(config)
    print(f"profile {prof_cfg.name} | device {device_name} | torch {torch.__version__} | compile {not args.no_compile}")
    print(f"model {config_dict} | {num_params / 1e6:.1f}M params | {flops_per_token:.3e} FLOPs/token")
    print(f"batch {device_batch} x {seq_len} x {accum_steps} accumulation = {total_batch} tokens/step")

    if args.real_tokens:
        from common.evaluate import eval_rows
        rows = torch.from_numpy(eval_rows(prof_cfg)[:accum_steps * device_batch].astype("int64")).to(device)
        batches = [(r[:, :-1].contiguous(), r[:, 1:].contiguous()) for r in rows.split(device_batch)]
    else:
        batches = [(torch.randint(args.vocab, (device_batch, seq_len), dtype=torch.int64, device=device),
                    torch.randint(args.vocab, (device_batch, seq_len), dtype=torch.int64, device=device))
                   for _ in range(accum_steps)]
    total_steps = args.warmup + args.steps + 3 + args.profiled_steps  # 3: queue_times' steps
    step = 0

    def one_step():
        nonlocal step
        canvas.train_step(model, optimizer, batches, min(step / total_steps, 1.0), step)
        if step == 0:  # as main(): the first step made the long-lived objects; keep the GC off them
            gc.collect()
            gc.freeze()
        step += 1

    t0 = time.perf_counter()
    timed(one_step, args.warmup, on_gpu)  # synchronises at the end
    print(f"warmup {args.warmup} steps: {time.perf_counter() - t0:.1f} s")
    step_times = timed(one_step, args.steps, on_gpu)
    step_ms = statistics.median(step_times)
    queue_ms = statistics.median(queue_times(one_step, 3, on_gpu))
    tok_s = total_batch / (step_ms / 1000)
    mfu = 100 * flops_per_token * tok_s / peak

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    with profile(activities=activities) as prof:
        profiled_times = timed(one_step, args.profiled_steps, on_gpu)
    n = args.profiled_steps
    rows = sorted(op_times(prof, on_gpu), key=lambda r: -r[1])
    busy_ms = sum(us for _, us, _ in rows) / 1000 / n
    categories = {cat: dict(ms=0.0, percent=0.0, count=0.0) for cat, _ in CATEGORIES}
    categories[OTHER] = dict(ms=0.0, percent=0.0, count=0.0)
    for name, us, count in rows:
        c = categories[category(name)]
        c["ms"] += us / 1000 / n
        c["count"] += count / n
    for c in categories.values():
        c["percent"] = 100 * c["ms"] / busy_ms if busy_ms else 0.0
    top = [dict(name=name, category=category(name), ms=us / 1000 / n, percent=100 * us / 1000 / n / busy_ms,
                count=count / n) for name, us, count in rows[:args.top]]
    opt_us = optimizer_us(prof, on_gpu)
    optimizer_ms = opt_us / 1000 / n if opt_us is not None else None

    what = "GPU kernels" if on_gpu else "CPU operators (self time)"
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=160)  # a log or a pipe: rich would wrap at 80 columns
    console.print(f"\nstep {step_ms:.1f} ms (median of {args.steps}: {', '.join(f'{t:.1f}' for t in step_times)}) | "
                  f"tok/s {tok_s:,.0f} | MFU {mfu:.1f}% of {peak / 1e12:g} TFLOP/s")
    console.print(f"{what}: busy {busy_ms:.1f} ms/step | idle {step_ms - busy_ms:.1f} ms/step "
                  f"({100 * (step_ms - busy_ms) / step_ms:.1f}% of the step) | profiled steps "
                  f"{statistics.median(profiled_times):.1f} ms (with the profiler's overhead)")
    if on_gpu:
        console.print(f"the CPU queues a step in {queue_ms:.1f} ms (median of 3, onto an idle GPU)")
    if optimizer_ms is not None:
        console.print(f"inside optimizer.step: {optimizer_ms:.1f} ms/step of "
                      f"{'the kernels it launched' if on_gpu else 'CPU time'}, any category")
    table = Table(title=f"{what} per step, by category")
    for col in ("category", "ms/step", "% of busy", "calls/step"):
        table.add_column(col, justify="left" if col == "category" else "right")
    for cat, c in categories.items():
        table.add_row(cat, f"{c['ms']:.2f}", f"{c['percent']:.1f}", f"{c['count']:.0f}")
    table.add_row("total (busy)", f"{busy_ms:.2f}", "100.0", f"{sum(c['count'] for c in categories.values()):.0f}",
                  style="bold")
    console.print(table)
    table = Table(title=f"top {len(top)} {what} by time")
    table.add_column("name", no_wrap=True, overflow="ellipsis", max_width=max(20, console.width - 60))
    for col in ("category", "ms/step", "% of busy", "calls/step"):
        table.add_column(col, justify="left" if col == "category" else "right", no_wrap=True)
    for k in top:
        table.add_row(k["name"], k["category"], f"{k['ms']:.2f}", f"{k['percent']:.1f}", f"{k['count']:.0f}")
    console.print(table)

    if args.json:
        record = dict(
            date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            device=device_name, torch=torch.__version__, canvas=str(args.canvas), profile=prof_cfg.name,
            compile=not args.no_compile, config=config_dict, num_params=num_params, flops_per_token=flops_per_token,
            peak_flops=peak, tokens_per_step=total_batch, accum_steps=accum_steps, steps=args.steps,
            step_ms=step_ms, step_ms_all=step_times, queue_ms=queue_ms, tokens_per_sec=tok_s, mfu_percent=mfu,
            timed=what, profiled_steps=n, profiled_step_ms=profiled_times, busy_ms=busy_ms, idle_ms=step_ms - busy_ms,
            optimizer_step_ms=optimizer_ms, categories=categories, top=top)
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
