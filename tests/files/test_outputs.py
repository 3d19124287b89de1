"""aeatrain.files.outputs: --overwrite replaces only folders and files aeatrain wrote."""

import json

import pytest

from aeatrain.errors import UserError
from aeatrain.files.outputs import (
    DATASET,
    LEDGER_NAME,
    check_replaceable_file,
    check_replaceable_folder,
    holds_marker,
    record_outputs,
    recorded_outputs,
)


def test_a_folder_is_replaced_only_when_it_holds_its_marker(tmp_path):
    check_replaceable_folder(tmp_path / "new", DATASET, overwrite=False)  # missing: fine
    folder = tmp_path / "data"
    folder.mkdir()
    check_replaceable_folder(folder, DATASET, overwrite=False)  # empty: fine
    (folder / "manifest.json").write_text('{"format": "someone-else"}')
    with pytest.raises(UserError, match="not empty"):
        check_replaceable_folder(folder, DATASET, overwrite=False)
    with pytest.raises(UserError, match="replaces only a dataset of data_prep build"):
        check_replaceable_folder(folder, DATASET, overwrite=True)
    (folder / "manifest.json").write_text("[1, 2")  # not JSON at all
    assert not holds_marker(folder, DATASET)
    (folder / "manifest.json").write_text(json.dumps({"format": "aeatrain-dataset"}))
    check_replaceable_folder(folder, DATASET, overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="exists and is not a folder"):
        check_replaceable_folder(tmp_path / "file", DATASET, overwrite=True)


def test_files_are_replaced_only_when_the_ledger_lists_them(tmp_path):
    (tmp_path / "a.png").write_bytes(b"mine")
    with pytest.raises(UserError, match=r"a\.png: already exists"):
        check_replaceable_file(tmp_path / "a.png", overwrite=False)
    with pytest.raises(UserError, match=r"a\.png: not written by aeatrain"):
        check_replaceable_file(tmp_path / "a.png", overwrite=True)
    record_outputs(tmp_path, ["a.png"], tool="test")
    record_outputs(tmp_path, ["b.png"], tool="test")  # merged, not replaced
    assert recorded_outputs(tmp_path) == {"a.png", "b.png"}
    check_replaceable_file(tmp_path / "a.png", overwrite=True)


def test_a_foreign_ledger_file_is_never_replaced(tmp_path):
    (tmp_path / LEDGER_NAME).write_text("my notes")
    assert recorded_outputs(tmp_path) == set()
    with pytest.raises(UserError, match="is not an aeatrain ledger"):
        record_outputs(tmp_path, ["a.png"], tool="test")
    assert (tmp_path / LEDGER_NAME).read_text() == "my notes"
