"""Validation curves of finished runs, scored with the paper's protocol at every checkpoint.

    python benchmarks/plot_curves.py --data DATA --out CURVES RUN [RUN ...]
        [--weights raw|ema] [--every STEPS] [--png CURVES/curves.png] [--device cpu]

For each finished RUN, every complete checkpoint ``RUN/checkpoints/step_N`` becomes a
snapshot run folder ``CURVES/snapshots/<run>/step_N`` (run.json and config.yaml of RUN,
the checkpoint's weights; with EMA on, also its EMA weights, which take the checkpoint's
BatchNorm statistics as the trainer's ``val_ema`` does), and one ``python -m
aeatrain.evaluate`` process scores all snapshots of the run (whole images, the test tiles,
``CURVES/eval/<run>-<weights>/metrics.json``; kept when it already lists the same steps).
A curve needs its checkpoints: train with ``--train.checkpoint_every`` at the curve's
spacing and ``--train.keep_checkpoints`` at least steps / checkpoint_every; ``--every``
scores only the checkpoints whose step it divides, and the last (each costs one
whole-image evaluation of DATA).

Writes ``CURVES/curves.json`` (dPSNR and dSSIM per run and step) and prints a markdown
table: one row per step, one column per run (dPSNR, dB), then each run's best point, its
end and the fall from the best to the end. ``--png`` draws the curves (needs matplotlib:
``pip install -e '.[bench]'``); the picture is generated, not versioned.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aeatrain.errors import UserError, run_cli  # noqa: E402
from aeatrain.files.atomic import atomic_write_text  # noqa: E402
from aeatrain.models import build_model  # noqa: E402
from aeatrain.protocol.metrics import read_metrics  # noqa: E402
from aeatrain.run import checkpoint as ckpt  # noqa: E402
from aeatrain.run.final import CONFIG_YAML, load_into, read_run_json, write_run_files  # noqa: E402

SEED_SUFFIX = re.compile(r"[-_](?:seed|s)(\d+)$")
CHECKPOINT_MODEL = "model.safetensors"  # accelerate's save_state: the model's state_dict
# The EMA parameters: registered with accelerate (its save_state pickles WeightEMA's
# state_dict, aeatrain/run/checkpoint.py), or, in checkpoints of version 1, a safetensors file.
CHECKPOINT_EMA = "custom_checkpoint_1.pkl"
CHECKPOINT_EMA_V1 = "ema.safetensors"


def ema_parameters(folder: Path) -> dict[str, torch.Tensor] | None:
    """The EMA parameters a checkpoint holds, or None when it has none."""
    if (folder / CHECKPOINT_EMA).is_file():
        return torch.load(folder / CHECKPOINT_EMA, map_location="cpu", weights_only=True)["shadow"]
    if (folder / CHECKPOINT_EMA_V1).is_file():
        return load_file(str(folder / CHECKPOINT_EMA_V1))
    return None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", metavar="RUN", help="finished run folders")
    parser.add_argument("--data", required=True, help="the DATA folder the runs trained on")
    parser.add_argument("--out", required=True, help="CURVES folder (snapshots, eval, json)")
    parser.add_argument("--weights", choices=("raw", "ema"), default="raw")
    parser.add_argument(
        "--every", type=int, default=1, help="only checkpoints at multiples of STEPS (+ the last)"
    )
    parser.add_argument("--png", help="draw the curves to this PNG (needs matplotlib)")
    parser.add_argument("--device", default="cpu", help="evaluate's --device (default cpu)")
    args = parser.parse_args(argv)
    if args.every < 1:
        raise UserError(f"--every {args.every}: must be at least 1")
    names = [Path(run).name for run in args.runs]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise UserError(f"runs named {twice[0]!r} twice: each run's folder name labels a curve")
    return args


def snapshot(run: Path, step: int, folder: Path, out: Path) -> Path:
    """A run folder holding checkpoint ``folder``'s weights (and EMA weights, if any)."""
    info = read_run_json(run)
    name, kwargs = info.model.name, info.model.kwargs
    raw = build_model(name, **kwargs)
    load_into(raw, load_file(str(folder / CHECKPOINT_MODEL)), folder / CHECKPOINT_MODEL)
    averaged, ema = None, ema_parameters(folder)
    if ema is not None:
        averaged = build_model(name, **kwargs)
        state = raw.state_dict()  # the checkpoint's BatchNorm statistics ...
        state.update(ema)  # ... with the EMA parameters
        load_into(averaged, state, folder)
    write_run_files(
        out, model=raw, model_name=name, model_kwargs=kwargs, scale=info.scale,
        bit_depths=info.bit_depths, dataset=info.dataset or {}, step=step,
        config_yaml=(run / CONFIG_YAML).read_text(encoding="utf-8"), ema_model=averaged,
    )  # fmt: skip
    return out


def checkpoints_of(run: Path, every: int = 1) -> list[tuple[int, Path]]:
    """The complete checkpoints of a finished run at multiples of ``every``, and its last."""
    read_run_json(run)  # a finished run folder, or one line naming what is wrong
    found = ckpt.complete_checkpoints(run)
    if not found:
        raise UserError(f"{run}: no complete checkpoint in {ckpt.checkpoints_root(run)}")
    return [(step, f) for step, f in found if step % every == 0 or step == found[-1][0]]


def evaluated_steps(metrics: Path) -> list[int] | None:
    if not metrics.is_file():
        return None
    return [row.runs[0].step for row in read_metrics(metrics).rows]


def curve(run: Path, args: argparse.Namespace) -> dict[int, dict[str, float]]:
    """{step: evaluate's summary} of every checkpoint of ``run``."""
    found = checkpoints_of(run, args.every)
    out = Path(args.out)
    eval_dir = out / "eval" / f"{run.name}-{args.weights}"
    metrics = eval_dir / "metrics.json"
    steps = [step for step, _ in found]
    if evaluated_steps(metrics) != steps:
        snaps = [
            snapshot(run, step, folder, out / "snapshots" / run.name / folder.name)
            for step, folder in found
        ]
        command = [
            sys.executable, "-m", "aeatrain.evaluate", "--data", args.data,
            "--weights", args.weights, "--device", args.device, "--out", str(eval_dir),
        ]  # fmt: skip
        for snap in snaps:
            command += ["--run", str(snap)]
        subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return {row.runs[0].step: row.summary for row in read_metrics(metrics).rows}


def fall(points: dict[int, float]) -> tuple[int, float, float]:
    """(step of the best point, best, best - end): how far the curve fell after its best."""
    best_step = max(points, key=points.get)
    end = points[max(points)]
    return best_step, points[best_step], points[best_step] - end


def markdown(curves: dict[str, dict[int, float]]) -> str:
    names = list(curves)
    steps = sorted({step for points in curves.values() for step in points})
    lines = [
        "| step | " + " | ".join(names) + " |",
        "|---:|" + "---:|" * len(names),
    ]
    for step in steps:
        cells = [f"{curves[n][step]:+.3f}" if step in curves[n] else "-" for n in names]
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    summaries = [fall(curves[n]) for n in names]
    lines.append("| best (step) | " + " | ".join(f"{b:+.3f} ({s})" for s, b, _ in summaries) + " |")
    lines.append("| best - end | " + " | ".join(f"{d:.3f}" for _, _, d in summaries) + " |")
    return "\n".join(lines)


def model_and_seed(name: str) -> tuple[str, int]:
    """``unet-pooled-seed1`` -> (``unet-pooled``, 1): one colour per model, a line style per
    seed (``-seed<k>`` as the suite names runs, or ``-s<k>``); (name, 0) without a seed."""
    match = SEED_SUFFIX.search(name)
    return (name[: match.start()], int(match.group(1))) if match else (name, 0)


def draw(curves: dict[str, dict[int, float]], png: Path, weights: str) -> None:
    try:
        import matplotlib
    except ImportError:
        raise UserError("--png needs matplotlib: pip install -e '.[bench]'") from None
    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(7, 4.5), dpi=120)
    colours, styles = {}, ("-", "--", ":", "-.")
    for name, points in curves.items():
        model, seed = model_and_seed(name)
        colour = colours.setdefault(model, f"C{len(colours) % 10}")
        steps = sorted(points)
        axes.plot(
            steps, [points[s] for s in steps], marker="o", markersize=3, label=name,
            color=colour, linestyle=styles[seed % len(styles)],
        )  # fmt: skip
    axes.set_xlabel("step")
    axes.set_ylabel("dPSNR over bicubic (dB)")
    axes.set_title(f"validation with the paper's protocol ({weights} weights)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    partial = png.with_name(f".{png.name}.partial.png")
    figure.savefig(partial)
    partial.replace(png)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    summaries = {Path(run).name: curve(Path(run), args) for run in args.runs}
    document = {
        "data": args.data,
        "weights": args.weights,
        "runs": {
            name: {str(step): {"dpsnr": s["dpsnr"], "dssim": s["dssim"]} for step, s in c.items()}
            for name, c in summaries.items()
        },
    }
    out = Path(args.out)
    atomic_write_text(out / "curves.json", json.dumps(document, indent=1) + "\n", overwrite=True)
    curves = {name: {step: s["dpsnr"] for step, s in c.items()} for name, c in summaries.items()}
    print(markdown(curves))
    if args.png:
        draw(curves, Path(args.png), args.weights)
        print(f"wrote {args.png}")
    return 0


if __name__ == "__main__":
    run_cli(main)
