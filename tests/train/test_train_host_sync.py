"""The training step never makes the host wait for the device between log steps.

On a GPU every ``.item()``, ``float(t)``, ``bool(t)`` or ``.cpu()`` of a device tensor
stalls the host until the queued kernels are done, so the next step cannot be queued
behind the current one. Counted here on the CPU: the methods that read a tensor's value
into Python are wrapped, and a run of the trainer (in this process) counts the reads made
in its steps, outside logging, validation and checkpoints. With fused Adam (the default
on CUDA, ``--optim.fused true`` here) a step makes none; plain Adam (the CPU's default)
has no skip hook, so the host reads the skip verdict, and plain Adam reads its own step
counts (the counter's own check).
"""

import pytest
import torch
from safetensors.torch import load_file

from aeatrain import train as trainer_module
from aeatrain.run import checkpoint as ckpt
from tests.datasets import make_dataset
from tests.train.helpers import DEBUG_CONFIG, check, run, train_command

READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")
EXEMPT = ("log_train", "validate", "save_checkpoint", "finish", "stop_for_preemption")
STEPS, LOG_EVERY = 6, 3


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data") / "DATA", pairs=2)


class SyncCounter:
    """Counts host reads of tensor values made inside ``train_step`` and ``Meter.add``,
    except inside the exempt (log-step, validation, checkpoint) functions."""

    def __init__(self, monkeypatch):
        self.depth = 0  # > 0 inside a step
        self.exempt = 0  # > 0 inside an exempt function
        self.per_step: list[int] = []
        self.log_calls = 0
        for name in READS:
            monkeypatch.setattr(torch.Tensor, name, self._counting(getattr(torch.Tensor, name)))
        monkeypatch.setattr(trainer_module, "train_step", self._in_step(trainer_module.train_step))
        meter_add = self._in_step(trainer_module.Meter.add, new_step=False)
        monkeypatch.setattr(trainer_module.Meter, "add", meter_add)
        for name in EXEMPT:
            monkeypatch.setattr(trainer_module, name, self._exempted(getattr(trainer_module, name)))

    def _counting(self, method):
        def counted(tensor, *args, **kwargs):
            if self.depth and not self.exempt:
                self.per_step[-1] += 1
            return method(tensor, *args, **kwargs)

        return counted

    def _in_step(self, function, new_step: bool = True):
        def step(*args, **kwargs):
            if new_step:
                self.per_step.append(0)
            self.depth += 1
            try:
                return function(*args, **kwargs)
            finally:
                self.depth -= 1

        return step

    def _exempted(self, function):
        def exempted(*args, **kwargs):
            self.exempt += 1
            self.log_calls += function.__name__ == "log_train"
            try:
                return function(*args, **kwargs)
            finally:
                self.exempt -= 1

        return exempted


def _train_here(data, run_dir, fused: str, steps: int = STEPS) -> None:
    argv = [
        "--config", str(DEBUG_CONFIG), "--data.root", str(data), "--train.run_dir", str(run_dir),
        "--train.steps", str(steps), "--logging.log_every", str(LOG_EVERY),
        "--logging.eval_every", "1000", "--logging.eval_max_pairs", "1",
        "--logging.progress_bar", "false", "--optim.fused", fused, "--train.ema", "true",
    ]  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores
    try:
        assert trainer_module.main(argv) == 0
    finally:
        torch.set_num_threads(threads)


def test_fused_adam_steps_make_no_host_sync_and_plain_adam_steps_one(data, tmp_path, monkeypatch):
    counter = SyncCounter(monkeypatch)
    _train_here(data, tmp_path / "fused", "true")
    assert len(counter.per_step) == STEPS
    assert counter.log_calls == STEPS // LOG_EVERY
    assert counter.per_step == [0] * STEPS

    counter.per_step.clear()
    _train_here(data, tmp_path / "default", "false")
    assert len(counter.per_step) == STEPS
    # the skip verdict, and plain Adam's own reads (on the CPU its step counts)
    assert min(counter.per_step) >= 1, counter.per_step


def test_fused_and_default_adam_take_the_same_first_step(data, tmp_path):
    """From the same weights and the same gradients only Adam's arithmetic differs, so one
    step of each path agrees to float32 rounding. Later steps are not compared: a rounding
    difference changes the next gradients, and a parameter whose gradient is near zero (a
    BatchNorm bias before another normalisation) amplifies it by orders of magnitude: here
    a change of the learning rate by one part in 10^6 moved ``bottom.act.bn.bias`` by 2e-4
    after 6 steps, and the 6-step comparison failed on some CPUs and passed on others."""
    _train_here(data, tmp_path / "fused", "true", steps=1)
    _train_here(data, tmp_path / "default", "false", steps=1)
    for weights in ("model.safetensors", "model_ema.safetensors"):
        fused = load_file(str(tmp_path / "fused" / weights))
        default = load_file(str(tmp_path / "default" / weights))
        assert sorted(fused) == sorted(default)
        for name, tensor in default.items():
            torch.testing.assert_close(fused[name], tensor, rtol=1e-5, atol=1e-6, msg=name)


def test_fused_path_skips_diverged_steps_and_stops_naming_them(data, tmp_path):
    """Skip verdicts are counted at the checkpoint after each step here: the message and
    the finite checkpoints are those of plain Adam (test_train_options)."""
    run_dir = tmp_path / "diverged"
    result = run(
        train_command(
            "--data.root", str(data), "--train.run_dir", str(run_dir), "--train.steps", "20",
            "--optim.lr", "1e30", "--train.max_skipped_steps", "3", "--optim.fused", "true",
            "--train.checkpoint_every", "1", "--train.keep_checkpoints", "10",
            "--logging.progress_bar", "false",
        )
    )  # fmt: skip
    check(result, 2)
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: training diverged: steps 1..3 were all skipped"), last
    written = ckpt.complete_checkpoints(run_dir)
    assert [step for step, _ in written] == [1, 2, 3]  # skipped steps left the weights alone
    for _, folder in written:
        tensors = load_file(str(folder / "model.safetensors"))
        assert all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point())
