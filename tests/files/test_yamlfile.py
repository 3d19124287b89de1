"""The one YAML reader (aeatrain/files/yamlfile.py); its refusals are tested through the
config files that meet them (tests/config/test_load.py)."""

from aeatrain.files.yamlfile import load_yaml


def test_merge_keys_may_still_override_what_they_merge():
    text = "base: &b {root: D, crop_size: 64}\ndata: {<<: *b, crop_size: 128}\n"
    assert load_yaml(text, "t.yaml")["data"] == {"root": "D", "crop_size": 128}
