"""benchmarks/family_gains.py: the per-family table of synth-mix evaluations."""

import json
import runpy
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "family_gains.py"


def _evaluation(folder: Path, gains: dict[str, float]) -> Path:
    folder.mkdir(parents=True)
    document = {"format": "aeatrain-metrics", "format_version": 1,
                "data": {"manifest_sha256": "0" * 64},
                "rows": [{"label": folder.name,
                          "pairs": {p: {"mean": {"dpsnr": g}} for p, g in gains.items()}}]}  # fmt: skip
    (folder / "metrics.json").write_text(json.dumps(document))
    return folder


def test_families_are_averaged_per_run_and_over_seeds(tmp_path, capsys):
    module = runpy.run_path(str(SCRIPT))
    seed0 = _evaluation(tmp_path / "unet-pooled-seed0",
                        {"grains-syn000": 1.0, "grains-syn001": 2.0, "fibres-syn000": -0.5})  # fmt: skip
    seed1 = _evaluation(
        tmp_path / "unet-pooled-seed1", {"grains-syn000": 0.5, "fibres-syn000": 0.5}
    )
    assert module["main"]([str(seed0), str(seed1)]) == 0
    out = capsys.readouterr().out
    assert "| run | fibres | grains |" in out
    assert "| unet-pooled-seed0 | -0.50 | +1.50 |" in out
    assert "| unet-pooled-seed1 | +0.50 | +0.50 |" in out
    assert "| unet-pooled | +0.00 | +1.00 |" in out
    assert module["family_of"]("pair07") == "-"


def test_a_folder_without_metrics_is_one_line(tmp_path):
    module = runpy.run_path(str(SCRIPT))
    with pytest.raises(Exception, match=r"metrics\.json"):
        module["main"]([str(tmp_path)])
