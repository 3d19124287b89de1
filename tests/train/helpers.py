"""Running the trainer in tests: subprocess commands, a tiny dataset, reading a run back."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

REPO = Path(__file__).resolve().parents[2]
TRAIN_SCRIPT = REPO / "aeatrain" / "train.py"
ACCELERATE = Path(sys.executable).parent / "accelerate"
DEBUG_CONFIG = REPO / "configs" / "debug.yaml"


def train_env() -> dict[str, str]:
    """The repo importable, one thread per process (2 shared cores: OpenMP threads that
    spin-wait for a busy core make a step 30x slower), no accelerate config of the user."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["OMP_NUM_THREADS"] = "1"
    env["HF_HOME"] = env.get("HF_HOME", "/nonexistent-hf-home")  # no default_config.yaml
    return env


def train_in_process(argv: list[str]) -> int:
    """``aeatrain.train.main(argv)`` in this process, leaving no accelerate singleton behind."""
    from accelerate.state import AcceleratorState

    from aeatrain.train import main

    try:
        return main(argv)
    finally:
        AcceleratorState._reset_state(True)


def train_command(*overrides: str, config: Path = DEBUG_CONFIG) -> list[str]:
    """One process: ``python aeatrain/train.py --config CONFIG OVERRIDES``."""
    return [sys.executable, str(TRAIN_SCRIPT), "--config", str(config), *overrides]


def launch_command(*overrides: str, launch_args: tuple[str, ...], config: Path = DEBUG_CONFIG):
    """``accelerate launch LAUNCH_ARGS aeatrain/train.py --config CONFIG OVERRIDES``."""
    return [str(ACCELERATE), "launch", *launch_args, str(TRAIN_SCRIPT), "--config", str(config),
            *overrides]  # fmt: skip


def run(command: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        command, env=train_env(), capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


def check(result: subprocess.CompletedProcess, code: int = 0) -> None:
    assert result.returncode == code, f"exit {result.returncode}\n{result.stderr[-4000:]}"


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def assert_same_weights(a: dict, b: dict) -> None:
    """Bitwise: the same keys and exactly equal tensors."""
    assert sorted(a) == sorted(b)
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert not different, f"tensors differ: {different[:5]}"


def events(run_dir: Path) -> EventAccumulator:
    """TensorBoard events of a run, every scalar and image kept."""
    accumulator = EventAccumulator(
        str(run_dir / "logs" / "tensorboard"), size_guidance={"scalars": 0, "images": 0}
    )
    accumulator.Reload()
    return accumulator


def scalar(accumulator: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(event.step, event.value) for event in accumulator.Scalars(tag)]
