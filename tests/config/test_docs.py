"""docs/training.md's config reference is the one generated (aeatrain/config/docs.py)."""

from pathlib import Path

from aeatrain.config.docs import reference_markdown, update_reference

REPO = Path(__file__).resolve().parents[2]


def test_docs_training_md_is_current(tmp_path):
    doc = REPO / "docs" / "training.md"
    copy = tmp_path / "training.md"
    copy.write_text(doc.read_text())
    assert update_reference(copy) is False, "run: python -m aeatrain.config.docs docs/training.md"
    assert "`train.max_skipped_steps`" in reference_markdown()
