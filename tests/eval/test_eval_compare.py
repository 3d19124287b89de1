"""aeatrain.compare: evaluations grouped over seeds, mean and sample standard deviation."""

import json

import pytest

from aeatrain.compare import main
from aeatrain.errors import UserError


def _evaluation(folder, dpsnr, *, sha="abc", pairs=("p0", "p1")):
    folder.mkdir(parents=True)
    summary = {"dpsnr": dpsnr, "dssim": dpsnr / 100, "fg_dpsnr": dpsnr / 2, "bg_dpsnr": 2 * dpsnr,
               "input_psnr": 21.5, "input_ssim": 0.25}  # fmt: skip
    row = {"label": folder.name, "summary": summary, "pairs": {p: {} for p in pairs}}
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
