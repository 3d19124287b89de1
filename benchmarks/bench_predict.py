"""Prediction on the CPU: aeatrain's path against onnxruntime on the same weights and threads.

    python benchmarks/bench_predict.py [--models aeanet,unet,edsr,rcan] [--size 944x1280]
        [--threads 1,2] [--repeats 3] [--eager] [--no-memory] [--big 4096] [--big-model unet --big-channels 8]

Part 1, per model (published sizes, seeded weights with BatchNorm statistics away from the
identity) and thread count: ``aeatrain.protocol.inference.predict_full`` on one ``--size`` image
("ours": whatever backend it picks, onnxruntime for these sizes) against the same network
exported plainly (``torch.onnx.export``, opset 17, the image's static shape: see
:func:`ort_session`) and run in an onnxruntime session with the same number of threads
("ort"). Times: both sides in one process, run after run, ``--repeats`` times each,
medians (wall, and the ratio of CPU seconds); ``--eager`` adds eager PyTorch (the
onnxruntime backend off) to the rotation. Setup (export + session) and peak RSS: each
side once more in a process of its own (``--no-memory`` skips these).

Part 2, ``--big`` (0 skips it): ``python -m aeatrain.predict`` on a 16-bit ``--big`` x
``--big`` input at scale 1 (tiles of 1024, overlap 128, the output streamed into a TIFF)
and on one twice as wide and high, with a ``--big-model`` run of ``--big-channels``: wall
seconds and peak RSS of the whole command (``os.wait4``), the growth from the small to the
large image, and onnxruntime's plain network over the same 1024 tiles (no blending, no
writing) for comparison.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def build(name: str, channels: int | None = None):
    """The published-size network (``channels``: a U-Net family base width instead),
    seed 0, BatchNorm statistics as after training (away from the identity)."""
    import torch

    from aeatrain.models import build_model

    torch.manual_seed(0)
    model = build_model(name, **({"base_channels": channels} if channels else {}))
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.8, 1.2)
    return model.eval()


def ort_session(model, shape: tuple[int, ...], threads: int):
    """The plain network in an onnxruntime session (default optimisation) for inputs of
    ``shape``: traced on a 64 x 64 image (tracing runs the model once: at the full size
    that is minutes for RCAN), its input and output then declared of ``shape``, so
    onnxruntime optimises a static-shape graph."""
    import onnx
    import onnxruntime
    import torch

    buffer = io.BytesIO()
    axes = {name: {0: "n", 2: "h", 3: "w"} for name in ("image", "prediction")}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 1, 64, 64),), buffer, dynamo=False,
                          opset_version=17, input_names=["image"], output_names=["prediction"],
                          dynamic_axes=axes)  # fmt: skip
    graph = onnx.load_from_string(buffer.getvalue())
    for value in (graph.graph.input[0], graph.graph.output[0]):
        for dim, size in zip(value.type.tensor_type.shape.dim, shape):
            dim.ClearField("dim_param")
            dim.dim_value = size
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(graph.SerializeToString(), options,
                                        providers=["CPUExecutionProvider"])  # fmt: skip


def worker(side: str, name: str, threads: int, height: int, width: int) -> dict:
    """One side, one process: setup seconds, one prediction's seconds, peak RSS."""
    import numpy as np
    import torch

    from aeatrain.protocol import inference

    torch.set_num_threads(threads)
    model = build(name)
    image = np.random.default_rng(0).random((height, width), dtype=np.float32)
    start = time.perf_counter()
    if side == "ours":
        with inference.eval_mode(model):
            inference.cpu_session(model, image.size)  # what predict_full's first call does
        setup = time.perf_counter() - start
        start = time.perf_counter()
        inference.predict_full(model, image)
    else:
        session = ort_session(model, (1, 1, height, width), threads)
        setup = time.perf_counter() - start
        start = time.perf_counter()
        session.run(None, {"image": image[None, None]})
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    return {"setup_s": setup, "seconds": seconds, "peak_mib": peak}


def pair_worker(
    name: str, threads: int, height: int, width: int, repeats: int, eager: int = 0
) -> dict:
    """Both sides in one process, run after run (ours, ort, ours, ort...): load that
    comes and goes on a shared machine hits both alike. Median wall and CPU seconds.
    ``eager``: eager PyTorch too (``predict_full`` with the onnxruntime backend off)."""
    import numpy as np
    import torch

    from aeatrain.protocol import inference

    torch.set_num_threads(threads)
    model = build(name)
    image = np.random.default_rng(0).random((height, width), dtype=np.float32)
    session = ort_session(model, (1, 1, height, width), threads)
    with inference.eval_mode(model):
        inference.cpu_session(model, image.size)
    runs = {
        "ours": lambda: inference.predict_full(model, image),
        "ort": lambda: session.run(None, {"image": image[None, None]}),
    }
    if eager:

        def eager_run() -> None:
            saved, inference.ONNX_MIN_WORK = inference.ONNX_MIN_WORK, float("inf")
            try:
                inference.predict_full(model, image)
            finally:
                inference.ONNX_MIN_WORK = saved

        runs["eager"] = eager_run
    wall: dict[str, list[float]] = {side: [] for side in runs}
    cpu: dict[str, list[float]] = {side: [] for side in runs}
    for _ in range(repeats):
        for side, run in runs.items():
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            run()
            wall[side].append(time.perf_counter() - start_wall)
            cpu[side].append(time.process_time() - start_cpu)
    return {f"{side}_{kind}": statistics.median(values[side]) for kind, values in
            (("s", wall), ("cpu_s", cpu)) for side in runs}  # fmt: skip


def tiles_worker(channels: int, side: int, threads: int) -> dict:
    """onnxruntime's plain network over the 1024 tiles of a side x side image."""
    import numpy as np
    import torch

    from aeatrain.protocol.inference import tile_spans

    torch.set_num_threads(threads)
    model = build("unet", channels)
    spans = tile_spans(side, tile=1024, overlap=128)
    session = ort_session(model, (1, 1, 1024, 1024), threads)
    image = np.random.default_rng(0).random((side, side), dtype=np.float32)
    start = time.perf_counter()
    for r0, _ in spans:
        for c0, _ in spans:
            tile = np.ascontiguousarray(image[None, None, r0 : r0 + 1024, c0 : c0 + 1024])
            session.run(None, {"image": tile})
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    return {"seconds": seconds, "peak_mib": peak}


def run_worker(argv: list[str]) -> dict:
    """This script in a fresh process; its JSON answer."""
    proc = subprocess.run([sys.executable, __file__, "--worker", *argv], capture_output=True,
                          text=True, check=True, cwd=REPO)  # fmt: skip
    return json.loads(proc.stdout.strip().splitlines()[-1])


def timed_command(command: list[str], threads: int) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of a command, from the kernel's accounting of it."""
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    proc = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(command)} failed")
    return time.perf_counter() - start, usage.ru_maxrss / 2**10


def compare_models(args) -> None:
    height, width = (int(v) for v in args.size.split("x"))
    print(f"## {height} x {width}, one image, medians of {args.repeats} interleaved runs\n")
    eager = "eager s | eager / ort | " if args.eager else ""
    print("| model | threads | ours s | ort s | ours / ort | ours / ort, CPU s | " + eager +
          "ours setup s | ort setup s | ours peak MiB | ort peak MiB |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * (2 * args.eager))
    for threads in args.threads:
        for name in args.models:
            size = [str(threads), str(height), str(width)]
            pair = run_worker(["pair", name, *size, str(args.repeats), str(int(args.eager))])
            alone = {side: run_worker([side, name, *size]) if args.memory else None
                     for side in ("ours", "ort")}  # fmt: skip
            cells = [f"{pair['ours_s']:.2f}", f"{pair['ort_s']:.2f}",
                     f"{pair['ours_s'] / pair['ort_s']:.2f}",
                     f"{pair['ours_cpu_s'] / pair['ort_cpu_s']:.2f}"]  # fmt: skip
            if args.eager:
                cells += [f"{pair['eager_s']:.2f}", f"{pair['eager_s'] / pair['ort_s']:.2f}"]
            for key, form in (("setup_s", "{:.1f}"), ("peak_mib", "{:.0f}")):
                cells += [form.format(alone[s][key]) if alone[s] else "-" for s in alone]
            print(f"| {name} | {threads} | " + " | ".join(cells) + " |", flush=True)


def compare_big(args) -> None:
    import numpy as np
    import tifffile

    from tests.eval.helpers import make_run

    threads = max(args.threads)
    print(f"\n## predict, 16-bit, scale 1, {args.big_model} of base width {args.big_channels}, "
          f"{threads} threads\n")  # fmt: skip
    print("| output | predict s | predict peak MiB | ort over the tiles s | ort peak MiB |")
    print("|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        run = make_run(Path(tmp) / "run", model_name=args.big_model, scale=1.0,
                       base_channels=args.big_channels)  # fmt: skip
        peaks = []
        for side in (args.big, 2 * args.big):
            image = np.random.default_rng(0).integers(0, 65536, (side, side), dtype=np.uint16)
            tifffile.imwrite(Path(tmp) / f"in{side}.tif", image)
            del image
            command = [sys.executable, "-m", "aeatrain.predict", "--run", str(run),
                       "--input", f"{tmp}/in{side}.tif", "--output", f"{tmp}/out{side}",
                       "--tile", "1024", "--overlap", "128"]  # fmt: skip
            seconds, peak = timed_command(command, threads)
            peaks.append(peak)
            tiles = run_worker(["tiles", str(args.big_channels), str(side), str(threads)])
            print(f"| {side} x {side} | {seconds:.1f} | {peak:.0f} | {tiles['seconds']:.1f} "
                  f"| {tiles['peak_mib']:.0f} |", flush=True)  # fmt: skip
            (Path(tmp) / f"in{side}.tif").unlink()
        print(f"\npeak RSS {2 * args.big} / {args.big}: {peaks[1] / peaks[0]:.3f}")


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:
        kind, *rest = sys.argv[2:]
        if kind == "tiles":
            answer = tiles_worker(*(int(v) for v in rest))
        elif kind == "pair":
            name, *numbers = rest
            answer = pair_worker(name, *(int(v) for v in numbers))
        else:
            name, threads, height, width = rest
            answer = worker(kind, name, int(threads), int(height), int(width))
        print(json.dumps(answer))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="aeanet,unet,edsr,rcan")
    parser.add_argument("--size", default="944x1280", help="HxW of part 1's image")
    parser.add_argument("--threads", default=f"1,{os.cpu_count()}")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--eager", action="store_true",
                        help="time eager PyTorch too (the path before the onnxruntime backend)")  # fmt: skip
    parser.add_argument("--no-memory", dest="memory", action="store_false",
                        help="skip the one-side processes that give setup times and peak RSS")  # fmt: skip
    parser.add_argument("--big", type=int, default=4096, help="part 2's smaller side; 0: skip")
    parser.add_argument("--big-model", default="unet")
    parser.add_argument("--big-channels", type=int, default=8)
    args = parser.parse_args()
    args.models = [m for m in args.models.split(",") if m]
    args.threads = [int(t) for t in args.threads.split(",")]
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start\n")
    if args.models:
        compare_models(args)
    if args.big:
        compare_big(args)


if __name__ == "__main__":
    main()
