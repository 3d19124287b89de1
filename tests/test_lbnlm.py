"""Paired library non-local means: the formula, the run folder, evaluate/predict, bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from aeatrain import evaluate, lbnlm, predict
from aeatrain.errors import EXIT_USER_ERROR, run_cli
from aeatrain.files.images import read_image, write_image
from aeatrain.models import build_model
from aeatrain.models.lbnlm import LBNLM
from aeatrain.run.final import load_run
from tests.datasets import make_dataset


def _cli(main, argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as stop:
        run_cli(lambda: main(argv))
    captured = capsys.readouterr()
    return stop.value.code, captured.out, captured.err


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Path:
    """DATA of 2 small pairs (training regions 160 x 160) and a pooled lbnlm run."""
    root = tmp_path_factory.mktemp("lbnlm")
    make_dataset(root / "DATA", pairs=2, width=224, height=160)
    with pytest.raises(SystemExit) as stop:
        run_cli(lambda: lbnlm.main(["--data", str(root / "DATA"), "--out", str(root / "pooled")]))
    assert stop.value.code == 0
    return root


def brute_force(model: LBNLM, image: np.ndarray) -> np.ndarray:
    """The module docstring's formula with a full distance matrix and a sort."""
    p, half = model.patch, model.patch // 2
    padded = np.pad(image.astype(np.float64), half, mode="reflect")
    windows = np.lib.stride_tricks.sliding_window_view(padded, (p, p)).reshape(-1, p * p)
    queries = (windows - model.mean.double().numpy()) @ model.basis.double().numpy()
    keys = model.keys.double().numpy()
    d2 = ((queries[:, None, :] - keys[None]) ** 2).sum(-1)  # (M, N)
    nearest = np.argsort(d2, axis=1)[:, : model.neighbours]
    d2k = np.take_along_axis(d2, nearest, 1)
    weights = np.exp(-d2k / model.h**2)
    values = model.values.double().numpy()[nearest]
    return image.reshape(-1) + (weights * values).sum(1) / weights.sum(1)


def test_forward_is_the_weighted_mean_of_the_k_nearest_corrections():
    rng = np.random.default_rng(0)
    model = build_model("lbnlm", patch=3, components=4, neighbours=5, h=0.3, library_size=40)
    mean = rng.random(9).astype(np.float32) * 0.1
    basis = np.linalg.qr(rng.standard_normal((9, 4)))[0].astype(np.float32)
    model.set_library(mean, basis, rng.random((40, 4)), rng.normal(0, 0.1, 40))
    image = rng.random((6, 7)).astype(np.float32)
    got = model(torch.from_numpy(image)[None, None])
    assert got.shape == (1, 1, 6, 7) and got.dtype == torch.float32
    want = brute_force(model, image).reshape(6, 7)
    assert np.abs(got[0, 0].numpy() - want).max() < 1e-5
    assert np.abs(want - image).max() > 1e-3  # the correction is not trivially zero


def test_a_loaded_library_replaces_the_cached_tree():
    rng = np.random.default_rng(1)
    kw = {"patch": 3, "components": 2, "neighbours": 1, "h": 1.0, "library_size": 8}
    first, second = build_model("lbnlm", **kw), build_model("lbnlm", **kw)
    for model in (first, second):
        basis = np.linalg.qr(rng.standard_normal((9, 2)))[0]
        model.set_library(np.zeros(9), basis, rng.random((8, 2)), rng.normal(0, 0.1, 8))
    x = torch.rand(1, 1, 5, 5)
    before = first(x)  # builds first's tree
    first.load_state_dict(second.state_dict())
    assert torch.equal(first(x), second(x)) and not torch.equal(before, second(x))
    with pytest.raises(ValueError, match="unknown lbnlm option"):
        build_model("lbnlm", width=4)


def test_lbnlm_run_beats_bicubic_through_evaluate(lab, tmp_path, capsys):
    run = json.loads((lab / "pooled" / "run.json").read_text())
    assert run["model"]["name"] == "lbnlm" and run["step"] == 0
    config = yaml.safe_load((lab / "pooled" / "config.yaml").read_text())
    assert config["data"]["pairs"] is None and len(config["lbnlm"]["search"]) == 2 * 2 * 4 * 4
    chosen = {k: run["model"]["kwargs"][k] for k in ("patch", "neighbours")}
    best = max(config["lbnlm"]["search"], key=lambda s: s["psnr"])
    assert chosen == {"patch": best["patch"], "neighbours": best["neighbours"]}
    code, _, err = _cli(
        evaluate.main, ["--run", str(lab / "pooled"), "--data", str(lab / "DATA"),
                        "--out", str(tmp_path)], capsys,
    )  # fmt: skip
    assert code == 0, err
    summary = json.loads((tmp_path / "metrics.json").read_text())["rows"][0]["summary"]
    assert summary["dpsnr"] > 0.1 and summary["dssim"] > 0, summary


@pytest.mark.slow
def test_a_self_training_library_is_scored_on_its_pair_and_predicts(lab, tmp_path, capsys):
    out = tmp_path / "self"
    code, printed, err = _cli(
        lbnlm.main, ["--data", str(lab / "DATA"), "--out", str(out), "--pairs", "pair01"], capsys
    )
    assert code == 0, err
    assert "1 pair(s)" in printed
    model, info = load_run(out)
    assert info.train_pairs == ["pair01"] and isinstance(model, LBNLM)
    code, _, err = _cli(lbnlm.main, ["--data", str(lab / "DATA"), "--out", str(out)], capsys)
    assert code == EXIT_USER_ERROR and "--overwrite" in err
    image = np.random.default_rng(2).integers(0, 256, (20, 30), dtype=np.uint8)
    write_image(tmp_path / "in.png", image)
    argv = [
        "--run",
        str(out),
        "--input",
        str(tmp_path / "in.png"),
        "--output",
        str(tmp_path / "sr"),
    ]
    code, _, err = _cli(predict.main, argv, capsys)
    assert code == 0, err
    result, depth = read_image(tmp_path / "sr" / "in.png")
    assert result.shape == (40, 60) and depth == 8


def _refused(argv: list[str], capsys) -> str:
    code, _, err = _cli(lbnlm.main, argv, capsys)
    assert code == EXIT_USER_ERROR and err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    data, out = str(make_dataset(tmp_path / "DATA", pairs=1)), tmp_path / "out"
    assert "no pair named 'nope'" in _refused(
        ["--data", data, "--out", str(out), "--pairs", "nope"], capsys
    )
    narrow = make_dataset(tmp_path / "NARROW", pairs=1, width=96, height=64)
    assert "empty library" in _refused(["--data", str(narrow), "--out", str(out)], capsys)
    raw = tmp_path / "RAW"
    write_image(raw / "a_10000.png", np.zeros((8, 8), np.uint8))
    assert "manifest" in _refused(["--data", str(raw), "--out", str(out)], capsys)
    other = tmp_path / "OTHER"
    other.mkdir()
    (other / "manifest.json").write_text(json.dumps({"format": "something-else"}))
    assert "OTHER" in _refused(["--data", str(other), "--out", str(out)], capsys)
    assert not out.exists()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    assert "holds no aeatrain run" in _refused(
        ["--data", data, "--out", str(tmp_path / "busy")], capsys
    )


def test_a_seed_out_of_range_is_refused(tmp_path, capsys):
    data, out = str(make_dataset(tmp_path / "DATA", pairs=1)), tmp_path / "out"
    for seed in ("-1", str(2**32)):
        err = _refused(["--data", data, "--out", str(out), "--seed", seed], capsys)
        assert f"--seed {seed}: a seed is a whole number from 0 to 4294967295" in err
    assert not out.exists()


def test_out_on_a_read_only_file_system_is_refused_before_the_build(tmp_path, monkeypatch, capsys):
    statvfs = os.statvfs

    def read_only_below_tmp(path):
        result = statvfs(path)
        if Path(path).is_relative_to(tmp_path):  # as a read-only mount would report it
            return os.statvfs_result((*result[:8], result.f_flag | os.ST_RDONLY, *result[9:]))
        return result

    monkeypatch.setattr(os, "statvfs", read_only_below_tmp)
    err = _refused(
        ["--data", str(tmp_path / "no DATA yet"), "--out", str(tmp_path / "run")], capsys
    )
    assert f"{tmp_path / 'run'}: --out cannot be written: {tmp_path} is on a read-only" in err
