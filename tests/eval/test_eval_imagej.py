"""The real ImageJ opens what aeatrain writes calibrated, and aeatrain reads the
calibrations ImageJ writes.

predict's TIFF of every vendor fixture (tests/vendor_files.py), a 16-bit and a float32
one, and refmaps' raw maps are opened by ImageJ 1.53t (Debian's ``imagej`` package,
``/usr/share/java/ij.jar``; .ci/run installs it), which must report the input's pixel
size / scale in nm and the pixels tifffile reads; ImageJ saves images calibrated in the
units its users type, which aeatrain must read. One JVM start for all of it (1-3 s on
2 cores). Without ImageJ those tests skip, saying so; the unit spellings ImageJ writes
and the strips it cannot read are also checked without it.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from aeatrain.files.images import write_image_rows
from aeatrain.files.microscope import read_calibration
from aeatrain.predict import main as predict_main
from aeatrain.refmaps import main as refmaps_main
from tests.eval.helpers import make_run
from tests.vendor_files import VENDOR_FILES, sem_image, write_fei

IMAGEJ_JAR = Path("/usr/share/java/ij.jar")  # where Debian's imagej package puts it

# Jobs, one per line of the file named by the macro's argument, fields split by tabs:
#   open PATH              print how ImageJ reads PATH (one "opened" line; the pixel
#                          statistics are of the first plane)
#   save UNIT SIZE PATH    save a 40 x 30 image of SIZE UNIT pixels as a TIFF
# ImageJ 1.53t's open() first builds its AWT menu bar, which headless Java refuses; that
# first refusal (inside eval, which fails alone) leaves the command table built, so the
# later opens skip the menu bar.
MACRO = r"""
eval("run('Close All');");
jobs = split(File.openAsString(getArgument()), "\n");
for (i = 0; i < jobs.length; i++) {
    job = split(jobs[i], "\t");
    if (job[0] == "save") {
        newImage("calibrated", "8-bit ramp", 40, 30, 1);
        setVoxelSize(parseFloat(job[2]), parseFloat(job[2]), 1, job[1]);
        saveAs("Tiff", job[3]);
    } else {
        open(job[1]);
        getPixelSize(unit, pixel_width, pixel_height);
        getStatistics(area, mean, min, max);
        print("opened\t" + job[1] + "\t" + getWidth() + "\t" + getHeight() + "\t" + nSlices
            + "\t" + bitDepth() + "\t" + d2s(pixel_width, -9) + "\t" + d2s(pixel_height, -9)
            + "\t" + d2s(mean, -9) + "\t" + d2s(min, -9) + "\t" + d2s(max, -9) + "\t" + unit);
    }
    close();
}
"""

# typed in ImageJ's Set Scale -> nm per unit aeatrain reads; None: no pixel size (ImageJ
# turns print resolution, dots per inch or cm, into "inch" and "cm" calibrations)
TYPED_UNITS = {
    "nm": 1.0,
    "um": 1e3,
    "micron": 1e3,
    "microns": 1e3,
    "nanometer": 1.0,
    "A": 0.1,
    "mm": 1e6,
    "inch": None,
    "cm": None,
    "pixel": None,
}
SAVED_PIXEL = 2.5  # in the typed unit


@dataclass(frozen=True)
class ImageJReading:
    """How ImageJ reads one file: ``getWidth()``, ``getHeight()``, ``nSlices``,
    ``bitDepth()``, ``getPixelSize`` and ``getStatistics`` of the first plane."""

    width: int
    height: int
    slices: int
    bit_depth: int
    pixel_width: float
    pixel_height: float
    mean: float
    min: float
    max: float
    unit: str


def run_imagej(jobs: list[tuple[str, ...]], workdir: Path) -> dict[Path, ImageJReading]:
    """Run :data:`MACRO` over ``jobs`` in one headless ImageJ; the readings of the opened
    files. ImageJ's home is ``workdir``: no user preferences change what it does."""
    (workdir / "jobs.txt").write_text("".join("\t".join(job) + "\n" for job in jobs))
    (workdir / "report.ijm").write_text(MACRO)
    command = [shutil.which("java"), "-Djava.awt.headless=true", f"-Duser.home={workdir}"]
    command += ["-jar", str(IMAGEJ_JAR), "-batch", str(workdir / "report.ijm")]
    done = subprocess.run(
        [*command, str(workdir / "jobs.txt")], capture_output=True, text=True, timeout=120
    )
    readings = {}
    for line in done.stdout.splitlines():
        if line.startswith("opened\t"):
            path, *numbers, unit = line.split("\t")[1:]
            counts, values = map(int, numbers[:4]), map(float, numbers[4:])
            readings[Path(path)] = ImageJReading(*counts, *values, unit)
    opened = [Path(job[1]) for job in jobs if job[0] == "open"]
    assert sorted(readings) == sorted(opened), done.stdout + done.stderr[-3000:]
    return readings


def _file_name(vendor: str) -> str:
    return f"{vendor.replace(' ', '_')}.tif"


@dataclass(frozen=True)
class Outputs:
    root: Path
    true_nm: dict[str, float]  # input name -> its true pixel size
    readings: dict[Path, ImageJReading]


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> Outputs:
    """predict (a tiny U-Net, scale 2) on every vendor fixture and a 16-bit FEI file, a
    float32 predict and refmaps (a tiny AEANet) on the FEI file; then ImageJ saves its
    calibrated images and opens all of ours, in one start."""
    if shutil.which("java") is None or not IMAGEJ_JAR.is_file():
        pytest.skip(f"ImageJ is not installed (no {IMAGEJ_JAR} or no java): apt-get install imagej")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as conftest.py does per test, which starts after this fixture
    root = tmp_path_factory.mktemp("imagej")
    inputs = root / "in"
    inputs.mkdir()
    true_nm = {}
    for vendor, (write, _, _) in VENDOR_FILES.items():
        true_nm[_file_name(vendor)] = write(inputs / _file_name(vendor))
    fei16 = sem_image(80, 80).astype(np.uint16) * 257  # 144 output rows: 3 strips
    true_nm["fei_16bit.tif"] = write_fei(inputs / "fei_16bit.tif", fei16, 12.40234, 72)
    unet = make_run(root / "unet_run", base_channels=1, residual=True)
    aeanet = make_run(root / "aeanet_run", model_name="aeanet", num_refs=8)
    fei = str(inputs / "fei.tif")
    names = [str(inputs / name) for name in sorted(true_nm)]
    assert predict_main(["--run", str(unet), "--input", *names, "--output", str(root / "x2")]) == 0
    argv = ["--run", str(unet), "--input", fei, "--output", str(root / "float32"), "--float32"]
    assert predict_main(argv) == 0
    refs = ["--refs", "0", "5"]
    argv = ["--run", str(aeanet), "--input", fei, "--output", str(root / "maps"), *refs]
    assert refmaps_main(argv) == 0
    torch.set_num_threads(threads)
    (root / "by_imagej").mkdir()
    jobs = [
        ("save", unit, str(SAVED_PIXEL), str(root / "by_imagej" / f"{unit}.tif"))
        for unit in TYPED_UNITS
    ]
    written = [*sorted((root / "x2").glob("*.tif")), root / "float32" / "fei.tif"]
    jobs += [("open", str(path)) for path in [*written, root / "maps" / "fei_refmaps.tif"]]
    return Outputs(root, true_nm, run_imagej(jobs, root))


def _assert_calibrated(reading: ImageJReading, pixel_nm: float) -> None:
    assert reading.unit == "nm"
    assert reading.pixel_width == pytest.approx(pixel_nm, rel=1e-3)
    assert reading.pixel_height == pytest.approx(pixel_nm, rel=1e-3)


def _assert_same_pixels(reading: ImageJReading, path: Path) -> None:
    """ImageJ's mean, min and max of the first plane are tifffile's."""
    plane = tifffile.imread(path).reshape(-1, reading.height, reading.width)[0]
    plane = plane.astype(np.float64)
    assert (reading.min, reading.max) == pytest.approx((plane.min(), plane.max()), rel=1e-6)
    assert reading.mean == pytest.approx(plane.mean(), rel=1e-6)


@pytest.mark.parametrize("vendor", sorted(VENDOR_FILES))
def test_imagej_opens_each_vendors_prediction_at_pixel_size_over_scale(outputs, vendor):
    name = _file_name(vendor)
    _, _, bar_row = VENDOR_FILES[vendor]
    height, width = tifffile.imread(outputs.root / "in" / name).shape
    reading = outputs.readings[outputs.root / "x2" / name]
    assert (reading.width, reading.height) == (2 * width, 2 * (bar_row or height))
    assert (reading.slices, reading.bit_depth) == (1, 8)
    _assert_calibrated(reading, outputs.true_nm[name] / 2)
    _assert_same_pixels(reading, outputs.root / "x2" / name)


def test_imagej_opens_16_bit_float32_and_refmaps_outputs_calibrated(outputs):
    for path, size, pixel_nm in [
        (outputs.root / "x2" / "fei_16bit.tif", (160, 144, 1, 16), 12.40234 / 2),  # bar at 72
        (outputs.root / "float32" / "fei.tif", (192, 128, 1, 32), 3.3724 / 2),
        (outputs.root / "maps" / "fei_refmaps.tif", (192, 128, 2, 32), 3.3724 / 2),
    ]:
        reading = outputs.readings[path]
        assert (reading.width, reading.height, reading.slices, reading.bit_depth) == size
        _assert_calibrated(reading, pixel_nm)
        _assert_same_pixels(reading, path)


@pytest.mark.parametrize("unit", sorted(TYPED_UNITS))
def test_aeatrain_reads_the_calibration_imagej_saves(outputs, unit):
    calibration = read_calibration(outputs.root / "by_imagej" / f"{unit}.tif")
    if TYPED_UNITS[unit] is None:
        assert calibration is None
    else:
        assert calibration.pixel_size_nm == pytest.approx(SAVED_PIXEL * TYPED_UNITS[unit])


@pytest.mark.parametrize(
    "unit, nm_per_unit",
    [("nm", 1.0), ("\\u00B5m", 1e3), ("micron", 1e3), ("microns", 1e3), ("nanometer", 1.0),
     ("\\u00C5", 0.1), ("mm", 1e6), ("inch", None), ("pixel", None)],
)  # fmt: skip
def test_unit_spellings_imagej_writes(tmp_path, unit, nm_per_unit):
    """The descriptions ImageJ 1.53t writes (as the ImageJ tests above saw them), without
    ImageJ: its Set Scale saves the unit as typed, non-ASCII letters as \\u escapes."""
    description = f"ImageJ=1.53t\nunit={unit}\n"
    tifffile.imwrite(
        tmp_path / "x.tif", sem_image(30, 40), description=description, resolution=(0.4, 0.4)
    )
    calibration = read_calibration(tmp_path / "x.tif")
    if nm_per_unit is None:
        assert calibration is None
    else:
        assert calibration.pixel_size_nm == pytest.approx(2.5 * nm_per_unit)
        assert calibration.vendor == "imagej"


@pytest.mark.parametrize("height, strips", [(64, 1), (96, 1), (128, 1), (129, 3), (200, 4)])
def test_streamed_tiff_is_never_two_strips(tmp_path, height, strips):
    """ImageJ 1.53t cannot open a 16- or 32-bit TIFF of exactly two small strips (tifffile
    stores their byte counts as two SHORTs inside the IFD entry, which ImageJ misreads; the
    ImageJ tests above caught it on 96- and 128-row outputs): up to 128 rows, one strip."""
    image = np.random.default_rng(0).integers(0, 65536, (height, 80), dtype=np.uint16)
    write_image_rows(tmp_path / "x.tif", [image[:50], image[50:]], image.shape, np.uint16)
    with tifffile.TiffFile(tmp_path / "x.tif") as tif:
        assert len(tif.pages.first.dataoffsets) == strips
        assert np.array_equal(tif.asarray(), image)
