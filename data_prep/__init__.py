"""Data preparation for aeatrain: synthetic SEM pairs, registration, the paper's split
and WebDataset shards. Run as ``python -m data_prep <command>``."""

from aeatrain import __version__

__all__ = ["__version__"]
