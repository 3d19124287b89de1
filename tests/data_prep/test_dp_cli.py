"""The command line: one-line errors with exit 2, summary, check-truth, signals, demo.sh."""

import errno
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aeatrain.errors import run_cli
from aeatrain.files.microscope import read_calibration
from data_prep.__main__ import main
from data_prep.outdir import _remove_stale_staging
from data_prep.synth.generate import synthesize
from tests.data_prep.conftest import SMALL, SMALL_SEED

REPO = Path(__file__).resolve().parents[2]


def _cli(argv):
    """Run ``python -m data_prep ARGV`` in this process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: main(argv))
    return exit_info.value.code


def _env():
    return {**os.environ, "PYTHONPATH": str(REPO)}


def test_missing_and_empty_raw_folder_one_line_exit_2(tmp_path, capsys):
    assert _cli(["build", "--raw", str(tmp_path / "nope"), "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {tmp_path / 'nope'}: raw folder does not exist"]
    (tmp_path / "empty").mkdir()
    assert _cli(["build", "--raw", str(tmp_path / "empty"), "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "empty: no images found" in err[0]
    assert not (tmp_path / "d").exists()


def test_summary_and_check_truth(small_raw, small_data, capsys):
    assert _cli(["summary", str(small_data)]) == 0
    out = capsys.readouterr().out
    assert "pairs: 3 ok, 0 rejected" in out
    assert "samples: train 3 in 1 shard(s), test 9 in 1 shard(s), full 3 in 1 shard(s)" in out
    assert "bit depth 8" in out and "scale 2" in out
    assert _cli(["check-truth", str(small_raw), str(small_data)]) == 0
    out = capsys.readouterr().out
    assert "corner error over 3 pairs: max" in out
    assert _cli(["check-truth", str(small_raw), str(small_data), "--max-error", "0.001"]) == 1


def test_pairs_lists_usable_names_one_a_line(small_data, tmp_path, capsys):
    assert _cli(["pairs", str(small_data)]) == 0
    names = capsys.readouterr().out.split()
    assert len(names) == 3 and names == sorted(names)
    assert _cli(["pairs", str(tmp_path)]) == 2
    assert "manifest.json" in capsys.readouterr().err


def test_summary_of_a_folder_that_is_no_dataset(tmp_path, capsys):
    assert _cli(["summary", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "manifest.json: not found" in err[0]


def _start_build(raw, out, workers):
    command = [sys.executable, "-m", "data_prep", "build", "--raw", str(raw), "--out", str(out)]
    command += ["--bar-row", "384", "--workers", str(workers)]
    return subprocess.Popen(
        command, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _wait_for_work(process, parent, seconds=120):
    """Wait until the build has registered a pair (a QC picture in its staging folder)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if list(parent.glob(".data.staging-*/qc/*.png")):
            return
        if process.poll() is not None:
            pytest.fail(f"build ended before it could be interrupted: {process.communicate()}")
        time.sleep(0.05)
    pytest.fail("build did not start working in time")


def test_sigterm_mid_build_leaves_nothing(small_raw, tmp_path):
    process = _start_build(small_raw, tmp_path / "data", workers=2)
    _wait_for_work(process, tmp_path)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert not (tmp_path / "data").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_sigkill_mid_build_leaves_no_dataset_and_next_run_cleans_up(small_raw, tmp_path):
    process = _start_build(small_raw, tmp_path / "data", workers=1)
    _wait_for_work(process, tmp_path)
    process.kill()
    process.wait(timeout=30)
    assert not (tmp_path / "data").exists()
    left = list(tmp_path.glob(".data.staging-*"))
    assert len(left) == 1  # a killed process cannot clean up ...
    _remove_stale_staging(tmp_path / "data")  # ... the next build for the target does
    assert not left[0].exists()


def test_demo_refuses_a_non_empty_outdir(tmp_path):
    (tmp_path / "mine.txt").write_text("x")
    result = subprocess.run(
        ["bash", str(REPO / "launch" / "demo.sh"), str(tmp_path)],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "not empty" in result.stderr and (tmp_path / "mine.txt").read_text() == "x"


def test_demo_overwrite_keeps_folders_it_did_not_write(tmp_path):
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "thesis.md").write_text("x")  # rm -rf'd by --overwrite before
    result = subprocess.run(
        ["bash", str(REPO / "launch" / "demo.sh"), str(tmp_path), "--overwrite"],
        cwd=REPO,
        env={**_env(), "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "eval: --overwrite replaces only an aeatrain.evaluate report" in result.stderr
    assert (tmp_path / "eval" / "thesis.md").read_text() == "x"


@pytest.mark.slow  # ~40 s: a 2-process training run, evaluation and prediction
def test_demo_runs_every_stage(tmp_path):
    """The whole demo once, on FEI TIFFs (the BMP default differs only in synth's writer and
    build's reader, both tested on their own): it also checks the calibrated prediction."""
    image_format = "fei-tif"
    env = {
        **_env(),
        "PYTHON": sys.executable,
        "PAIRS": "2",
        "WIDTH": "512",
        "HEIGHT": "384",
        "WORKERS": "1",
        "CONFIG": "configs/debug.yaml",  # the demo's stages, at a test's budget
        "FORMAT": image_format,
    }
    result = subprocess.run(
        ["bash", str(REPO / "launch" / "demo.sh"), str(tmp_path / "demo")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    stages = ["1/6 synth", "2/6 build", "3/6 summary", "4/6 train", "5/6 evaluate", "6/6 predict"]
    assert all(f"== {stage}" in out for stage in stages), out
    assert "pairs: 2 ok, 0 rejected" in out and "corner error over 2 pairs" in out
    demo = tmp_path / "demo"
    assert (demo / "data" / "manifest.json").is_file()
    assert (demo / "raw" / "truth.json").is_file()
    assert (demo / "run" / "model.safetensors").is_file()
    assert (demo / "eval" / "metrics.md").is_file()
    predicted = [p for p in (demo / "predict").iterdir() if p.name != "aeatrain-outputs.json"]
    assert len(predicted) == 1 and (demo / "predict" / "aeatrain-outputs.json").is_file()
    assert f"predicted: {predicted[0]}" in out  # the summary names the image, not the list
    # 10 nm LR pixels -> a 5 nm calibrated TIFF
    assert read_calibration(predicted[0]).pixel_size_nm == pytest.approx(5.0)


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def _copy_pair(small_raw, raw, name="syn000"):
    raw.mkdir(exist_ok=True)
    for mag in (10000, 20000):
        shutil.copy(small_raw / f"{name}_{mag}.bmp", raw / f"{name}_{mag}.bmp")


def test_overwrite_refuses_a_folder_that_is_not_a_dataset(small_raw, tmp_path, capsys):
    (tmp_path / "P").mkdir()
    (tmp_path / "P" / "chapter1.txt").write_text("x")  # deleted by --overwrite before
    argv = ["build", "--raw", str(small_raw), "--out", str(tmp_path / "P"), "--overwrite"]
    assert _cli(argv) == 2
    assert "--overwrite replaces only a dataset of data_prep build" in _one_line_error(capsys)
    assert [p.name for p in tmp_path.iterdir()] == ["P"]
    assert (tmp_path / "P" / "chapter1.txt").read_text() == "x"


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_out_dot_from_an_empty_folder_is_one_line(
    small_raw, tmp_path, monkeypatch, capsys, overwrite
):
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)  # the staging folder used to be made inside it; EBUSY with --overwrite
    assert _cli(["build", "--raw", str(small_raw), "--out", ".", *overwrite]) == 2
    assert "error: .: is the current folder" in _one_line_error(capsys)
    assert list(here.iterdir()) == [] and [p.name for p in tmp_path.iterdir()] == ["here"]


def test_huge_image_header_through_the_worker_pool_is_one_line(small_raw, tmp_path, capsys):
    raw = tmp_path / "raw"
    _copy_pair(small_raw, raw, "syn000")
    _copy_pair(small_raw, raw, "syn001")
    header = (raw / "syn001_20000.bmp").read_bytes()
    huge = header[:18] + (100_000).to_bytes(4, "little") * 2 + header[26:]
    (raw / "syn001_20000.bmp").write_bytes(huge)
    argv = ["build", "--raw", str(raw), "--out", str(tmp_path / "data"), "--bar-row", "384"]
    assert _cli([*argv, "--workers", "2"]) == 2  # a cv2.error traceback before
    assert "syn001_20000.bmp: header claims 100000 x 100000 pixels" in _one_line_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


@pytest.mark.parametrize(
    ("where", "code", "problem"),
    [
        ("data_prep.build.write_manifest", errno.ENOSPC, "disk full"),
        ("data_prep.build.np.save", errno.EDQUOT, "disk quota exceeded"),
        ("data_prep.outdir.tempfile.mkdtemp", errno.EROFS, "read-only file system"),
        ("data_prep.outdir.tempfile.mkdtemp", errno.EACCES, "permission denied"),
    ],
)
def test_full_disk_or_read_only_output_is_one_line_and_leaves_nothing(
    small_raw, tmp_path, monkeypatch, capsys, where, code, problem
):
    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(where, fail)
    raw = tmp_path / "raw"
    _copy_pair(small_raw, raw)
    out = tmp_path / "data"
    assert _cli(["build", "--raw", str(raw), "--out", str(out), "--bar-row", "384"]) == 2
    assert _one_line_error(capsys).startswith(f"error: {out}: cannot write: {problem}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


def test_check_truth_refuses_data_built_from_another_raw(small_raw, small_data, tmp_path, capsys):
    other = tmp_path / "other"  # same names (syn000), other pixels and truth
    synthesize(other, pairs=1, seed=SMALL_SEED + 1, config=SMALL)
    assert _cli(["check-truth", str(other), str(small_data)]) == 2  # a 500 px "error" before
    line = _one_line_error(capsys)
    assert re.search(r"pair syn000 was built from another syn000_\d+\.bmp than .*other", line)
    assert "needs the RAW that DATA was built from" in line
    assert _cli(["check-truth", str(small_raw), str(small_data)]) == 0


def test_a_file_size_limit_in_a_real_build_is_one_line(small_raw, tmp_path):
    """``ulimit -f``: the first scratch file hits the limit (EFBIG), as a full disk would."""
    raw = tmp_path / "raw"
    _copy_pair(small_raw, raw)
    build = f"{shlex.quote(sys.executable)} -m data_prep build --raw raw --out data --no-bar"
    result = subprocess.run(
        ["bash", "-c", f"ulimit -f 64 && {build}"],  # 64 KiB; each scratch image is 192 KiB
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert lines == [lines[-1]] and "data: cannot write: file too large" in lines[0]
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]
