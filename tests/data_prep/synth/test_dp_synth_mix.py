"""python -m data_prep synth-mix: one folder per specimen family under its own acquisition
settings, and the pairs file that builds them into one pooled dataset."""

import json

import pytest

from aeatrain.errors import UserError
from data_prep.__main__ import main
from data_prep.pairs_file import read_pairs_file
from data_prep.synth.generate import MIX


def test_every_family_under_its_own_settings_in_one_pairs_file(tmp_path, capsys):
    raw = tmp_path / "RAW"
    argv = ["synth-mix", "--out", str(raw), "--pairs-per-family", "2", "--seed", "5",
            "--width", "96", "--height", "64", "--bar-rows", "0", "--workers", "1"]  # fmt: skip
    assert main(argv) == 0
    assert (
        "synth-mix: 8 pairs (2 of each of clusters, grains, fibres, porous"
        in capsys.readouterr().out
    )
    assert sorted(p.name for p in raw.iterdir()) == sorted([*MIX, "pairs.csv"])
    for k, (family, settings) in enumerate(MIX.items()):
        truth = json.loads((raw / family / "truth.json").read_text())
        assert truth["family"] == family and truth["seed"] == 5 + k
        assert truth["config"]["width"] == 96 and truth["config"]["bandwidth_px"] > 0  # realistic
        assert {key: truth["config"][key] for key in settings} == settings
    doses = {json.loads((raw / f / "truth.json").read_text())["config"]["dose"] for f in MIX}
    assert len(doses) == len(MIX)  # different acquisitions, not one
    pairs = read_pairs_file(raw / "pairs.csv", raw)
    assert [p.name for p in pairs] == sorted(f"{f}-syn00{i}" for f in MIX for i in (0, 1))
    assert all(p.lr_path.parent.name == p.name.split("-")[0] and p.scale == 2 for p in pairs)


def test_refuses_an_existing_folder_and_leaves_it(tmp_path):
    (tmp_path / "theirs.txt").write_text("not ours\n")
    with pytest.raises(UserError, match="not empty"):
        main(["synth-mix", "--out", str(tmp_path), "--width", "96", "--height", "64"])
    assert [p.name for p in tmp_path.iterdir()] == ["theirs.txt"]
