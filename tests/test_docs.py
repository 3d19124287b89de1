"""README.md and docs/*.md: every relative link resolves, the README stays short and its
test command is the one CI runs."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The anchors of a page's headings (a repeated heading gets -1, -2, ...)."""
    found: dict[str, int] = {}
    fenced = False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        heading = None if fenced else re.match(r"#{1,6} (.+)", line)
        if heading:
            name = anchor(heading.group(1))
            found[name] = found.get(name, -1) + 1
    return {
        name if n == 0 else f"{name}-{n}" for name, count in found.items() for n in range(count + 1)
    }


def broken_links(page: Path) -> list[str]:
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, fragment = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target} (no such file)")
        elif fragment and linked.suffix == ".md" and fragment not in anchors(linked):
            broken.append(f"{target} (no such heading)")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_relative_link_resolves(page):
    assert broken_links(page) == []


def test_the_link_check_sees_a_broken_file_and_a_broken_anchor(tmp_path):
    (tmp_path / "other.md").write_text("# Two words\n\n## `python -m x.y`\n\n## Two words\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[a](other.md#two-words) [b](other.md#python--m-xy) [c](other.md#two-words-1)\n"
        "[d](missing.md) [e](other.md#three-words) [f](https://example.org/x.md)\n"
    )
    assert broken_links(page) == [
        "missing.md (no such file)",
        "other.md#three-words (no such heading)",
    ]


def test_readme_is_short_and_its_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    command = next(line for line in readme.splitlines() if line.endswith("&& pytest"))
    assert command in (ROOT / ".ci" / "run").read_text().splitlines()


CODE_PATH = re.compile(r"`((?:aeatrain|data_prep|launch|benchmarks|tests|configs|docs)/[\w./-]*\w)")
CODE_NAME = re.compile(r"`(?:python -m )?((?:aeatrain|data_prep)(?:\.\w+)+)`?")


def missing_paths(page: Path) -> list[str]:
    """Repository paths a page names in backticks (``aeatrain/run/final.py``,
    ``tests/datasets.make_dataset``) that do not exist; generated pictures (.png, kept out
    of git) aside."""
    missing = []
    for path in CODE_PATH.findall(page.read_text()):
        module = path.rsplit(".", 1)[0] if "." in Path(path).name else path
        if path.endswith(".png") or (ROOT / path).exists() or (ROOT / f"{module}.py").exists():
            continue
        missing.append(path)
    return missing


def missing_names(page: Path) -> list[str]:
    """Dotted names a page gives in backticks (``aeatrain.files.rows.TiffRows``,
    ``python -m aeatrain.evaluate``) that are no module or attribute of the code."""
    missing = []
    for name in sorted(set(CODE_NAME.findall(page.read_text())) - {"aeatrain.X"}):
        parts = name.split(".")
        for cut in range(len(parts), 0, -1):
            try:
                found = importlib.import_module(".".join(parts[:cut]))
                break
            except ModuleNotFoundError:
                continue
        for attribute in parts[cut:]:
            found = getattr(found, attribute, None)
        if found is None:
            missing.append(name)
    return missing


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_the_code_a_page_names_exists(page):
    """Paths and module names in the docs follow the code when it moves."""
    assert missing_paths(page) == [] and missing_names(page) == []


def test_the_code_check_sees_a_moved_module(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "`aeatrain/run/final.py` `aeatrain/runs.py` `tests/datasets.make_dataset` "
        "`python -m aeatrain.evaluate` `aeatrain.files.rows.TiffRows` `aeatrain.runs.load_run` "
        "`aeatrain.files.images.no_such_function`\n"
    )
    assert missing_paths(page) == ["aeatrain/runs.py"]
    assert missing_names(page) == [
        "aeatrain.files.images.no_such_function",
        "aeatrain.runs.load_run",
    ]
