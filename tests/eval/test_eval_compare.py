"""aeatrain.compare: evaluations grouped over seeds, mean and sample standard deviation."""

import json
import re
import shutil

import pytest

from aeatrain.compare import main
from aeatrain.errors import UserError


def _evaluation(folder, dpsnr, *, sha="abc", pairs=("p0", "p1"), model=None, seed=None, **setup):
    """metrics.json as evaluate writes it; the run's model is the name's first word and its
    seed the name's suffix unless given; ``setup`` sets optim keys of its config."""
    folder.mkdir(parents=True)
    summary = {"dpsnr": dpsnr, "dssim": dpsnr / 100, "fg_dpsnr": dpsnr / 2, "bg_dpsnr": 2 * dpsnr,
               "input_psnr": 21.5, "input_ssim": 0.25}  # fmt: skip
    name = folder.parent.name if folder.name == "eval" else folder.name
    model = model or name.split("-")[0]
    suffix = re.search(r"seed(\d+)$", name)
    seed = seed if seed is not None else int(suffix.group(1) if suffix else 0)
    config = {"model": {"name": model}, "optim": {"lr": 4e-4, **setup},
              "train": {"seed": seed, "run_dir": f"runs/{name}"}}  # fmt: skip
    run = {"path": f"runs/{name}", "model": model, "step": 10, "weights": "raw",
           "config": config, "trained_on": "identity-1"}  # fmt: skip
    row = {"label": name, "kind": "run", "runs": [run], "prediction": {"mode": "whole"},
           "summary": summary, "pairs": {p: {} for p in pairs}}  # fmt: skip
    metrics = {"rows": [row], "data": {"manifest_sha256": sha}}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


def test_seeds_of_one_configuration_make_one_row(tmp_path, capsys):
    folders = [
        _evaluation(tmp_path / "unet-pooled-seed0", 1.0),
        _evaluation(tmp_path / "aeanet-pooled-seed0", 2.0),
        _evaluation(tmp_path / "unet-pooled-seed1", 2.0),
        _evaluation(tmp_path / "aeanet-pooled-seed1", 3.0),
    ]
    assert main([str(f) for f in folders] + ["--out", str(tmp_path / "t.md")]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")][1:]
    assert rows[0].startswith("| unet-pooled | 2 | +1.50 ± 0.71 | +0.0150 ± 0.0071 |")
    assert rows[1].startswith("| aeanet-pooled | 2 | +2.50 ± 0.71 |")
    assert rows[1].endswith("| +2.00, +3.00 |")
    assert "PSNR 21.50 dB" in (tmp_path / "t.md").read_text()


def test_a_single_seed_has_no_spread(tmp_path, capsys):
    main([str(_evaluation(tmp_path / "gvtnet-self", 0.5))])
    assert "| gvtnet-self | 1 | +0.50 | +0.0050 |" in capsys.readouterr().out


def test_different_data_or_pairs_are_refused(tmp_path):
    a = _evaluation(tmp_path / "a-seed0", 1.0)
    b = _evaluation(tmp_path / "b-seed0", 1.0, sha="other")
    c = _evaluation(tmp_path / "c-seed0", 1.0, pairs=("p0",))
    for other in (b, c):
        with pytest.raises(UserError, match="other data or pairs"):
            main([str(a), str(other)])


def test_evaluations_are_grouped_by_what_was_run_not_by_folder_name(tmp_path, capsys):
    """Issue 23 item 3: RUN/eval and RUNU/eval (evaluate's default --out) were one row
    "eval" of 2 seeds averaging an AEANet and a U-Net."""
    aeanet = _evaluation(tmp_path / "RUN" / "eval", 2.0, model="aeanet")
    unet = _evaluation(tmp_path / "RUNU" / "eval", 1.0, model="unet")
    main([str(aeanet), str(unet)])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")][1:3]
    assert rows[0].startswith("| RUN | 1 | +2.00 |") and rows[1].startswith("| RUNU | 1 | +1.00 |")


@pytest.mark.parametrize(
    ("second", "expected"),
    [
        (dict(model="aeanet"), r"one name \('unet-pooled'\) for two setups \(runs.config."
         r"model.name 'unet' vs 'aeanet'\); a row averages seeds of one setup only"),
        (dict(lr=1e-3), r"for two setups \(runs.config.optim.lr 0.0004 vs 0.001\)"),
        (dict(seed=0), r"seed1 and .*seed0: the same setup and seed 0 \(the same run twice\?\)"),
    ],
)  # fmt: skip
def test_one_name_for_two_setups_or_one_run_twice_is_refused(tmp_path, second, expected):
    first = _evaluation(tmp_path / "unet-pooled-seed0", 1.0)
    other = _evaluation(tmp_path / "unet-pooled-seed1", 3.0, **second)
    with pytest.raises(UserError, match=expected):
        main([str(first), str(other)])


def test_lbnlm_seeds_are_one_setup_whatever_their_search_chose(tmp_path, capsys):
    """lbnlm records the settings its seeded search chose: results, not the setup."""
    folders = []
    for seed, h in ((0, 0.05), (1, 0.08)):
        folder = _evaluation(tmp_path / f"lbnlm-pooled-seed{seed}", 1.0 + seed)
        metrics = json.loads((folder / "metrics.json").read_text())
        metrics["rows"][0]["runs"][0]["config"] = {
            "model": {"name": "lbnlm", "h": h}, "data": {"root": "D", "pairs": None},
            "lbnlm": {"seed": seed, "build_seconds": 3.0 + seed, "search": [[h, 1.0]]},
        }  # fmt: skip
        (folder / "metrics.json").write_text(json.dumps(metrics))
        folders.append(str(folder))
    main(folders)
    assert "| lbnlm-pooled | 2 | +1.50 ± 0.71 |" in capsys.readouterr().out
    with pytest.raises(UserError, match=r"the same setup and seed 0"):
        main([folders[0], str(shutil.copytree(folders[0], tmp_path / "lbnlm-pooled-seed5"))])


def test_the_same_folder_twice_is_refused(tmp_path):
    folder = _evaluation(tmp_path / "unet-pooled-seed0", 1.0)
    with pytest.raises(UserError, match=r"unet-pooled-seed0/?: given twice"):
        main([str(folder), str(tmp_path / "." / "unet-pooled-seed0")])


@pytest.mark.parametrize(
    ("metrics", "expected"),
    [
        ([], r"metrics.json: not a metrics.json of aeatrain.evaluate \(\(top level\): Input"),
        ({"rows": [{"label": "x"}], "data": {"manifest_sha256": "a"}},
         r"metrics.json: its row has no summary figure 'dpsnr'"),
        ({"rows": ["x"], "data": {"manifest_sha256": "a"}},
         r"metrics.json: not a metrics.json .* \(rows.0: Input should be a valid dictionary"),
        ({"rows": [{"summary": [1, 2]}], "data": {"manifest_sha256": "a"}},
         r"metrics.json: not a metrics.json .* \(rows.0.summary: Input should be a valid dict"),
        ({"rows": [{"summary": {"dpsnr": 1, "dssim": 1, "fg_dpsnr": 1, "bg_dpsnr": 1}}]},
         r"metrics.json: not a metrics.json .* \(data: Field required"),
        ({"rows": [], "data": {"manifest_sha256": "a"}},
         r"metrics.json: holds 0 rows; compare takes one evaluation per folder"),
        ("{", r"metrics.json: not a metrics.json .* \(not valid JSON"),
    ],
)  # fmt: skip
def test_a_metrics_file_compare_cannot_read_is_one_line(tmp_path, metrics, expected):
    """Issue 23 item 12: each was a traceback."""
    (tmp_path / "e").mkdir()
    text = metrics if isinstance(metrics, str) else json.dumps(metrics)
    (tmp_path / "e" / "metrics.json").write_text(text)
    with pytest.raises(UserError, match=expected):
        main([str(tmp_path / "e")])


def test_a_file_instead_of_a_folder_is_one_line(tmp_path):
    folder = _evaluation(tmp_path / "unet-pooled-seed0", 1.0)
    with pytest.raises(UserError, match=r"metrics.json: a file; compare takes the folders"):
        main([str(folder / "metrics.json")])


def test_an_older_metrics_file_is_read_with_its_run_folder(tmp_path, capsys):
    """metrics.json of an aeatrain that did not record the runs' configs."""
    folders = []
    for seed, model in ((0, "unet"), (1, "aeanet")):
        run = tmp_path / "runs" / f"x-seed{seed}"
        run.mkdir(parents=True)
        (run / "config.yaml").write_text(f"model: {{name: {model}}}\ntrain: {{seed: {seed}}}\n")
        (run / "run.json").write_text(json.dumps({
            "format": "aeatrain-run", "format_version": 1, "scale": 2.0, "bit_depths": [8],
            "dataset": {"identity": "i"}, "model": {"name": model, "kwargs": {}}, "step": 10,
            "weights": {"raw": "model.safetensors", "ema": None}}))  # fmt: skip
        folder = _evaluation(tmp_path / f"x-seed{seed}", 1.0)
        metrics = json.loads((folder / "metrics.json").read_text())
        metrics["rows"][0]["runs"] = [{"path": str(run), "model": model, "weights": "raw"}]
        (folder / "metrics.json").write_text(json.dumps(metrics))
        folders.append(str(folder))
    with pytest.raises(UserError, match=r"for two setups \(runs.config.model.name 'unet' vs 'aea"):
        main(folders)
    shutil.rmtree(tmp_path / "runs")
    with pytest.raises(UserError, match=r"does not record what its run .*x-seed0 was"):
        main(folders)


def test_missing_metrics_is_named(tmp_path):
    with pytest.raises(UserError, match=r"metrics\.json: no such file"):
        main([str(tmp_path)])


def test_table_1_layout_puts_ours_beside_the_papers_figures(tmp_path, capsys):
    folders = [
        _evaluation(tmp_path / "aeanet-pooled-seed0", 2.0),
        _evaluation(tmp_path / "aeanet-pooled-seed1", 3.0),
        _evaluation(tmp_path / "aeanet-self-seed0", 4.0),
        _evaluation(tmp_path / "vdsr-pooled-seed0", 1.0),
    ]
    main([str(f) for f in folders])
    out = capsys.readouterr().out
    layout = out.split("## Table 1 layout")[1]
    rows = [line for line in layout.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| method | seeds | pooled dPSNR (ours) | pooled dPSNR (paper) |")
    vdsr, aeanet = rows[1], rows[2]  # Table 1 order: VDSR before AEANet
    assert vdsr.startswith("| VDSR | 1/- | +1.00 | - | +0.010 | - | - | - | - | - | +0.50 | - |")
    assert aeanet.startswith("| AEANet | 2/1 | +2.50 ± 0.71 | +2.10 | +0.025 ± 0.007 | +0.087 |")
    assert aeanet.endswith("| +5.00 ± 1.41 | +2.42 |")  # bg dPSNR = 2 x dPSNR; paper 2.42
    assert "| +4.00 | - | +0.040 | - |" in aeanet  # self-training: no paper figure given


def test_out_replaces_only_a_table_compare_wrote(tmp_path, capsys):
    evaluation = str(_evaluation(tmp_path / "unet-pooled-seed0", 1.0))
    thesis = tmp_path / "thesis.md"
    thesis.write_text("chapter 1")
    for overwrite in ([], ["--overwrite"]):  # replaced before, whatever it held
        with pytest.raises(UserError, match=r"thesis\.md"):
            main([evaluation, "--out", str(thesis), *overwrite])
    assert thesis.read_text() == "chapter 1"
    table = tmp_path / "results.md"
    main([evaluation, "--out", str(table)])
    with pytest.raises(UserError, match="already exists"):
        main([evaluation, "--out", str(table)])
    main([str(_evaluation(tmp_path / "unet-pooled-seed1", 3.0)), evaluation, "--out", str(table),
          "--overwrite"])  # fmt: skip
    assert "| unet-pooled | 2 | +2.00 ± 1.41 |" in table.read_text()
