"""synth's presets, specimen families and acquisition effects; the statistics of real SEM tiles."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from aeatrain.errors import UserError, run_cli
from aeatrain.protocol.split import paper_split
from data_prep import semstats
from data_prep.__main__ import main
from data_prep.registration import corner_error, register
from data_prep.synth.config import SynthConfig, preset_config
from data_prep.synth.families import FAMILIES
from data_prep.synth.generate import make_pair, synthesize
from data_prep.synth.scan import charging_trails, detector_effects, scan_drift

TINY = {"width": 128, "height": 96, "bar_rows": 0}


def _spec(family, seed):
    return FAMILIES[family](np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,))))


def _pair(family, preset, seed, **options):
    config = preset_config(preset, **options)
    return make_pair(config, _spec(family, seed), seed, 0)


def _cli(argv):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: main(argv))
    return exit_info.value.code


# --- reproducibility ---------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["default", "realistic"])
def test_every_family_is_reproducible_per_seed(preset):
    for family in FAMILIES:
        lr, hr, truth = _pair(family, preset, 3, **TINY)
        lr_again, hr_again, truth_again = _pair(family, preset, 3, **TINY)
        _, other_hr, _ = _pair(family, preset, 4, **TINY)
        assert np.array_equal(lr, lr_again) and np.array_equal(hr, hr_again), family
        assert truth == truth_again
        assert not np.array_equal(hr, other_hr), family
        assert hr.std() > 5, f"{family}: a featureless image"


def test_families_differ_from_each_other():
    images = {family: _pair(family, "realistic", 5, **TINY)[1] for family in FAMILIES}
    names = list(images)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not np.array_equal(images[a], images[b]), (a, b)


# --- registration accuracy ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("preset", "family"),
    [("realistic", f) for f in FAMILIES] + [("default", f) for f in FAMILIES if f != "aggregates"],
)
def test_every_family_registers_within_half_a_pixel(preset, family):
    """As the original generator's 512 x 384 pairs (test_dp_registration): corner error
    at most half an HR pixel (measured 0.08-0.26 px)."""
    lr, hr, truth = _pair(family, preset, 21, width=512, height=384, bar_rows=0)
    result = register(lr, hr, 2.0)
    assert result.ok, result.reason
    error = corner_error(np.array(truth["homography"]), result.homography, (512, 384))
    print(f"{preset} {family}: corner error {error:.3f} HR px, {result.coarse} start")
    assert error <= 0.5


# --- acquisition effects -----------------------------------------------------------------


def _lag1(noise):
    return float((noise[:, 1:] * noise[:, :-1]).mean() / noise.var())


def test_bandwidth_correlates_the_noise_and_line_offsets_shift_rows():
    rng = np.random.default_rng(0)
    white = rng.normal(0, 0.05, (200, 200))
    assert detector_effects(white, SynthConfig(), rng) is white  # the default: untouched
    assert abs(_lag1(white)) < 0.05
    assert _lag1(detector_effects(white, SynthConfig(bandwidth_px=0.75), rng)) > 0.55
    offsets = detector_effects(np.zeros((400, 50)), SynthConfig(line_offset=0.02), rng)
    assert np.ptp(offsets, axis=1).max() == 0  # one offset per scan line
    assert offsets[:, 0].std() == pytest.approx(0.02, rel=0.15)


def _flat_host(**options):
    """HR image area of a dispersed-family pair, as float."""
    return _pair("dispersed", "default", 7, **TINY, **options)[1].astype(np.float64)


def test_highlight_gain_clips_the_brightest_pixels():
    assert (_flat_host() == 255).mean() < 0.001
    assert (_flat_host(highlight_gain=2.5) == 255).mean() > 0.005


def test_charging_leaves_a_trail_after_bright_features_along_the_scan():
    signal = np.full((8, 64), 0.3, np.float32)
    signal[:, 20:24] = 0.9
    charged = charging_trails(signal, 0.5)
    assert np.allclose(charged[:, :20], 0.3)  # nothing before the feature (causal)
    assert (charged[:, 26] > 0.32).all() and (charged[:, 26] > charged[:, 40]).all()


def test_drift_has_its_rms_and_no_shift_or_shear():
    drift = scan_drift(np.random.default_rng(0), 500, 0.3)
    t = np.linspace(0, 1, 500)
    assert drift.shape == (500, 2)
    assert drift.std(axis=0) == pytest.approx([0.3, 0.3])
    assert np.abs(drift.mean(axis=0)).max() < 1e-9
    assert np.abs((drift * (t - t.mean())[:, None]).sum(axis=0)).max() < 1e-6


def test_edge_brightening_scales_the_rims():
    spec = _spec("clusters", 2)
    rng_state = np.random.SeedSequence(2, spawn_key=(1,))
    canvases = [
        spec.render(np.random.default_rng(rng_state), SynthConfig(**TINY, edge_brightening=k))
        for k in (0.0, 1.0, 2.0)
    ]
    rims = [c.image - canvases[0].image for c in canvases[1:]]
    assert rims[0].max() > 0.05 and np.allclose(rims[1], 2 * rims[0], atol=1e-5)


def test_bad_effect_values_are_user_errors():
    with pytest.raises(UserError, match="--line-offset"):
        SynthConfig(line_offset=-0.1)
    with pytest.raises(UserError, match="--highlight-gain"):
        SynthConfig(highlight_gain=0)
    with pytest.raises(UserError, match="--preset"):
        preset_config("glossy")


# --- the statistics of real SEM tiles (data_prep stats) -----------------------------------


def test_render_like_figures_quantises_and_resamples():
    tile = np.linspace(0, 7, 320 * 314).reshape(314, 320)
    image = semstats.render_like_figures(tile)
    assert image.shape == (269, 274)
    assert image.min() == 0 and image.max() == 1 and np.unique(image).size <= 256


def test_tile_statistics_count_and_size_known_discs():
    """Twenty discs of 16 px diameter on white noise: 20 clusters of diameter ~16 px, the
    white noise uncorrelated; blurred noise correlated."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:314, :320]
    tile = np.zeros((314, 320))
    for k in range(20):
        cx, cy = 30 + 65 * (k % 5), 35 + 75 * (k // 5)
        tile[(xx - cx) ** 2 + (yy - cy) ** 2 <= 8**2] = 1.0
    white = semstats.tile_statistics(tile + rng.normal(0, 0.08, tile.shape))
    assert white.clusters == 20
    assert np.median(white.diameters_px) == pytest.approx(16, rel=0.1)
    assert white.foreground_fraction == pytest.approx(20 * np.pi * 64 / tile.size, rel=0.15)
    assert abs(white.autocorrelation[0]) < 0.15
    assert white.cnr == pytest.approx(1 / 0.08, rel=0.15)  # contrast 1, white noise 0.08
    correlated = ndimage.gaussian_filter(rng.normal(0, 0.2, tile.shape), 0.9)
    assert semstats.tile_statistics(tile + correlated).autocorrelation[0] > 0.4


def test_realistic_preset_meets_the_acceptance_on_one_pair():
    """The three HR test tiles of one full-size pair (docs/data_prep.md has the 8-pair
    table): every issue-16 statistic within its target."""
    _, hr, _ = _pair("clusters", "realistic", 0, bar_rows=0)
    split = paper_split(hr.shape[1], hr.shape[0])
    stats = [semstats.tile_statistics(hr[r.y0 : r.y1, r.x0 : r.x1]) for r in split.tests.values()]
    summary = semstats.summarise(stats)
    print(semstats.targets_line("one realistic pair", summary))
    assert all(semstats.within_targets(summary).values())


# --- command line ------------------------------------------------------------------------


def test_cli_preset_family_and_stats(tmp_path, capsys):
    raw = tmp_path / "raw"
    argv = ["synth", "--out", str(raw), "--pairs", "1", "--width", "384", "--height", "288"]
    assert main([*argv, "--preset", "realistic", "--family", "grains", "--charging", "0.1"]) == 0
    truth = json.loads((raw / "truth.json").read_text())
    assert truth["family"] == "grains" and truth["config"]["charging"] == 0.1
    assert truth["config"]["bandwidth_px"] == 0.75  # the preset's
    capsys.readouterr()
    assert main(["stats", str(raw)]) == 0
    out = capsys.readouterr().out
    assert "| clusters per tile |" in out and "raw (3 tiles)" in out
    assert "raw: issue 16 acceptance" in out
    assert _cli([*argv[:2], str(tmp_path / "bad"), "--line-offset", "-1"]) == 2
    assert "error: --line-offset: -1.0 outside [0, 100)" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_truth_names_the_family(tmp_path):
    truth = synthesize(tmp_path / "raw", pairs=1, seed=0, config=SynthConfig(**TINY))
    assert truth["family"] == "aggregates"
    assert truth["config"]["bandwidth_px"] == 0 and truth["config"]["highlight_gain"] == 1
    for family in FAMILIES:
        assert _spec(family, 0).family == family


def test_demo_passes_its_preset_to_synth(tmp_path):
    """PRESET reaches ``synth --preset``: an unknown one stops the demo at step 1."""
    repo = Path(__file__).resolve().parents[3]
    env = {**os.environ, "PYTHONPATH": str(repo), "PYTHON": sys.executable, "PRESET": "glossy"}
    result = subprocess.run(
        ["bash", str(repo / "launch" / "demo.sh"), str(tmp_path / "demo")],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "(glossy preset)" in result.stdout and "--preset: invalid choice" in result.stderr
    assert not (tmp_path / "demo" / "raw").exists()
