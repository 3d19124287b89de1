"""aeatrain.modelzoo.contents: the README's words for where the test tiles lie come from
the split the dataset recorded (aeatrain.protocol.split), whatever the pairs' sizes."""

from types import SimpleNamespace

from aeatrain.data.format import PairInfo
from aeatrain.modelzoo.contents import split_text
from aeatrain.protocol.split import paper_split


def _manifest(sizes: dict[str, tuple[int, int]]) -> SimpleNamespace:
    """What split_text reads of a manifest: pair -> width, height, train_region."""
    pairs = {
        name: PairInfo(width=w, height=h, bit_depth=8, train_region=paper_split(w, h).train)
        for name, (w, h) in sizes.items()
    }
    return SimpleNamespace(pairs=pairs, pair_names=sorted(pairs))


def test_split_text_follows_each_pairs_own_size():
    paper = _manifest({"a": (1280, 944), "b": (1280, 944)})
    assert split_text(paper, None) == (
        "outside the training region columns [0, 960), rows [0, 944) of each 1280 x 944 pair"
    )
    mixed = _manifest({"small": (626, 460), "paper": (1280, 944), "other": (1280, 944)})
    assert split_text(mixed, None) == (
        "outside the training region columns [0, 464), rows [0, 460) of small: 626 x 460 "
        "pair; columns [0, 960), rows [0, 944) of other, paper: 1280 x 944 pair"
    )
    assert split_text(mixed, ["small"]).endswith(
        "columns [0, 464), rows [0, 460) of each 626 x 460 pair"
    )
