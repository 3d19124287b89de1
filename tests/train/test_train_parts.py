"""Trainer parts that need no accelerator: checkpoint folders, EMA, schedule, preemption flag,
skipped-step guard, validation's scoring (aeatrain.protocol.scoring), TensorBoard pictures."""

import itertools
import json
import math
import os
import signal
import types

import numpy as np
import pytest
import torch

from aeatrain.config.schema import OptimConfig
from aeatrain.files.images import to_float
from aeatrain.models import build_model
from aeatrain.protocol import heatmaps
from aeatrain.protocol.metrics import score_tile
from aeatrain.protocol.scoring import merge_shares, summarize_pairs
from aeatrain.run import checkpoint as ckpt
from aeatrain.training.ema import WeightEMA
from aeatrain.training.images import (
    chosen_references,
    colorize,
    comparison_grid,
    reference_heatmaps,
    side_by_side,
)
from aeatrain.training.optim import learning_rate, pixel_loss
from aeatrain.training.preemption import EXIT_PREEMPTED, PreemptionFlag
from aeatrain.training.stability import SkippedSteps, TrainingDiverged, all_finite


def _save(run_dir, step):
    """What the trainer does: partial folder, (save_state), then finish_partial."""
    partial = ckpt.start_partial(run_dir, step)
    (partial / "model.safetensors").write_bytes(b"weights")
    return ckpt.finish_partial(run_dir, step, {"data_position": step})


def test_checkpoint_rename_makes_it_complete(tmp_path):
    partial = ckpt.start_partial(tmp_path, 5)
    assert partial.name == ".step_5.partial"
    assert ckpt.newest_complete(tmp_path) is None  # a partial folder is never resumed
    final = ckpt.finish_partial(tmp_path, 5, {"data_position": 5})
    assert final == tmp_path / "checkpoints" / "step_5" and not partial.exists()
    state = ckpt.read_trainer_state(final)
    assert state["step"] == 5 and state["format"] == "aeatrain-trainer-state"


def test_newest_complete_ignores_partial_and_stateless_folders(tmp_path):
    _save(tmp_path, 2)
    _save(tmp_path, 10)
    ckpt.start_partial(tmp_path, 12)  # a crash mid-save
    (tmp_path / "checkpoints" / "step_11").mkdir()  # no trainer_state.json: incomplete
    assert ckpt.newest_complete(tmp_path) == tmp_path / "checkpoints" / "step_10"
    assert [s for s, _ in ckpt.complete_checkpoints(tmp_path)] == [2, 10]  # numeric order


def test_prune_keeps_newest_k_and_removes_debris(tmp_path):
    for step in (1, 2, 3, 4):
        _save(tmp_path, step)
    ckpt.start_partial(tmp_path, 9)
    removed = ckpt.prune(tmp_path, keep=2)
    assert sorted(p.name for p in removed) == [".step_9.partial", "step_1", "step_2"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_3", "step_4"]


def test_read_trainer_state_refuses_foreign_files(tmp_path):
    final = _save(tmp_path, 1)
    (final / ckpt.STATE_FILE).write_text(json.dumps({"format": "other", "step": 1}))
    with pytest.raises(ValueError, match="not an aeatrain-trainer-state"):
        ckpt.read_trainer_state(final)


def test_ema_is_the_exponential_average_and_round_trips():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    ema = WeightEMA(model, decay=0.9)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model, taken=torch.tensor(True))
    torch.testing.assert_close(ema.shadow["weight"], start + 0.1, rtol=0, atol=1e-6)
    copy = ema.copy_to(torch.nn.Linear(3, 2))
    torch.testing.assert_close(copy.weight, start + 0.1, rtol=0, atol=1e-6)
    other = WeightEMA(model, decay=0.9)
    other.load_tensors(ema.tensors(), ema.updates)
    assert other.updates == 1 and torch.equal(other.shadow["weight"], ema.shadow["weight"])
    with pytest.raises(ValueError, match="missing"):
        other.load_tensors({"weight": ema.shadow["weight"]}, 1)


def test_ema_counts_device_side_updates_and_its_state_dict_round_trips():
    """The training step folds under a device-side verdict; only taken steps count, and
    state_dict (what accelerate's save_state keeps) restores average and count."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    ema = WeightEMA(model, decay=0.5)
    start = ema.shadow["weight"].clone()
    with torch.no_grad():
        model.weight.add_(2.0)
    ema.update(model, taken=torch.tensor(False))  # a skipped step: average unchanged
    assert ema.updates == 0 and torch.equal(ema.shadow["weight"], start)
    ema.update(model, taken=torch.tensor(True))
    ema.update(model, taken=torch.tensor(True))
    assert ema.updates == 2
    torch.testing.assert_close(ema.shadow["weight"], start + 1.5, rtol=0, atol=1e-6)
    other = WeightEMA(torch.nn.Linear(3, 2), decay=0.5)
    other.load_state_dict(ema.state_dict())
    assert other.updates == 2 and torch.equal(other.shadow["weight"], ema.shadow["weight"])


def test_ema_average_lives_on_the_training_device():
    """The trainer builds the EMA before accelerate moves the model to the GPU; an average
    left on the CPU would meet CUDA weights at the first update. (``meta`` stands in for
    the GPU here: every tensor on it, none on the CPU.)"""
    model = torch.nn.Linear(3, 2).to(torch.bfloat16)
    ema = WeightEMA(model, decay=0.5, device=torch.device("meta"))
    assert {(t.device.type, t.dtype) for t in ema.shadow.values()} == {("meta", torch.float32)}


def test_staircase_schedule_is_the_papers():
    optim = OptimConfig()  # 4e-4 halved every 10,000 steps
    assert learning_rate(0, optim, 120_000) == 4e-4
    assert learning_rate(9_999, optim, 120_000) == 4e-4
    assert learning_rate(10_000, optim, 120_000) == 2e-4
    assert learning_rate(119_999, optim, 120_000) == pytest.approx(4e-4 / 2**11)


def test_cosine_schedule_with_warm_up():
    optim = OptimConfig(lr=1e-3, schedule="cosine", warmup_steps=10)
    rates = [learning_rate(step, optim, 110) for step in range(110)]
    assert rates[0] == pytest.approx(1e-4) and rates[4] == pytest.approx(5e-4)
    assert rates[9] == rates[10] == pytest.approx(1e-3)  # the peak ends the warm-up
    assert rates[60] == pytest.approx(5e-4)  # half way through the cosine
    assert rates[109] == pytest.approx(1e-3 * (1 + math.cos(math.pi * 99 / 100)) / 2)
    assert all(a >= b for a, b in itertools.pairwise(rates[9:]))  # never rises after the peak
    staircase = OptimConfig(lr=1e-3, warmup_steps=4, lr_decay_every=6)  # warm-up on a staircase
    assert [learning_rate(s, staircase, 20) for s in (0, 3, 5, 6)] == pytest.approx(
        [2.5e-4, 1e-3, 1e-3, 5e-4]
    )


def test_pixel_losses():
    a, b = torch.zeros(1, 1, 2, 2), torch.full((1, 1, 2, 2), 0.5)
    assert pixel_loss("l1")(a, b).item() == 0.5
    assert pixel_loss("l2")(a, b).item() == 0.25


@pytest.mark.parametrize("signum", [signal.SIGUSR1, signal.SIGTERM, signal.SIGINT])
def test_preemption_flag_catches_signals_and_restores_handlers(signum):
    before = signal.getsignal(signum)
    flag = PreemptionFlag()
    flag.install()
    try:
        assert not flag.requested
        os.kill(os.getpid(), signum)
        assert flag.requested and flag.received == signum
    finally:
        flag.restore()
    assert signal.getsignal(signum) == before
    assert EXIT_PREEMPTED == 75


def test_skipped_steps_stop_after_the_limit_in_a_row():
    skipped = SkippedSteps(limit=3)
    skipped.record(0, True)
    skipped.record(1, False)  # a good step resets the run of skips
    skipped.record(2, True)
    skipped.record(3, True)
    with pytest.raises(TrainingDiverged, match=r"steps 2\.\.4 were all skipped"):
        skipped.record(4, True, "non-finite loss")
    assert skipped.total == 4


def test_finiteness_checks():
    model = torch.nn.Linear(2, 2)
    assert all_finite(model)
    with torch.no_grad():
        model.bias[0] = float("nan")
    assert not all_finite(model)


def _tile(rng, pair, tile_id, index, size=(24, 32)):
    hr = rng.integers(0, 256, size=size, dtype=np.uint8)
    lr = np.clip(hr.astype(int) + rng.integers(-20, 21, size=size), 0, 255).astype(np.uint8)
    return types.SimpleNamespace(pair=pair, tile_id=tile_id, index=index, lr=lr, hr=hr, bit_depth=8)


def test_summary_averages_tiles_then_pairs_and_shares_never_overlap():
    rng = np.random.default_rng(0)
    tiles = [_tile(rng, "a", "test0", 0), _tile(rng, "a", "test1", 1), _tile(rng, "b", "test0", 2)]
    scores = {}
    for tile in tiles:
        prediction = tile.hr.astype(np.float32) / 255  # a perfect-ish prediction
        scores.setdefault(tile.pair, {})[tile.tile_id] = score_tile(
            prediction, tile.lr, tile.hr, bit_depth=8
        )
    summary = summarize_pairs(scores)
    a = (scores["a"]["test0"].dpsnr + scores["a"]["test1"].dpsnr) / 2
    expected = (a + scores["b"]["test0"].dpsnr) / 2  # pairs weigh equally, not tiles
    assert summary["dpsnr"] == pytest.approx(expected)
    rank0, rank1 = {(0, 0, "a"): scores["a"]}, {(0, 0, "b"): scores["b"]}
    assert merge_shares([rank0, rank1]) == {**rank0, **rank1}
    with pytest.raises(ValueError, match=r"pair a .* scored twice"):
        merge_shares([rank0, rank1, rank0])


def test_pictures_have_the_documented_shapes():
    rng = np.random.default_rng(1)
    tile = _tile(rng, "a", "test0", 0, size=(22, 30))  # not a multiple of 4
    model = build_model("aeanet", base_channels=8, num_refs=6, bn_momentum=0.1)
    prediction = np.linspace(-0.5, 1.5, 22 * 30, dtype=np.float32).reshape(22, 30)
    grid = comparison_grid(tile, prediction)
    assert grid.shape == (1, 22, 3 * 30 + 2 * 4)
    np.testing.assert_allclose(grid[0, :, :30], tile.lr / 255, atol=1e-6)  # panel 1 = LR
    np.testing.assert_array_equal(grid[0, :, 34:64], np.clip(prediction, 0, 1))  # clipped
    np.testing.assert_allclose(grid[0, :, -30:], tile.hr / 255, atol=1e-6)  # panel 3 = HR
    refs = chosen_references(6, 3)
    assert refs == [0, 2, 5] and chosen_references(2, 4) == [0, 1]
    maps = reference_heatmaps(model, tile, refs)
    assert maps.shape == (3, 22, 4 * 30 + 3 * 4) and model.training  # mode restored
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    assert side_by_side([np.zeros((1, 2, 3))] * 2).shape == (1, 2, 10)
    assert colorize(np.zeros((4, 4), dtype=np.float32)).shape == (3, 4, 4)


def test_training_heatmaps_are_the_refmaps_pictures():
    """TensorBoard's heatmap panels are exactly python -m aeatrain.refmaps's: the same maps
    (the tile padded like a prediction) drawn by the same renderer, BGR -> RGB."""
    rng = np.random.default_rng(2)
    tile = _tile(rng, "a", "test0", 0, size=(22, 30))
    model = build_model("aeanet", base_channels=8, num_refs=6, bn_momentum=0.1)
    row = reference_heatmaps(model, tile, [1, 4])  # (3, 22, 3 * 30 + 2 gaps)
    maps = heatmaps.reference_maps(model, to_float(tile.lr, 8), [1, 4])  # (2, 22, 30)
    for panel, values in zip((1, 2), maps):
        start = panel * (30 + 4)
        drawn = np.rint(row[:, :, start : start + 30] * 255).astype(np.uint8)  # (3, H, W) RGB
        expected = heatmaps.heatmap(values)[..., ::-1].transpose(2, 0, 1)
        assert np.array_equal(drawn, expected)
    np.testing.assert_array_equal(row[:, :, :30], np.repeat(to_float(tile.lr, 8)[None], 3, 0))
