"""Reading configs: YAML + dotted overrides, one-line errors naming the key, the YAML
reader's refusals (aeatrain/config/load.py)."""

import pytest

from aeatrain.config.load import ConfigError, load_config, parse_overrides
from aeatrain.errors import capped


def test_yes_no_on_off_are_words_not_booleans(minimal, tmp_path):
    """YAML 1.1 reads `no` as False; `mixed_precision: no` must stay the setting "no"."""
    cfg = load_config(minimal, ["--train.mixed_precision", "no", "--data.augment", "on"])
    assert cfg.train.mixed_precision == "no" and cfg.data.augment is True
    written = tmp_path / "w.yaml"
    written.write_text("data: {root: D}\ntrain:\n  run_dir: r\n  mixed_precision: no\n")
    assert load_config(written).train.mixed_precision == "no"


def test_dotted_overrides_both_spellings_and_types(minimal):
    cfg = load_config(
        minimal,
        ["--train.steps", "100", "--optim.lr=1e-3", "--data.pairs", "007", "--data.root", "2024"],
    )
    assert cfg.train.steps == 100 and cfg.optim.lr == pytest.approx(1e-3)
    assert cfg.data.pairs == ["007"]  # a string field keeps the text as typed
    assert cfg.data.root == "2024"
    cfg = load_config(minimal, ["--data.pairs", "[a, b]", "--train.mixed_precision", "null"])
    assert cfg.data.pairs == ["a", "b"] and cfg.train.mixed_precision is None


def test_crop_size_follows_the_models_input_multiple(minimal):
    assert (
        load_config(minimal, ["--model.name", "vdsr", "--data.crop_size", "30"]).data.crop_size
        == 30
    )
    with pytest.raises(
        ConfigError, match="must be a multiple of 4, the input multiple of model 'unet'"
    ):
        load_config(minimal, ["--model.name", "unet", "--data.crop_size", "30"])


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["--train.stepz", "3"], "train.stepz: unknown key"),
        (["--optim.lr", "fast"], "optim.lr: Input should be a valid number"),
        (["--train.steps", "1.5"], "train.steps:"),
        (["--data.crop_size", "30"], "data.crop_size: must be a multiple of 4"),
        (["--data.crop_size", "0"], "data.crop_size:"),
        (["--model.name", "resnet"], "model.name: Input should be 'unet', 'gvtnet', 'aeanet', "),
        (["--bogus.key", "1"], "bogus: unknown key"),
        (["--optim.betas", "[0.9, 1.5]"], "optim.betas: each beta must lie in [0, 1)"),
        (["--train.steps"], "missing a value"),
        (["--steps", "3"], "expected --section.key"),
        (
            ["--logging.eval_max_tiles", "6"],
            "logging.eval_max_tiles: renamed logging.eval_max_pairs",
        ),
        # issue 23 items 5, 9, 17: values every later range check would let through
        (["--optim.lr", "inf"], "optim.lr: Input should be a finite number"),
        (["--optim.lr", ".nan"], "optim.lr: Input should be a finite number"),
        (["--model.bn_eps", "-.inf"], "model.bn_eps: Input should be a finite number"),
        (["--optim.betas", "[.nan, 0.9]"], "optim.betas.0: Input should be a finite number"),
        (["--optim.grad_clip_norm", ".inf"], "optim.grad_clip_norm: Input should be a finite"),
        (["--train.seed", str(10**22)], "train.seed: Input should be less than or equal to"),
        (["--data.pairs", "[syn000, syn000]"], "data.pairs: names pair 'syn000' more than once"),
        (["--data.pairs", '["c\\nd"]'], "data.pairs: pair name 'c\\nd' holds a control"),
        (["--data.pairs", '["a\\tb"]'], "data.pairs: pair name 'a\\tb' holds a control"),
    ],
)
def test_bad_overrides_are_one_line_naming_the_key(minimal, overrides, expected):
    with pytest.raises(ConfigError) as info:
        load_config(minimal, overrides)
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_required_and_bad_files(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train: {run_dir: RUN}\n")
    with pytest.raises(ConfigError, match=r"data: required key is missing"):
        load_config(path)
    path.write_text("data: [1, 2\n")
    with pytest.raises(ConfigError, match=r"c.yaml: line \d+ not valid YAML"):
        load_config(path)
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(path)
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "absent.yaml")


ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi")
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("model: {name: aeanet, name: unet}\n", r"c.yaml: line 1 not valid YAML \(key 'name' is "
         r"given twice in one mapping\)"),
        ("train:\n  steps: 5\n  seed: 1\n  steps: 6\n", r"line 4 .*key 'steps' is given twice"),
        (ALIAS_BOMB, r"aliases expand to 490,329,064 values, over the limit of 100,000"),
        ("# only a comment\n", r"c.yaml: the config file is empty.*120,000-step"),
        (b"\xff\xfe" + "train: {steps: 5}\n".encode("utf-16-le"), r"c.yaml: not UTF-8 text "
         r"\(byte 0 is 0xff\); save it as UTF-8"),
        ("x: " + "y" * (1 << 20) + "\n", r"c.yaml: 1,048,580 bytes, over the 1,048,576"),
    ],
)  # fmt: skip
def test_config_files_that_say_something_else_than_they_seem_are_refused(tmp_path, text, expected):
    """Issue 23 items 8, 19, 24: a key given twice (PyYAML keeps the last), an alias bomb
    (refused before it is expanded), an empty file (every default), UTF-16 text, a huge file."""
    path = tmp_path / "c.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    overrides = ["--data.root", "D", "--train.run_dir", "R"]
    with pytest.raises(ConfigError, match=expected) as info:
        load_config(path, overrides)
    assert "\n" not in str(info.value) and len(str(info.value)) < 300


def test_override_parser_pairs():
    assert parse_overrides(["--a.b", "1", "--c.d=x=y"]) == [("a.b", "1"), ("c.d", "x=y")]


def test_error_text_is_capped():
    """Issue 23 item 23: alias-bomb configs printed 52-520 MB error lines."""
    with pytest.raises(ConfigError) as info:
        load_config(None, ["--data.root", "D", "--train.run_dir", "R",
                           "--train.steps", "[" + "1, " * 5_000 + "]"])  # fmt: skip
    assert len(str(info.value)) < 300 and "train.steps:" in str(info.value)
    long = "x" * 5000
    assert capped(f"a: {long} b") == f"a: {'x' * 997} [... 3,005 characters cut ...] {'x' * 998} b"
    assert capped("short") == "short"
