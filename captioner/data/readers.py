"""Dataset formats: what ``captioner prepare <format>`` can read.

A format is a ``Reader`` subclass registered with ``@READERS.register("name")`` in a module of
``captioner/data/`` (found there by itself): its ``help`` line, its own flags
(``add_arguments``), its ``--min-count`` default and ``read(args) -> records``. ``cli`` adds the
flags every format shares (``--out``, ``--min-count``, ``--features``, ...) and
``commands.prepare`` looks the format up by name.
"""

from __future__ import annotations

import argparse

from ..registry import READERS
from ..vocab import DEFAULT_MIN_COUNT
from .records import ImageRecord


class Reader:
    """One dataset format. ``read`` gets the parsed flags: its own and the shared ones (such as
    ``args.out``)."""

    help: str = ""  # the line `captioner prepare --help` shows
    min_count: int = DEFAULT_MIN_COUNT  # the format's --min-count default

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        """Add the format's own flags to its ``prepare`` subcommand."""

    @staticmethod
    def read(args: argparse.Namespace) -> list[ImageRecord]:
        raise NotImplementedError


__all__ = ["READERS", "Reader"]
