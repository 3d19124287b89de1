"""Option values and files the commands must refuse in one line, exit 2, before any work:
nan/inf, seeds out of range, sizes that cannot fit, a corrupt truth.json or manifest
(issue 23, items 5, 15, 17, 18)."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from aeatrain.errors import EXIT_USER_ERROR, run_cli
from data_prep.__main__ import main
from data_prep.synth import generate


def _refused(argv, capsys) -> str:
    """The one error line of ``python -m data_prep ARGV``, which must exit 2."""
    with pytest.raises(SystemExit) as stop:
        run_cli(lambda: main(argv))
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == EXIT_USER_ERROR and len(err) == 1, err
    return err[0]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["check-truth", "RAW", "DATA", "--max-error", "nan"], "--max-error nan: must be a finite"),
        (["check-truth", "RAW", "DATA", "--max-error", "inf"], "--max-error inf: must be a finite"),
        (["synth", "--out", "S", "--max-rotation-deg", "nan"], "--max-rotation-deg nan: must be"),
        (["synth", "--out", "S", "--contrast=-inf"], "--contrast -inf: must be a finite"),
        (["synth", "--out", "S", "--shading", "nan"], "--shading nan: must be a finite"),
        (["synth", "--out", "S", "--seed", "-1"], "--seed -1: a seed is a whole number from 0 "),
        (["synth", "--out", "S", "--seed", str(2**32)], f"--seed {2**32}: a seed is a whole"),
    ],
    ids=["max-error-nan", "max-error-inf", "rotation-nan", "contrast-inf", "shading-nan",
         "seed-negative", "seed-2^32"],
)  # fmt: skip
def test_non_finite_floats_and_bad_seeds_are_refused(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    line = _refused(argv, capsys)
    assert message in line, line
    assert list(tmp_path.iterdir()) == []  # refused before anything was made


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--width", "100000", "--height", "100000"],
         r"100000x100000 at scale 2: rendering one pair needs about \d+\.\d GiB of memory"),
        (["--pairs", "1000000000"],
         r"--pairs 1000000000 of 1280x1024 pixels need up to 2441406\.\d GiB of disk"),
    ],
    ids=["10^10-pixels", "10^9-pairs"],
)  # fmt: skip
def test_synth_sizes_that_cannot_fit_are_refused_up_front(tmp_path, capsys, argv, message):
    line = _refused(["synth", "--out", str(tmp_path / "S"), *argv], capsys)
    assert re.search(message, line), line
    assert list(tmp_path.iterdir()) == []


def test_synth_workers_are_limited_to_what_memory_holds(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(generate, "_available_memory_bytes", lambda: 2**30)
    line = _refused(["synth", "--out", str(tmp_path / "S"), "--workers", "4"], capsys)
    # 1280 x 944 at scale 2: (1296 * 960) LR px * 16 canvas px * 32 bytes = 0.59 GiB a pair
    assert "--workers 4: 4 pairs of 1280x944 at scale 2 rendered at once need about 2.4 GiB" in line
    assert line.endswith("1.0 GiB is available; use --workers 1")


def _copy_raw(small_raw, raw):
    shutil.copytree(small_raw, raw)
    return json.loads((raw / "truth.json").read_text())


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda t: [], r"truth\.json: not a truth\.json of data_prep synth \(\(top level\): Input"),
        (lambda t: {**t, "pairs": []}, r"truth\.json: not a .* \(pairs: Input should be a valid dict"),
        (lambda t: {**t, "pairs": {"syn000": "x"}}, r"truth\.json: not a .* \(pairs\.syn000: Input"),
        (lambda t: {**t, "pairs": {"syn000": {**t["pairs"]["syn000"], "homography": [[1, 0], [0, 1]]}}},
         r"truth\.json: not a .* \(pairs\.syn000\.homography\.0: List should have at least 3"),
        (lambda t: {**t, "pairs": {"syn000": {**t["pairs"]["syn000"], "homography": "eye"}}},
         r"truth\.json: not a .* \(pairs\.syn000\.homography: Input should be a valid list"),
        (lambda t: {**t, "pairs": {"syn000": {**t["pairs"]["syn000"], "homography": [[1, 0, 0], [0, 1, 0], [0, 0, "nan"]]}}},
         r"truth\.json: not a .* \(pairs\.syn000\.homography\.2\.2: Input should be a finite"),
        (lambda t: {**t, "pairs": {"syn000": {**t["pairs"]["syn000"], "homography": [[0] * 3] * 3}}},
         r"truth\.json: pair syn000: the true homography is not invertible"),
    ],
    ids=["list", "pairs-list", "pair-string", "2x2", "string", "nan", "singular"],
)  # fmt: skip
def test_check_truth_on_a_corrupt_truth_json_is_one_line(
    small_raw, small_data, tmp_path, capsys, corrupt, message
):
    raw = tmp_path / "raw"
    truth = _copy_raw(small_raw, raw)
    (raw / "truth.json").write_text(json.dumps(corrupt(truth)))
    line = _refused(["check-truth", str(raw), str(small_data)], capsys)
    assert re.search(message, line), line


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        ("[]", r"manifest\.json: not a dataset manifest \(top level is not an object\)"),
        ('{"format": "aeatrain-dataset"}', r"manifest\.json: format_version is None; this aeatrain"),
        ('{"format": "aeatrain-dataset", "format_version": 1}',
         r"manifest\.json: format_version 1 has no shard indexes; add them once with"),
    ],
    ids=["empty-list", "format-only", "version-1"],
)  # fmt: skip
def test_summary_of_a_manifest_that_is_not_one_is_one_line(tmp_path, capsys, manifest, message):
    (tmp_path / "manifest.json").write_text(manifest)
    (tmp_path / "registration.json").write_text("{}")
    assert re.search(message, _refused(["summary", str(tmp_path)], capsys))


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [("ncc", "high", r"ncc: Input should be a valid number"),
     ("status", None, r"status: Input should be 'ok' or 'rejected'")],
    ids=["ncc-text", "no-status"],
)  # fmt: skip
def test_summary_and_check_truth_of_a_wrong_registration_record_are_one_line(
    small_raw, small_data, tmp_path, capsys, key, value, message
):
    """registration.json is read by one typed reader: a wrong field is named, not a traceback
    (a text ncc crashed the summary's formatting; check-truth did not look at it)."""
    data = tmp_path / "data"
    shutil.copytree(small_data, data)
    records = json.loads((data / "registration.json").read_text())
    name = sorted(records)[0]
    records[name][key] = value
    (data / "registration.json").write_text(json.dumps(records))
    expected = (
        rf"registration\.json: not a registration\.json of data_prep build \({name}\.{message}"
    )
    assert re.search(expected, _refused(["summary", str(data)], capsys))
    assert re.search(expected, _refused(["check-truth", str(small_raw), str(data)], capsys))
