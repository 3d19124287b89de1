"""Attention operator benchmarks (figures in docs/benchmarks.md, "Attention operator").

Three parts, each printed as a markdown table:

1. ``scaling``: forward+backward time and peak memory of the operator (c = 128, 2 heads,
   64 references, A_R, one image) at 32^2, 64^2, 128^2 and 236x240 tokens, against the naive
   formula with the explicit n x (n + r) matrix that a direct port computes. The naive
   one is skipped (and its need reported) when its estimated peak exceeds
   ``--naive-limit-gib``. Every measurement runs in a fresh subprocess so that its peak
   RSS (VmHWM, reset through /proc/self/clear_refs) is its own.
2. ``bytes``: bytes each rank hands to the batch-aware collective per training step
   (forward + backward) per attention block, all-reduce design vs all-gathering K and V,
   for 256^2 and 944x960 crops, 8 images per rank. Counted by wrapping
   ``torch.distributed.all_reduce`` / ``all_gather`` in 2 real gloo processes and recording
   every tensor passed; extrapolated to 8 and 64 ranks with the formulas printed below
   the table.
3. ``models``: AEANet vs U-Net forward+backward time at 256^2 crops, batch 8 (training
   mode, float32), runs interleaved so that both see the same machine load.

    python benchmarks/bench_attention.py [--only scaling|bytes|models]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aeatrain.collective import all_gather_tokens, span_global_batch  # noqa: E402
from aeatrain.models import build_model  # noqa: E402
from aeatrain.models.attention import AugmentedAttention  # noqa: E402
from tests.models.reference import naive_attention_bytes, naive_linear_attention  # noqa: E402

CHANNELS, HEADS, REFS = 128, 2, 64
TOKEN_SIZES = [(32, 32), (64, 64), (128, 128), (236, 240)]
GIB = 2**30


# ------------------------------------------------------------------ 1. scaling
def naive_operator(op: AugmentedAttention, x: torch.Tensor) -> torch.Tensor:
    """A_R of ``op`` computed as a direct port would: (Q K^T) V / (r + n), n x n built."""
    batch, c, height, width = x.shape
    d = op.head_dim

    def heads(t: torch.Tensor) -> torch.Tensor:  # (B, c, L) -> (B, heads, L, d)
        return t.reshape(t.shape[0], op.heads, d, -1).transpose(2, 3)

    key_input = torch.cat([op.refs.T.expand(batch, -1, -1), x.flatten(2)], dim=2)  # (B, c, r+n)
    q = heads(F.conv1d(x.flatten(2), op.q_proj.weight[..., 0], op.q_proj.bias)) * d**-0.5
    k = heads(F.conv1d(key_input, op.k_proj.weight[..., 0], op.k_proj.bias))
    v = heads(F.conv1d(key_input, op.v_proj.weight[..., 0], op.v_proj.bias))
    out = naive_linear_attention(q, k, v)  # (B, heads, n, d)
    out = out.transpose(2, 3).reshape(batch, c, height, width)
    return op.out_proj(out)


def naive_peak_estimate(height: int, width: int) -> int:
    """The n x (n + r) matrix and its gradient (float32, one image); 4.0 GiB at 128^2,
    where 4.05 GiB was measured."""
    n = height * width
    return 2 * naive_attention_bytes(1, HEADS, n, n + REFS, 4)


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def measure_one(kind: str, height: int, width: int, repeats: int) -> dict:
    """In THIS process: best-of-``repeats`` fwd+bwd CPU seconds and the peak extra RSS."""
    torch.manual_seed(0)
    op = AugmentedAttention(CHANNELS, heads=HEADS, num_refs=REFS).eval()
    x = torch.rand(1, CHANNELS, height, width, requires_grad=True)
    run = op if kind == "linear" else lambda t: naive_operator(op, t)
    run(x).sum().backward()  # warm-up
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # reset VmHWM to the current RSS
    before = _status_bytes("VmRSS:")
    seconds = []
    for _ in range(repeats):
        x.grad = None
        start = time.process_time()
        run(x).sum().backward()
        seconds.append(time.process_time() - start)
    return {"seconds": min(seconds), "peak_bytes": _status_bytes("VmHWM:") - before}


def measure_in_subprocess(kind: str, height: int, width: int, repeats: int, threads: int) -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}  # big buffers leave RSS on free
    args = [kind, height, width, repeats, threads]
    cmd = [sys.executable, __file__, "--child", *map(str, args)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_scaling(naive_limit_gib: float, threads: int) -> None:
    print(
        f"\n### Operator: forward+backward, one image, c=128, 2 heads, 64 references, "
        f"{threads} thread(s), best of N runs, CPU seconds\n"
    )
    print(
        "| tokens (h x w) | n | linear s | linear peak MiB | naive s | naive peak MiB | naive / linear time |"
    )
    print("|---|---|---|---|---|---|---|")
    rows = {}
    for height, width in TOKEN_SIZES:
        n = height * width
        repeats = max(3, 20 * 1024 // n)  # small sizes: more runs against timer noise
        lin = measure_in_subprocess("linear", height, width, repeats, threads)
        estimate = naive_peak_estimate(height, width)
        if estimate <= naive_limit_gib * GIB:
            naive = measure_in_subprocess("naive", height, width, repeats, threads)
            naive_cells = (
                f"{naive['seconds']:.4f}",
                f"{naive['peak_bytes'] / 2**20:.0f}",
                f"{naive['seconds'] / lin['seconds']:.1f}x",
            )
        else:
            naive = None
            naive_cells = (
                "does not fit",
                f"needs ~{estimate / GIB:.0f} GiB (est.)",
                "-",
            )
        rows[(height, width)] = (lin, naive)
        print(
            f"| {height} x {width} | {n} | {lin['seconds']:.4f} | "
            f"{lin['peak_bytes'] / 2**20:.0f} | " + " | ".join(naive_cells) + " |"
        )
    _print_growth(rows)


def _print_growth(rows: dict) -> None:
    small, big = rows[(32, 32)], rows[(128, 128)]
    lin_ratio = big[0]["seconds"] / small[0]["seconds"]
    line = f"\n16x more tokens (32^2 -> 128^2): linear time x{lin_ratio:.1f}"
    if big[1] is not None:
        line += f", naive time x{big[1]['seconds'] / small[1]['seconds']:.1f}"
    print(line)


# -------------------------------------------------------------------- 2. bytes
def _record_collectives(log: list) -> None:
    """Wrap dist.all_reduce / all_gather: log (op, bytes sent, bytes received) per call."""
    import torch.distributed as dist

    real_reduce, real_gather = dist.all_reduce, dist.all_gather

    def all_reduce(tensor, *args, **kwargs):
        size = tensor.numel() * tensor.element_size()
        log.append(("all_reduce", size, size))
        return real_reduce(tensor, *args, **kwargs)

    def all_gather(tensor_list, tensor, *args, **kwargs):
        sent = tensor.numel() * tensor.element_size()
        log.append(("all_gather", sent, sum(t.numel() * t.element_size() for t in tensor_list)))
        return real_gather(tensor_list, tensor, *args, **kwargs)

    dist.all_reduce, dist.all_gather = all_reduce, all_gather


def _bytes_worker(rank: int, port: int, out_file: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    results = {}
    for crop in [(256, 256), (944, 960)]:
        tokens = (crop[0] // 4, crop[1] // 4)
        results[f"linear {crop}"] = _count(lambda t=tokens: _linear_step(t))
        results[f"gather {crop}"] = _count(lambda t=tokens: _gather_step(t))
    # The softmax operator itself hands the collective exactly what _gather_step does:
    # compared at a crop where the whole softmax operator is cheap.
    results["softmax op (32, 32)"] = _count(lambda: _softmax_op_step((8, 8)))
    results["gather (32, 32)"] = _count(lambda: _gather_step((8, 8)))
    if rank == 0:
        Path(out_file).write_text(json.dumps(results))
    dist.destroy_process_group()


def _count(step: Callable[[], None]) -> list:
    log: list = []
    import torch.distributed as dist

    saved = dist.all_reduce, dist.all_gather
    _record_collectives(log)
    try:
        step()
    finally:
        dist.all_reduce, dist.all_gather = saved
    return log


def _linear_step(tokens: tuple[int, int]) -> None:
    """A real training step of the linear operator: 8 images per rank (4 batch-aware)."""
    torch.manual_seed(0)
    op = AugmentedAttention(CHANNELS, heads=HEADS, num_refs=REFS).train()
    span_global_batch(op)  # as the trainer: the batch-aware group spans both ranks
    x = torch.rand(8, CHANNELS, *tokens, requires_grad=True)
    op(x).sum().backward()


def _gather_step(tokens: tuple[int, int]) -> None:
    """The softmax path's collective with the tensor it is given: (4 n, 2 c) float32.

    The whole softmax operator is too slow on a CPU at 944x960 (4 x 56,640 queries
    against 453,120 gathered keys); the collective alone is what is counted.
    """
    n = tokens[0] * tokens[1]
    local = torch.rand(4 * n, 2 * CHANNELS, requires_grad=True)  # K and V of 4 images
    all_gather_tokens(local).sum().backward()


def _softmax_op_step(tokens: tuple[int, int]) -> None:
    torch.manual_seed(0)
    op = AugmentedAttention(CHANNELS, heads=HEADS, num_refs=REFS, normalize="softmax").train()
    span_global_batch(op)
    x = torch.rand(8, CHANNELS, *tokens, requires_grad=True)
    op(x).sum().backward()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bench_bytes() -> None:
    import tempfile

    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        out_file = str(Path(tmp) / "bytes.json")
        mp.spawn(_bytes_worker, args=(_free_port(), out_file), nprocs=2, join=True)
        results = json.loads(Path(out_file).read_text())
    assert results["softmax op (32, 32)"] == results["gather (32, 32)"], results
    _print_bytes(results)


def _print_bytes(results: dict) -> None:
    print("\n### Batch-aware collective: bytes per rank per step per attention block\n")
    print("Measured with 2 gloo ranks, 8 images per rank (4 batch-aware), float32.\n")
    print(
        "| crop | design | tensors passed at 2 ranks (fwd, bwd) | sent per rank, 8 ranks "
        "| sent per rank, 64 ranks |"
    )
    print("|---|---|---|---|---|")
    for crop in ["(256, 256)", "(944, 960)"]:
        for design, key, sent in [
            ("all-reduce S, m", "linear", _reduce_design_sent),
            ("all-gather K, V", "gather", _gather_design_sent),
        ]:
            log = results[f"{key} {crop}"]
            calls = ", ".join(f"{op} {_fmt(size)}" for op, size, _ in log)
            cells = [_fmt(sent(log, world)) for world in (8, 64)]
            print(f"| {crop} | {design} | {calls} | " + " | ".join(cells) + " |")
    print(
        "\nSent per rank at W ranks with ring algorithms (the usual NCCL/gloo choice): an "
        "all-reduce of B bytes sends 2 (W-1)/W B, an all-gather of P bytes per rank sends "
        "(W-1) P. All-reduce design: B = the two d x d summaries (fwd, bwd), independent "
        "of W. All-gather design: the size exchange (8 B) and K, V (P bytes) forward, and "
        "backward the all-reduce of the gathered gradient, W P bytes: "
        "(W-1) (8 + P) + 2 (W-1) P."
    )


def _reduce_design_sent(log: list, world: int) -> float:
    assert [op for op, _, _ in log] == ["all_reduce", "all_reduce"], log
    return sum(2 * (world - 1) / world * size for _, size, _ in log)


def _gather_design_sent(log: list, world: int) -> float:
    ops = [op for op, _, _ in log]
    assert ops == ["all_gather", "all_gather", "all_reduce"], log
    size_bytes, piece, gathered_grad = log[0][1], log[1][1], log[2][1]
    assert gathered_grad == 2 * piece  # measured at 2 ranks: the grad of 2 pieces
    return (world - 1) * (size_bytes + piece) + 2 * (world - 1) / world * (world * piece)


def _fmt(nbytes: float) -> str:
    for unit, size in (("GiB", GIB), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= size:
            return f"{nbytes / size:.1f} {unit}"
    return f"{nbytes:.0f} B"


# ------------------------------------------------------------------- 3. models
def bench_models(repeats: int, threads: int) -> None:
    """Interleaved runs; CPU seconds of this process (thread time summed) are the figure
    that other jobs on a shared machine disturb least; wall seconds are shown too."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    models = {name: build_model(name).train() for name in ("unet", "gvtnet", "aeanet")}
    x = torch.rand(8, 1, 256, 256)
    cpu: dict[str, list[float]] = {name: [] for name in models}
    wall: dict[str, list[float]] = {name: [] for name in models}
    for model in models.values():  # warm-up
        model(x).abs().mean().backward()
    for _ in range(repeats):
        for name, model in models.items():
            model.zero_grad(set_to_none=True)
            start_cpu, start_wall = time.process_time(), time.perf_counter()
            model(x).abs().mean().backward()
            cpu[name].append(time.process_time() - start_cpu)
            wall[name].append(time.perf_counter() - start_wall)
    print(
        f"\n### Models, forward+backward, 256^2 crops, batch 8, float32, training mode, "
        f"{threads} thread(s)\n"
    )
    print("| model | median CPU s | min CPU s | median wall s | runs | CPU time / unet |")
    print("|---|---|---|---|---|---|")
    unet = statistics.median(cpu["unet"])
    for name in models:
        med = statistics.median(cpu[name])
        print(
            f"| {name} | {med:.2f} | {min(cpu[name]):.2f} | "
            f"{statistics.median(wall[name]):.2f} | {repeats} | {med / unet:.3f} |"
        )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, height, width, repeats, threads = sys.argv[2], *map(int, sys.argv[3:7])
        torch.set_num_threads(threads)
        print(json.dumps(measure_one(kind, height, width, repeats)))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["scaling", "bytes", "models"])
    parser.add_argument("--naive-limit-gib", type=float, default=8.0)
    parser.add_argument("--model-repeats", type=int, default=5)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads for the timings (scaling, models)"
    )
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    if args.only in (None, "scaling"):
        bench_scaling(args.naive_limit_gib, args.threads)
    if args.only in (None, "bytes"):
        bench_bytes()
    if args.only in (None, "models"):
        bench_models(args.model_repeats, args.threads)


if __name__ == "__main__":
    main()
