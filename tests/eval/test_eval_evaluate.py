"""python -m aeatrain.evaluate on tiny synthetic DATA folders: figures recomputed by hand."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from aeatrain import compare, evaluate
from aeatrain.data.streams import full_images
from aeatrain.errors import EXIT_USER_ERROR, run_cli
from aeatrain.files.images import to_float
from aeatrain.protocol.inference import predict_full, predict_paper_tiles
from aeatrain.protocol.metrics import average_pairs, mean_scores, score_regions
from aeatrain.run.final import load_run
from tests.datasets import make_dataset, specimen_pair, write_dataset
from tests.eval.helpers import make_run
from tests.http_range import RangeServer


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Path:
    """DATA (3 pairs of 320 x 240), a pooled run and three self-training runs."""
    root = tmp_path_factory.mktemp("lab")
    make_dataset(root / "DATA", pairs=3)
    make_run(root / "pooled", model_name="aeanet", num_refs=8, residual=True)
    for i in range(3):
        make_run(root / f"self_{i}", pairs=[f"pair0{i}"], seed=i + 1, residual=True)
    return root


def _cli(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as stop:
        run_cli(lambda: evaluate.main(argv))
    captured = capsys.readouterr()
    return stop.value.code, captured.out, captured.err


def _by_hand(run: Path, data: Path, pairs: list[str], tile: int | None = None) -> dict:
    """The protocol written out: predict each whole image, score the test tiles, average."""
    model, _ = load_run(run)
    per_pair = {}
    for image in full_images(data, pairs=pairs):
        lr = to_float(image.lr)
        if tile is None:
            pred = predict_full(model, lr)
        else:
            pred = predict_paper_tiles(model, lr, tile=tile, margin=32)
        tiles = score_regions(pred, image.lr, image.hr, image.test_regions, bit_depth=8)
        per_pair[image.pair] = mean_scores(tiles)
    return per_pair


def test_pooled_and_selftrain_rows_match_the_protocol_by_hand(lab, tmp_path, capsys):
    argv = [
        "--run",
        str(lab / "pooled"),
        "--selftrain",
        str(lab / "self_*"),
        "--data",
        str(lab / "DATA"),
        "--out",
        str(tmp_path),
    ]
    code, out, err = _cli(argv, capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "metrics.json").read_text())
    pooled, selftrain = report["rows"]
    assert pooled["kind"] == "run" and selftrain["kind"] == "selftrain"

    want = average_pairs(_by_hand(lab / "pooled", lab / "DATA", ["pair00", "pair01", "pair02"]))
    for key in ("dpsnr", "dssim", "fg_dpsnr", "bg_dpsnr", "input_psnr"):
        assert pooled["summary"][key] == pytest.approx(want[key], abs=1e-12), key

    own = {}
    for i in range(3):  # each self-training run on its own pair only
        own.update(_by_hand(lab / f"self_{i}", lab / "DATA", [f"pair0{i}"]))
    want_self = average_pairs(own)
    assert selftrain["summary"]["dpsnr"] == pytest.approx(want_self["dpsnr"], abs=1e-12)
    assert {p: v["run"] for p, v in selftrain["pairs"].items()} == {
        f"pair0{i}": str(lab / f"self_{i}") for i in range(3)
    }
    assert len(selftrain["pairs"]["pair01"]["tiles"]) == 3

    table = (tmp_path / "metrics.md").read_text()
    assert f"{pooled['summary']['dpsnr']:.3f}" in table and f"{want_self['dpsnr']:.3f}" in table
    assert "input (bicubic LR)" in out and f"{want['input_psnr']:.2f}" in out


def test_a_single_pair_run_is_scored_on_its_own_pair(lab, tmp_path, capsys):
    code, _, err = _cli(
        ["--run", str(lab / "self_1"), "--data", str(lab / "DATA"), "--out", str(tmp_path)], capsys
    )
    assert code == 0, err
    row = json.loads((tmp_path / "metrics.json").read_text())["rows"][0]
    assert list(row["pairs"]) == ["pair01"] and row["runs"][0]["pairs"] == ["pair01"]


def test_patch_size_sweep_gives_one_row_per_tile_size(lab, tmp_path, capsys):
    argv = [
        "--run",
        str(lab / "pooled"),
        "--data",
        str(lab / "DATA"),
        "--tiles",
        "whole,160,96",
        "--pairs",
        "pair02",
        "--out",
        str(tmp_path),
    ]
    code, out, err = _cli(argv, capsys)
    assert code == 0, err
    rows = json.loads((tmp_path / "metrics.json").read_text())["rows"]
    assert [r["prediction"] for r in rows] == [
        {"mode": "whole", "pad_multiple": 16},
        {"mode": "tiles", "tile": 160, "margin": 32},
        {"mode": "tiles", "tile": 96, "margin": 32},
    ]
    want = average_pairs(_by_hand(lab / "pooled", lab / "DATA", ["pair02"], tile=96))
    assert rows[2]["summary"]["dpsnr"] == pytest.approx(want["dpsnr"], abs=1e-12)
    assert rows[0]["summary"]["dpsnr"] != rows[2]["summary"]["dpsnr"]  # tiling changes it
    assert "tiles 96 (margin 32)" in out


def test_json_has_no_nan_and_per_tile_figures(lab, tmp_path, capsys):
    code, _, err = _cli(
        ["--run", str(lab / "pooled"), "--data", str(lab / "DATA"), "--out", str(tmp_path)], capsys
    )
    assert code == 0, err
    text = (tmp_path / "metrics.json").read_text()
    assert "NaN" not in text
    tile = json.loads(text)["rows"][0]["pairs"]["pair00"]["tiles"]["test0"]
    assert tile["dpsnr"] == pytest.approx(tile["psnr"] - tile["input_psnr"], abs=1e-12)
    assert 0 < tile["fg_fraction"] < 1 and math.isfinite(tile["threshold"])


def test_default_out_is_eval_in_the_first_run(lab, tmp_path, capsys):
    run = make_run(tmp_path / "run", residual=True)
    code, _, err = _cli(
        ["--run", str(run), "--data", str(lab / "DATA"), "--pairs", "pair00"], capsys
    )
    assert code == 0, err
    assert (run / "eval" / "metrics.md").is_file() and (run / "eval" / "metrics.json").is_file()
    # issue 23 item 3: compare RUN/eval RUNA/eval made one row "eval" of a U-Net and an AEANet
    other = make_run(tmp_path / "runa", model_name="aeanet", num_refs=8, residual=True)
    code, _, err = _cli(
        ["--run", str(other), "--data", str(lab / "DATA"), "--pairs", "pair00"], capsys
    )
    assert code == 0, err
    recorded = json.loads((other / "eval" / "metrics.json").read_text())["rows"][0]["runs"][0]
    assert recorded["config"]["model"] == {"name": "aeanet", "num_refs": 8, "residual": True,
                                           "base_channels": 4}  # fmt: skip
    compare.main([str(run / "eval"), str(other / "eval")])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| run")]
    assert [row.split(" | ")[:2] for row in rows] == [["| run", "1"], ["| runa", "1"]]


def test_sixteen_bit_data_is_scored_on_its_own_scale(tmp_path, capsys):
    make_dataset(tmp_path / "DATA16", pairs=1, bit_depth=16)
    run = make_run(tmp_path / "run", residual=True)
    code, _out, err = _cli(
        ["--run", str(run), "--data", str(tmp_path / "DATA16"), "--out", str(tmp_path / "o")],
        capsys,
    )
    assert code == 0, err
    row = json.loads((tmp_path / "o" / "metrics.json").read_text())["rows"][0]
    image = next(iter(full_images(tmp_path / "DATA16")))
    model, _ = load_run(run)
    pred = predict_full(model, to_float(image.lr))
    want = mean_scores(score_regions(pred, image.lr, image.hr, image.test_regions, bit_depth=16))
    assert row["summary"]["dpsnr"] == pytest.approx(want["dpsnr"], abs=1e-12)
    assert 15 < row["summary"]["input_psnr"] < 60  # a 0..255 scale on 16-bit data would not be


# ----------------------------------------------------------------------------- bad inputs


def test_unknown_pair_name(lab, tmp_path, capsys):
    code, _, err = _cli(
        [
            "--run",
            str(lab / "pooled"),
            "--data",
            str(lab / "DATA"),
            "--pairs",
            "pair00",
            "nosuch",
            "--out",
            str(tmp_path / "o"),
        ],
        capsys,
    )
    assert code == EXIT_USER_ERROR
    assert err.startswith("error: --pairs: no pair named 'nosuch' in ") and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_missing_run_folder(lab, tmp_path, capsys):
    code, _, err = _cli(
        [
            "--run",
            str(tmp_path / "gone"),
            "--data",
            str(lab / "DATA"),
            "--out",
            str(tmp_path / "o"),
        ],
        capsys,
    )
    assert code == EXIT_USER_ERROR and "gone: no such run folder" in err
    assert not (tmp_path / "o").exists()


def test_run_without_weights(lab, tmp_path, capsys):
    run = make_run(tmp_path / "run")
    (run / "model.safetensors").unlink()
    code, _, err = _cli(["--run", str(run), "--data", str(lab / "DATA")], capsys)
    assert code == EXIT_USER_ERROR and "weights file missing" in err
    assert not (run / "eval").exists()


def test_selftrain_refuses_pooled_runs_and_duplicate_pairs(lab, tmp_path, capsys):
    code, _, err = _cli(
        [
            "--selftrain",
            str(lab / "pooled"),
            str(lab / "self_0"),
            "--data",
            str(lab / "DATA"),
            "--out",
            str(tmp_path),
        ],
        capsys,
    )
    assert code == EXIT_USER_ERROR and "--selftrain needs runs trained on ONE pair" in err
    twin = make_run(tmp_path / "twin", pairs=["pair00"])
    code, _, err = _cli(
        [
            "--selftrain",
            str(lab / "self_0"),
            str(twin),
            "--data",
            str(lab / "DATA"),
            "--out",
            str(tmp_path),
        ],
        capsys,
    )
    assert code == EXIT_USER_ERROR and "both trained on 'pair00'" in err


def test_selftrain_glob_that_matches_nothing(lab, tmp_path, capsys):
    code, _, err = _cli(
        ["--selftrain", str(tmp_path / "none_*"), "--data", str(lab / "DATA")], capsys
    )
    assert code == EXIT_USER_ERROR and "matches no run folder" in err


def test_missing_data_folder(lab, tmp_path, capsys):
    code, _, err = _cli(
        [
            "--run",
            str(lab / "pooled"),
            "--data",
            str(tmp_path / "nodata"),
            "--out",
            str(tmp_path / "o"),
        ],
        capsys,
    )
    assert code == EXIT_USER_ERROR and "nodata" in err and err.count("\n") == 1


def test_bad_tiles_argument(lab, capsys):
    code, _, err = _cli(
        ["--run", str(lab / "pooled"), "--data", str(lab / "DATA"), "--tiles", "512,abc"], capsys
    )
    assert code == EXIT_USER_ERROR and "'abc' is not a tile size" in err
    argv = [
        "--run",
        str(lab / "pooled"),
        "--data",
        str(lab / "DATA"),
        "--tile",
        "128",
        "--margin",
        "64",
    ]
    code, _, err = _cli(argv, capsys)
    assert code == EXIT_USER_ERROR and "tile 128: must exceed twice the margin (128)" in err


@pytest.mark.parametrize(
    ("tile_args", "expected"),
    [
        (["--tile", "66"], "tile 66: with margin 32 the tiles step by 2 px, below the minimum"),
        (["--tile", "1", "--margin", "0"], "tile 1: with margin 0 the tiles step by 1 px"),
        (["--tiles", "512,70"], "tile 70: with margin 32 the tiles step by 6 px"),
    ],
)
def test_a_tile_step_below_16_px_is_refused_before_any_work(tmp_path, capsys, tile_args, expected):
    argv = ["--run", str(tmp_path / "no-run"), "--data", str(tmp_path / "no-data"), *tile_args]
    code, _, err = _cli(argv, capsys)
    assert code == EXIT_USER_ERROR and expected in err and err.count("\n") == 1, err


def test_pairs_filter_leaving_a_selftrain_row_empty(lab, tmp_path, capsys):
    code, _, err = _cli(
        [
            "--selftrain",
            str(lab / "self_0"),
            "--data",
            str(lab / "DATA"),
            "--pairs",
            "pair02",
            "--out",
            str(tmp_path),
        ],
        capsys,
    )
    assert code == EXIT_USER_ERROR and "no pair left to score" in err


def test_pairs_whose_names_shared_a_key_are_both_scored(tmp_path, capsys):
    """'α-Fe2O3' and 'β-Fe2O3' were both keyed '--Fe2O3': one full image hid the other
    and evaluate stopped with a KeyError."""
    rng = np.random.default_rng(5)
    images = {name: specimen_pair(rng, 160, 120, 8) for name in ("α-Fe2O3", "β-Fe2O3")}
    write_dataset(tmp_path / "DATA", images)
    run = make_run(tmp_path / "run", residual=True)
    argv = ["--run", str(run), "--data", str(tmp_path / "DATA"), "--out", str(tmp_path / "ev")]
    code, _, err = _cli(argv, capsys)
    assert code == 0, err
    row = json.loads((tmp_path / "ev" / "metrics.json").read_text())["rows"][0]
    assert sorted(row["pairs"]) == ["α-Fe2O3", "β-Fe2O3"]
    want = _by_hand(run, tmp_path / "DATA", ["α-Fe2O3", "β-Fe2O3"])
    for name in images:
        got = row["pairs"][name]["mean"]["input_psnr"]
        assert got == pytest.approx(want[name]["input_psnr"], abs=1e-9)
    assert want["α-Fe2O3"]["input_psnr"] != pytest.approx(want["β-Fe2O3"]["input_psnr"])


def test_tta_d4_row_matches_the_self_ensemble_by_hand(lab, tmp_path, capsys):
    from aeatrain.protocol.inference import self_ensemble

    argv = ["--run", str(lab / "pooled"), "--data", str(lab / "DATA"), "--pairs", "pair01",
            "--tta", "d4", "--out", str(tmp_path)]  # fmt: skip
    code, out, err = _cli(argv, capsys)
    assert code == 0, err
    row = json.loads((tmp_path / "metrics.json").read_text())["rows"][0]
    assert row["prediction"] == {"mode": "whole", "pad_multiple": 16, "tta": "d4"}
    assert "whole image + d4" in out
    model, _ = load_run(lab / "pooled")
    (image,) = full_images(lab / "DATA", pairs=["pair01"])
    pred = self_ensemble(lambda x: predict_full(model, x), to_float(image.lr), "d4")
    want = mean_scores(score_regions(pred, image.lr, image.hr, image.test_regions, bit_depth=8))
    assert row["summary"]["dpsnr"] == pytest.approx(want["dpsnr"], abs=1e-12)
    plain = _by_hand(lab / "pooled", lab / "DATA", ["pair01"])["pair01"]
    assert row["summary"]["dpsnr"] != pytest.approx(plain["dpsnr"], abs=1e-6)


def test_out_folder_files_not_written_by_evaluate_are_refused_before_scoring(lab, tmp_path, capsys):
    (tmp_path / "metrics.md").write_text("my own notes")  # replaced silently before
    argv = ["--run", str(lab / "self_1"), "--data", str(lab / "DATA"), "--out", str(tmp_path)]
    code, _, err = _cli(argv, capsys)
    assert code == EXIT_USER_ERROR and "metrics.md: not written by aeatrain" in err
    assert (tmp_path / "metrics.md").read_text() == "my own notes"
    (tmp_path / "metrics.md").unlink()
    assert _cli(argv, capsys)[0] == 0
    assert _cli(argv, capsys)[0] == 0  # its own report: replaced on a re-run


@pytest.mark.slow
def test_two_processes_give_exactly_the_one_process_table(lab, tmp_path, capsys):
    """torchrun splits the images over 2 processes (gloo on CPU); the gathered table and
    metrics are those of one process, figure for figure. (``--``: torchrun would take
    ``--run`` for an abbreviation of its own ``--run-path``.)"""
    import subprocess
    import sys

    argv = ["--run", str(lab / "pooled"), "--selftrain", str(lab / "self_*"),
            "--data", str(lab / "DATA"), "--tiles", "whole,96", "--device", "cpu"]  # fmt: skip
    code, _, _ = _cli([*argv, "--out", str(tmp_path / "one")], capsys)
    assert code == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2])}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "aeatrain.evaluate", "--", *argv, "--out", str(tmp_path / "two")],
        capture_output=True, text=True, timeout=240, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("one", "two"))
    assert two["rows"] == one["rows"] and len(one["rows"]) == 4
    table = [(tmp_path / d / "metrics.md").read_text().split("\n\n")[2] for d in ("one", "two")]
    assert table[0] == table[1] and "self-training (3 runs" in table[0]


def test_a_server_without_ranges_is_scored_through_cache_dir(lab, tmp_path, capsys):
    """evaluate used to advise 'set data.cache_dir', an option it did not have."""
    argv = ["--run", str(lab / "pooled"), "--pairs", "pair00"]
    code, _, err = _cli([*argv, "--data", str(lab / "DATA"), "--out", str(tmp_path / "l")], capsys)
    assert code == 0, err
    with RangeServer(lab, ranges=False) as server:
        remote = [*argv, "--data", f"{server.url}/DATA"]
        code, _, err = _cli([*remote, "--out", str(tmp_path / "r1")], capsys)
        assert code == EXIT_USER_ERROR and "evaluate --cache-dir DIR" in err, err
        cache = ["--cache-dir", str(tmp_path / "cache")]
        code, _, err = _cli([*remote, *cache, "--out", str(tmp_path / "r2")], capsys)
        assert code == 0, err
    rows = [json.loads((tmp_path / o / "metrics.json").read_text())["rows"] for o in ("l", "r2")]
    assert rows[0][0]["summary"] == rows[1][0]["summary"]
    assert [p.name.split("-", 1)[1] for p in (tmp_path / "cache").glob("*.tar")] == [
        "full-000000.tar"
    ]
