"""Pairs listed in a CSV file instead of named ``<name>_<magnification>``: ``--pairs-file``.

    name,lr,hr
    grain boundary 1,session 3/img 0041.tif,session 3/img 0042.tif

A header ``name,lr,hr``, then one pair a row: its name and the two files, as paths
relative to the raw folder (any file names; spaces are kept, spaces around a field are
not). A path that leaves the raw folder (absolute, ``..``, a link pointing out of it) is
refused unless ``outside_raw`` (``build --allow-outside-raw``) says the files may lie
elsewhere; build only ever reads them either way. The scale comes from the pixel sizes the files record, or from their
magnifications (recorded, or given by names that happen to follow the convention); see
data_prep.pairs.pair_scale. Every problem is the user's: one line naming the pairs file,
its line and the file, before any work is done.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from aeatrain.data.format import control_character, pair_name_problem
from aeatrain.errors import UserError
from data_prep.pairs import RawPair, check_one_scale, name_magnification, raw_pair

HEADER = ["name", "lr", "hr"]
MAX_PAIRS_FILE_BYTES = 16 * 2**20  # refused above: a wrong file, not a list of pairs


def _read_text(pairs_file: Path) -> str:
    if not pairs_file.is_file():
        raise UserError(f"{pairs_file}: pairs file not found")
    size = pairs_file.stat().st_size
    if size > MAX_PAIRS_FILE_BYTES:
        raise UserError(
            f"{pairs_file}: {size / 2**20:.1f} MiB; a pairs file holds at most "
            f"{MAX_PAIRS_FILE_BYTES // 2**20} MiB (about 100,000 pairs): is this the right file?"
        )
    try:
        return pairs_file.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise UserError(f"{pairs_file}: not a UTF-8 text file ({err.reason})") from None


def _rows(pairs_file: Path) -> list[tuple[int, list[str]]]:
    """(first line, stripped fields) of every non-blank row after the header; a quoted
    field keeps its line breaks (and is then refused as a name)."""
    reader = csv.reader(io.StringIO(_read_text(pairs_file), newline=""))
    rows, line = [], 1
    try:
        for row in reader:
            rows.append((line, [f.strip() for f in row]))
            line = reader.line_num + 1
    except csv.Error as err:  # a field over csv's limit, a NUL byte, ...
        raise UserError(f"{pairs_file} line {line}: not a readable CSV row ({err})") from None
    rows = [(n, row) for n, row in rows if any(row)]
    if not rows or rows[0][1] != HEADER:
        found = ",".join(rows[0][1]) if rows else "nothing"
        raise UserError(f"{pairs_file}: line 1 is {found!r}; the header must be 'name,lr,hr'")
    if len(rows) == 1:
        raise UserError(f"{pairs_file}: no pairs listed under the header 'name,lr,hr'")
    return rows[1:]


def _names(lr: Path, hr: Path) -> tuple[int, int] | None:
    """Magnifications from both file names, when both follow the convention."""
    mags = name_magnification(lr), name_magnification(hr)
    return None if None in mags else mags


def _check_inside(path: Path, raw: Path, column: str, where: str) -> None:
    """Refuse a file that leaves ``raw``: absolute, through ``..`` or a link out of it."""
    if not path.resolve().is_relative_to(raw.resolve()):
        raise UserError(
            f"{where}: {column} file {path} lies outside the raw folder {raw} (an absolute "
            "path, '..' or a link out of it); list files inside --raw, or give "
            "--allow-outside-raw to read files elsewhere"
        )


def read_pairs_file(
    pairs_file: str | Path, raw: str | Path, *, outside_raw: bool = False
) -> list[RawPair]:
    """The pairs a pairs file lists, in name order; UserError for any bad row.

    Refused: a file over MAX_PAIRS_FILE_BYTES, a row csv cannot read (a field over its
    128 KiB limit), a header other than ``name,lr,hr``, a row without three fields, an
    empty name, a name with a control character or too long for a file name
    (aeatrain.data.format.pair_name_problem), a missing file, a file outside ``raw`` (unless ``outside_raw``), a name used
    twice, a file listed twice (in one pair or two), pixel sizes that contradict the
    names' magnifications, pairs of different scales.
    """
    pairs_file, raw = Path(pairs_file), Path(raw)
    if not raw.is_dir():
        raise UserError(f"{raw}: raw folder does not exist or is not a folder")
    names: dict[str, int] = {}
    files: dict[Path, tuple[int, str]] = {}
    pairs = []
    for line, row in _rows(pairs_file):
        where = f"{pairs_file} line {line}"
        if len(row) != 3 or not all(row):
            raise UserError(f"{where}: expected three fields name,lr,hr, got {','.join(row)!r}")
        name, lr_name, hr_name = row
        problem = pair_name_problem(name)
        if problem is not None:
            raise UserError(f"{where}: {problem}")
        if name in names:
            raise UserError(f"{where}: pair name {name!r} already used on line {names[name]}")
        names[name] = line
        paths = []
        for column, relative in (("lr", lr_name), ("hr", hr_name)):
            control = control_character(relative)
            if control:
                raise UserError(
                    f"{where}: {column} path {relative!r} holds a control character ({control!r})"
                )
            path = raw / relative
            if not path.is_file():
                raise UserError(f"{where}: {column} file {path}: no such file")
            if not outside_raw:
                _check_inside(path, raw, column, where)
            key = path.resolve()
            if key in files:
                other_line, other = files[key]
                raise UserError(
                    f"{where}: {path} is already in pair {other!r} (line {other_line}); "
                    "a file belongs to one pair"
                )
            files[key] = (line, name)
            paths.append(path)
        try:
            pairs.append(raw_pair(name, paths[0], paths[1], _names(paths[0], paths[1])))
        except UserError as err:
            raise UserError(f"{where}: {err}") from None
    pairs.sort(key=lambda p: p.name)
    check_one_scale(pairs, pairs_file)
    return pairs
