"""predict on each vendor's file (issue 20): the output TIFF's ImageJ calibration is the
true pixel size / scale; metadata that places the bar nowhere stops the run before any
output, ledger included."""

from __future__ import annotations

from pathlib import Path

import pytest
import tifffile

from aeatrain.errors import EXIT_USER_ERROR, run_cli
from aeatrain.predict import main as predict_main
from tests.eval.helpers import make_run
from tests.vendor_files import VENDOR_FILES, sem_image, write_fei


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A one-channel-wide U-Net at scale 2: seconds per small image."""
    return make_run(tmp_path_factory.mktemp("runs") / "unet_run", base_channels=1, residual=True)


def _cli(argv, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as stop:
        run_cli(lambda: predict_main(argv))
    return stop.value.code, capsys.readouterr().err


@pytest.mark.parametrize("vendor", sorted(VENDOR_FILES))
def test_output_calibration_is_the_true_pixel_size_over_the_scale(
    run_dir, tmp_path, vendor, capsys
):
    write, _, bar_row = VENDOR_FILES[vendor]
    source = tmp_path / "in" / "x.tif"
    source.parent.mkdir()
    true_nm = write(source)
    code, err = _cli(
        ["--run", str(run_dir), "--input", str(source), "--output", str(tmp_path / "o")], capsys
    )
    assert code == 0, err
    with tifffile.TiffFile(tmp_path / "o" / "x.tif") as tif:
        assert tif.imagej_metadata["unit"] == "nm"
        numerator, denominator = tif.pages.first.tags["XResolution"].value
        rows = tif.pages.first.shape[0]
    assert denominator / numerator == pytest.approx(true_nm / 2, rel=1e-3)
    if bar_row is not None:
        assert rows == 2 * bar_row  # the data bar the metadata places is cut


@pytest.mark.parametrize("rows, field", [(0.5, "ResolutionY 0.5"), (400, "ResolutionY 400")])
def test_nonsense_resolution_y_stops_predict_before_any_output(
    run_dir, tmp_path, capsys, rows, field
):
    write_fei(tmp_path / "good.tif", sem_image(48, 64), 5.0, 40)
    write_fei(tmp_path / "bad.tif", sem_image(48, 64), 5.0, rows)
    argv = ["--run", str(run_dir), "--input", str(tmp_path / "good.tif"), str(tmp_path / "bad.tif")]
    code, err = _cli([*argv, "--output", str(tmp_path / "o")], capsys)
    assert code == EXIT_USER_ERROR
    assert len(err.strip().splitlines()) == 1 and "bad.tif: [Image] " + field in err, err
    assert not (tmp_path / "o").exists()  # no output, no aeatrain-outputs.json
