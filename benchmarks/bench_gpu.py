"""Training speed on one GPU: step time, images/s, peak memory and FLOP utilisation.

For unet, gvtnet and aeanet (their shipped configs: base 32 channels, 64 references) at
the paper's setting (batch 8 of 256x256) and at full resolution (batch 1 of 944x960),
each in float32, bf16 autocast, bf16 + channels_last, bf16 + torch.compile and bf16 +
torch.compile with CUDA graphs (``mode="reduce-overhead"``: the shapes are static). A
step is forward, L1 loss, backward and Adam (fused on CUDA), on a fixed batch already on
the device: the loader is measured on its own, as random crops per second from a
synthetic dataset with 0 and N worker threads (pinned batches on CUDA), against the
GPU's demand (the fastest setting's images/s at that size). Then 200 steps of real
loader batches in float32 and in the fastest setting, from the same initial weights:
their loss curves, and whether the fastest one keeps the float32 curve (mean loss of the
last quarter within ``CURVE_TOLERANCE``).

FLOPs per step come from ``torch.utils.flop_counter.FlopCounterMode`` (one float32
forward + backward; the optimizer's few FLOPs are left out). Utilisation (MFU) is
FLOPs / step time / the card's dense bf16 peak (PEAK_BF16_TFLOPS, a datasheet table, or
``--peak-tflops``), for every setting alike, float32 included (cuDNN runs its
convolutions in TF32). The projected wall time of the paper's 120,000 steps is the
fastest setting's step time times 120,000.

Every figure goes into one JSON (``--out``), rewritten after each measurement, so a run
stopped by a time limit keeps what it measured; ``--budget-seconds`` stops starting new
measurements in time (the rest are listed under ``skipped``). A setting that fails (a
torch.compile error, out of memory) is recorded with its error; the others still run.

    python benchmarks/bench_gpu.py --out OUT/bench_gpu.json [--budget-seconds 240]
    python benchmarks/bench_gpu.py --device cpu --quick --out /tmp/b.json   # smoke run

``--quick``: tiny models (base 8 channels, 8 references), tiny shapes and few steps, for
a smoke test on the CPU in seconds; its figures say nothing about a GPU. ``--shapes
paper`` and ``--steps-only`` (no loader, no loss curves) make the short warm-up that
launch/gpu_compare.sh plans its training runs from.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn import functional
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aeatrain.config.load import load_config  # noqa: E402
from aeatrain.data import loader  # noqa: E402
from aeatrain.files.atomic import atomic_write_text  # noqa: E402
from aeatrain.models import build_model  # noqa: E402
from aeatrain.training.optim import build_optimizer  # noqa: E402
from benchmarks.bench_loader import crops_per_second  # noqa: E402
from tests.datasets import make_dataset  # noqa: E402

MODELS = ("unet", "gvtnet", "aeanet")
PAPER_STEPS = 120_000
CURVE_TOLERANCE = 0.05  # relative difference of the last quarter's mean loss
# Dense bf16 tensor-core peaks from the vendors' datasheets, TFLOP/s; first match wins.
PEAK_BF16_TFLOPS = (
    ("H200 NVL", 835.0),
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
)


@dataclass(frozen=True)
class Shape:
    name: str
    batch: int
    height: int
    width: int


@dataclass(frozen=True)
class Setting:
    name: str
    bf16: bool = False
    channels_last: bool = False
    compile_mode: str | None = None  # torch.compile mode; None = eager
    cuda_only: bool = False


SETTINGS = (
    Setting("float32"),
    Setting("bf16", bf16=True),
    Setting("bf16+channels_last", bf16=True, channels_last=True),
    Setting("bf16+compile", bf16=True, compile_mode="default"),
    Setting("bf16+compile+cudagraphs", bf16=True, compile_mode="reduce-overhead", cuda_only=True),
)
FULL_SHAPES = (Shape("paper", 8, 256, 256), Shape("full", 1, 944, 960))
QUICK_SHAPES = (Shape("paper", 2, 32, 32), Shape("full", 1, 48, 64))


class Budget:
    """Wall-clock budget: a measurement starts only if its estimate still fits."""

    def __init__(self, seconds: float):
        self.deadline = time.perf_counter() + seconds

    def fits(self, estimate_seconds: float) -> bool:
        return time.perf_counter() + estimate_seconds < self.deadline


# ------------------------------------------------------------------------ the step


def model_config(name: str, quick: bool):
    overrides = ["--model.base_channels", "8"] if quick else []
    if quick and name == "aeanet":
        overrides += ["--model.num_refs", "8"]
    return load_config(ROOT / "configs" / f"{name}.yaml", overrides)


def build(name: str, quick: bool, setting: Setting, device: torch.device):
    """(model, fused Adam where CUDA, the callable that runs the forward) at seed 0."""
    cfg = model_config(name, quick)
    torch.manual_seed(0)
    model = build_model(name, **cfg.model.build_kwargs()).to(device).train()
    if setting.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model.parameters(), cfg.optim, fused=device.type == "cuda")
    forward = model
    if setting.compile_mode is not None:
        torch._dynamo.reset()  # else past 8 models dynamo silently runs the rest eagerly
        forward = torch.compile(model, mode=setting.compile_mode)
    return model, optimizer, forward


def train_step(forward, optimizer, setting: Setting, lr: torch.Tensor, hr: torch.Tensor):
    """One step as the trainer takes it (aeatrain/train.py); returns the loss on the device."""
    autocast = torch.autocast(lr.device.type, dtype=torch.bfloat16, enabled=setting.bf16)
    with autocast:
        prediction = forward(lr)  # (B, 1, h, w)
    loss = functional.l1_loss(prediction.float(), hr)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def inputs(shape: Shape, setting: Setting, device: torch.device):
    generator = torch.Generator().manual_seed(1)
    size = (shape.batch, 1, shape.height, shape.width)
    lr = torch.rand(size, generator=generator).to(device)
    hr = torch.rand(size, generator=generator).to(device)
    if setting.channels_last:
        lr = lr.contiguous(memory_format=torch.channels_last)
    return lr, hr


def step_flops(name: str, quick: bool, shape: Shape, device: torch.device) -> int:
    """FLOPs of one float32 forward + backward (multiply-adds count 2)."""
    model, _, _ = build(name, quick, SETTINGS[0], device)
    lr, hr = inputs(shape, SETTINGS[0], device)
    counter = FlopCounterMode(display=False)
    with counter:
        functional.l1_loss(model(lr), hr).backward()
    return int(counter.get_total_flops())


def time_steps(name, quick, shape, setting, device, steps, warmup) -> dict:
    """Median-free timing: ``warmup`` steps (compilation, autotuning), then ``steps``
    steps between two device synchronisations."""
    _, optimizer, forward = build(name, quick, setting, device)
    lr, hr = inputs(shape, setting, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    compile_started = time.perf_counter()
    for _ in range(warmup):
        train_step(forward, optimizer, setting, lr, hr)
    synchronize(device)
    warmup_seconds = time.perf_counter() - compile_started
    started = time.perf_counter()
    for _ in range(steps):
        loss = train_step(forward, optimizer, setting, lr, hr)
    synchronize(device)
    seconds = (time.perf_counter() - started) / steps
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {
        "step_seconds": seconds,
        "images_per_second": shape.batch / seconds,
        "peak_memory_mib": peak,
        "warmup_seconds": warmup_seconds,
        "final_loss": float(loss),
    }


# ------------------------------------------------------------------------ the parts


def measure_steps(args, device, shapes, settings, peak_tflops, report, budget, models) -> None:
    """Every (model, shape, setting) given, in that order; see :func:`main` for the order."""
    for setting in settings:
        for shape in shapes:
            for name in models:
                estimate = args.compile_estimate_seconds if setting.compile_mode else 5.0
                label = f"steps {name} {shape.name} {setting.name}"
                if not budget.fits(estimate):
                    report["skipped"].append(f"{label}: time budget")
                    continue
                row = {"model": name, "shape": shape.name, "batch": shape.batch,
                       "height": shape.height, "width": shape.width, "setting": setting.name}  # fmt: skip
                key = f"{name}/{shape.name}"
                if key not in report["flops_per_step"]:
                    report["flops_per_step"][key] = step_flops(name, args.quick, shape, device)
                flops = report["flops_per_step"][key]
                try:
                    row.update(time_steps(name, args.quick, shape, setting, device,
                                          args.steps, args.warmup))  # fmt: skip
                except Exception as err:  # recorded; the other settings still run
                    row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                else:
                    row["tflops_per_second"] = flops / row["step_seconds"] / 1e12
                    row["mfu"] = (
                        None if peak_tflops is None else row["tflops_per_second"] / peak_tflops
                    )
                report["steps"].append(row)
                write(report, args.out)


def fastest(report: dict, shape_name: str, model: str | None = None) -> dict | None:
    rows = [
        r for r in report["steps"]
        if r["shape"] == shape_name and "error" not in r and model in (None, r["model"])
    ]  # fmt: skip
    return min(rows, key=lambda r: r["step_seconds"]) if rows else None


def measure_loader(args, device, shapes, root: Path, report, budget) -> None:
    """Crops/s of the real loader, 0 and N worker threads, against the GPU's demand."""
    workers = sorted({0, args.loader_workers})
    for shape in shapes:
        crop = shape.height if shape.name == "paper" else None  # None: the whole region
        best = fastest(report, shape.name)
        demand = None if best is None else best["images_per_second"]
        for count in workers:
            if not budget.fits(10.0):
                report["skipped"].append(f"loader {shape.name} {count} workers: time budget")
                continue
            batches = loader_batches(args.loader_steps, crop, shape.batch, count)
            rate, _, _ = crops_per_second(
                root, crop_size=crop, batch_size=shape.batch, steps=batches, warmup=batches,
                num_workers=count, pin_memory=device.type == "cuda",
            )  # fmt: skip
            report["loader"].append({
                "shape": shape.name, "crop": crop or "whole region", "workers": count,
                "crops_per_second": rate, "gpu_demand_images_per_second": demand,
                "keeps_up": None if demand is None else rate >= demand,
            })  # fmt: skip
            write(report, args.out)


def loader_batches(least: int, crop: int | None, batch: int, workers: int) -> int:
    """Batches to time, after as many untimed ones: at least twice what ``workers`` threads
    can hold ready (each keeps one finished pool epoch and makes the next), so that the
    rate is what they make, not what they had made before the clock started."""
    crops_per_region = loader.MAX_CROPS_PER_REGION if crop is not None else 1  # at most
    per_epoch = math.ceil(loader.DEFAULT_POOL_SIZE * crops_per_region / batch)
    return max(least, 4 * max(1, workers) * per_epoch)


def loss_curve(name, quick, setting, device, root, crop, batch, steps) -> list[float]:
    _, optimizer, forward = build(name, quick, setting, device)
    stream = loader.train_loader(root, crop_size=crop, batch_size=batch, seed=0,
                                 num_workers=2, pin_memory=device.type == "cuda")  # fmt: skip
    losses = []
    try:
        memory = torch.channels_last if setting.channels_last else torch.contiguous_format
        for _ in range(steps):
            crops = next(stream)
            lr = crops["lr"].to(device, memory_format=memory, non_blocking=True)
            hr = crops["hr"].to(device, non_blocking=True)
            losses.append(train_step(forward, optimizer, setting, lr, hr))
    finally:
        stream.close()
    return torch.stack(losses).tolist()  # one read at the end


def compare_curves(args, device, shape: Shape, root: Path, report, budget) -> None:
    """Per model: float32 against the model's fastest setting at the paper's shape."""
    by_name = {s.name: s for s in SETTINGS}
    for name in args.models:
        best = fastest(report, shape.name, name)
        done = report["loss_curves"].get(name, {}).get("candidate")
        if best is None or best["setting"] == done:
            continue
        candidate = by_name[best["setting"]]
        estimate = 2 * args.curve_steps * best["step_seconds"] * 4 + 20
        if not budget.fits(estimate):
            report["skipped"].append(f"loss curves {name}: time budget")
            continue
        crop = shape.height
        curves = {  # one curve when float32 itself is the fastest
            s.name: loss_curve(
                name, args.quick, s, device, root, crop, shape.batch, args.curve_steps
            )
            for s in dict.fromkeys((SETTINGS[0], candidate))
        }
        quarter = max(1, args.curve_steps // 4)
        reference = statistics.fmean(curves["float32"][-quarter:])
        other = statistics.fmean(curves[candidate.name][-quarter:])
        difference = abs(other - reference) / reference
        report["loss_curves"][name] = {
            "steps": args.curve_steps, "candidate": candidate.name, "curves": curves,
            "last_quarter_mean": {"float32": reference, candidate.name: other},
            "relative_difference": difference, "keeps_float32_curve": difference <= CURVE_TOLERANCE,
        }  # fmt: skip
        write(report, args.out)


def projection(report: dict) -> dict:
    """Wall time of the paper's 120,000 steps at each model's fastest paper-shape setting."""
    out = {}
    for name in {r["model"] for r in report["steps"]}:
        best = fastest(report, "paper", name)
        if best is not None:
            out[name] = {"setting": best["setting"],
                         "minutes": best["step_seconds"] * PAPER_STEPS / 60}  # fmt: skip
    return out


# ------------------------------------------------------------------------ report


def device_info(device: torch.device, peak_option: float | None) -> tuple[dict, float | None]:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        table = next((peak for key, peak in PEAK_BF16_TFLOPS if key in name), None)
    else:
        name = f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"
        table = None
    peak = peak_option if peak_option is not None else table
    source = "--peak-tflops" if peak_option is not None else ("table" if table else None)
    info = {
        "name": name, "type": device.type, "torch": torch.__version__,
        "cuda": torch.version.cuda, "peak_bf16_tflops": peak, "peak_source": source,
    }  # fmt: skip
    return info, peak


def write(report: dict, out: Path) -> None:
    report["projection_paper_steps"] = projection(report)
    atomic_write_text(out, json.dumps(report, indent=1, allow_nan=True) + "\n", overwrite=True)


def summary(report: dict) -> str:
    """The table the log shows (and docs/benchmarks.md takes)."""
    lines = [f"device: {report['device']['name']} (torch {report['device']['torch']})",
             "model   shape  setting                  s/step   img/s  peak MiB  TFLOP/s  MFU"]  # fmt: skip
    for r in report["steps"]:
        if "error" in r:
            lines.append(f"{r['model']:7} {r['shape']:6} {r['setting']:24} error: {r['error']}")
            continue
        memory = "-" if r["peak_memory_mib"] is None else f"{r['peak_memory_mib']:.0f}"
        mfu = "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        lines.append(
            f"{r['model']:7} {r['shape']:6} {r['setting']:24} {r['step_seconds']:.4f} "
            f"{r['images_per_second']:7.1f} {memory:>9} {r['tflops_per_second']:8.3g} {mfu:>5}"
        )
    for r in report["loader"]:
        demand = r["gpu_demand_images_per_second"]
        demand = "-" if demand is None else f"{demand:.0f}"
        lines.append(
            f"loader {r['shape']} {r['workers']} workers: {r['crops_per_second']:.0f} "
            f"crops/s (fastest step's demand {demand} images/s)"
        )
    for name, c in report["loss_curves"].items():
        lines.append(f"loss curve {name}: {c['candidate']} vs float32 over {c['steps']} steps: "
                     f"{100 * c['relative_difference']:.2f}% apart, keeps {c['keeps_float32_curve']}")  # fmt: skip
    if report["quick"]:
        lines.insert(0, "--quick: tiny models and sizes; no figure here is of the paper's setting")
    for name, p in () if report["quick"] else report["projection_paper_steps"].items():
        lines.append(
            f"paper's {PAPER_STEPS} steps, {name}: {p['minutes']:.1f} min ({p['setting']})"
        )
    lines += [f"skipped: {item}" for item in report["skipped"]]
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="the JSON of every figure")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, few steps (smoke run)")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--shapes", nargs="+", choices=[s.name for s in FULL_SHAPES],
                        default=[s.name for s in FULL_SHAPES], help="default: both")  # fmt: skip
    parser.add_argument("--steps-only", action="store_true",
                        help="time the steps only: no loader, no loss curves")  # fmt: skip
    parser.add_argument("--settings", nargs="+", choices=[s.name for s in SETTINGS],
                        help="default: all on CUDA; the eager ones on the CPU")  # fmt: skip
    parser.add_argument("--steps", type=int, help="timed steps (default 20; quick 2)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default 5; quick 1)")
    parser.add_argument("--curve-steps", type=int, help="loss-curve steps (default 200; quick 4)")
    parser.add_argument(
        "--loader-steps", type=int, help="loader batches timed, at least (default 100; quick 20)"
    )
    parser.add_argument("--loader-workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--peak-tflops", type=float, help="the card's dense bf16 peak, TFLOP/s")
    parser.add_argument("--budget-seconds", type=float, default=240.0)
    parser.add_argument("--compile-estimate-seconds", type=float, default=60.0)
    args = parser.parse_args(argv)
    defaults = (2, 1, 4, 20) if args.quick else (20, 5, 200, 100)
    for key, default in zip(("steps", "warmup", "curve_steps", "loader_steps"), defaults):
        if getattr(args, key) is None:
            setattr(args, key, default)
    return args


def chosen_settings(args, device: torch.device) -> list[Setting]:
    if args.settings:
        return [
            s
            for s in SETTINGS
            if s.name in args.settings and (device.type == "cuda" or not s.cuda_only)
        ]
    if device.type == "cuda":
        return list(SETTINGS)
    return [s for s in SETTINGS if s.compile_mode is None]  # inductor on a CPU: minutes


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_gpu: no CUDA device visible (use --device cpu --quick for a smoke run)",
              file=sys.stderr)  # fmt: skip
        return 2
    started = time.perf_counter()
    budget = Budget(args.budget_seconds)
    info, peak = device_info(device, args.peak_tflops)
    report = {"device": info, "quick": args.quick, "timed_steps": args.steps, "warmup": args.warmup,
              "steps": [], "flops_per_step": {}, "loader": [], "loss_curves": {}, "skipped": []}  # fmt: skip
    shapes = [s for s in (QUICK_SHAPES if args.quick else FULL_SHAPES) if s.name in args.shapes]
    if args.steps_only:
        settings = chosen_settings(args, device)
        measure_steps(args, device, shapes, settings, peak, report, budget, args.models)
    else:
        measure_all(args, device, shapes, peak, report, budget)
    report["wall_seconds"] = time.perf_counter() - started
    write(report, args.out)
    print(summary(report))
    return 0


def measure_all(args, device, shapes, peak, report, budget) -> None:
    """Steps in every setting, the loader and the loss curves, on a dataset of its own."""
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as tmp:
        size = {"pairs": 2} if args.quick else {"pairs": 8, "width": 1280, "height": 944}
        root = make_dataset(Path(tmp) / "DATA", **size)
        # Cheap figures first, so that a short budget still gets them: eager steps, the
        # loader, the curves of the fastest eager setting; then compiled steps (a minute
        # or more of compilation each), the paper's shape and AEANet first, and a curve
        # for any that won.
        settings = chosen_settings(args, device)
        eager = [s for s in settings if s.compile_mode is None]
        compiled = [s for s in settings if s.compile_mode is not None]
        measure_steps(args, device, shapes, eager, peak, report, budget, args.models)
        measure_loader(args, device, shapes, root, report, budget)
        compare_curves(args, device, shapes[0], root, report, budget)
        paper_model_first = sorted(args.models, key=lambda name: name != "aeanet")
        for shape in shapes:
            measure_steps(args, device, [shape], compiled, peak, report, budget, paper_model_first)
            if shape is shapes[0]:
                compare_curves(args, device, shapes[0], root, report, budget)


if __name__ == "__main__":
    sys.exit(main())
