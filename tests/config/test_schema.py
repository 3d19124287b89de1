"""The config tree's defaults and the shipped configs (aeatrain/config/schema.py)."""

from pathlib import Path

import pytest
import yaml

from aeatrain.config.load import load_config
from aeatrain.config.schema import Config

REPO = Path(__file__).resolve().parents[2]


def test_defaults_are_the_paper_faithful_values(minimal):
    cfg = load_config(minimal)
    assert (cfg.optim.lr, cfg.optim.lr_decay_every, cfg.optim.lr_decay_factor) == (
        4e-4,
        10_000,
        0.5,
    )
    assert (cfg.optim.loss, cfg.data.global_batch_size, cfg.data.crop_size) == ("l1", 8, 256)
    assert (cfg.train.steps, cfg.model.num_refs, cfg.model.bn_momentum) == (120_000, 64, 0.003)
    assert cfg.model.bn_eps == 1e-5 and cfg.train.ema is False and cfg.data.augment is False


def test_resolved_yaml_round_trips(minimal):
    cfg = load_config(minimal, ["--data.crop_size", "full", "--optim.grad_clip_norm", "1.0"])
    again = Config.model_validate(yaml.safe_load(cfg.to_yaml()))
    assert again == cfg


SHIPPED = sorted((REPO / "configs").glob("*.yaml"))


def test_every_expected_config_is_shipped():
    names = {path.stem for path in SHIPPED}
    expected = {
        "aeanet",
        "unet",
        "gvtnet",
        "aeanet_refs_only",
        "aeanet_batch_only",
        "aeanet_refs16",
        "aeanet_refs32",
        "aeanet_fullres",
        "selftrain",
        "debug",
        "vdsr",
        "edsr",
        "rcan",
    }
    assert expected <= names


@pytest.mark.parametrize("name", ["vdsr", "edsr", "rcan"])
def test_table1_networks_share_the_unet_recipe(name):
    """Table 1 compares architectures: every setting but the model equals unet.yaml's."""
    unet, other = (load_config(REPO / "configs" / f"{n}.yaml") for n in ("unet", name))
    assert other.model.name == name and other.model.depth is None and other.model.width == 64
    for section in ("data", "optim", "logging"):
        assert getattr(other, section) == getattr(unet, section)
    assert other.train.model_copy(update={"run_dir": "x"}) == unet.train.model_copy(
        update={"run_dir": "x"}
    )
    assert (other.optim.loss, other.train.steps, other.data.crop_size) == ("l1", 120_000, 256)


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_configs_validate(path):
    cfg = load_config(path)
    assert cfg.train.run_dir and cfg.data.root


def test_faithful_config_matches_design_section_4():
    cfg = load_config(REPO / "configs" / "aeanet.yaml")
    assert cfg.model.name == "aeanet" and cfg.model.num_refs == 64 and cfg.model.batch_aware
    assert (cfg.optim.lr, cfg.optim.lr_decay_every, cfg.optim.lr_decay_factor) == (
        4e-4,
        10_000,
        0.5,
    )
    assert (cfg.optim.loss, cfg.data.global_batch_size, cfg.data.crop_size) == ("l1", 8, 256)
    assert (cfg.train.steps, cfg.model.bn_momentum, cfg.model.bn_eps) == (120_000, 0.003, 1e-5)
    assert not cfg.train.ema and not cfg.data.augment and cfg.train.mixed_precision in (None, "no")


def test_ablation_and_special_configs():
    load = lambda name: load_config(REPO / "configs" / f"{name}.yaml")  # noqa: E731
    assert load("aeanet_refs_only").model.batch_aware is False
    assert load("aeanet_batch_only").model.num_refs == 0
    assert load("aeanet_refs16").model.num_refs == 16
    assert load("aeanet_refs32").model.num_refs == 32
    assert load("unet").model.name == "unet" and load("gvtnet").model.name == "gvtnet"
    fullres = load("aeanet_fullres")
    assert fullres.data.crop_size == "full" and fullres.train.mixed_precision == "bf16"
    assert load("selftrain").data.pairs is not None and len(load("selftrain").data.pairs) == 1
    debug = load("debug")
    assert debug.train.steps <= 100 and debug.model.bn_momentum >= 0.05
