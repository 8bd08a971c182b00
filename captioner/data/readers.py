"""Dataset readers by name: what ``captioner prepare <format>`` can read.

A reader is a function ``(args) -> list[ImageRecord]`` registered with its help line and a
function adding its own flags to its ``prepare`` subcommand; ``cli`` adds the flags every format
shares (``--out``, ``--min-count``, ``--features``, ...) and ``commands.prepare`` looks the
reader up by name. A new format is one module in ``captioner/data/`` that calls
``register_reader`` (found there by itself; ``BUILTIN_MODULES`` only orders the built-ins).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from ..plugins import import_modules
from ..vocab import DEFAULT_MIN_COUNT
from .records import ImageRecord

ReadFn = Callable[[argparse.Namespace], list[ImageRecord]]
AddArgsFn = Callable[[argparse.ArgumentParser], None]


@dataclass(frozen=True)
class Reader:
    """One dataset format: its name, ``prepare`` help line, flags, reader and vocabulary
    threshold (the ``--min-count`` default for this format)."""

    name: str
    help: str
    add_arguments: AddArgsFn
    read: ReadFn
    min_count: int = DEFAULT_MIN_COUNT


READERS: dict[str, Reader] = {}

# Modules whose import registers the built-in formats, in the order `prepare --help` lists them.
BUILTIN_MODULES = ("captioner.data.shapes", "captioner.data.karpathy", "captioner.data.coco")


def register_reader(name: str, help: str, add_arguments: AddArgsFn,
                    min_count: int = DEFAULT_MIN_COUNT) -> Callable[[ReadFn], ReadFn]:
    """Decorator: register ``read(args) -> records`` as the format ``name``.

    ``add_arguments(parser)`` adds the format's own flags to ``captioner prepare <name>``;
    ``read`` gets the parsed flags (its own and the shared ones, such as ``args.out``). A name
    registered twice by different functions raises ValueError.
    """
    def add(read: ReadFn) -> ReadFn:
        if name in READERS and READERS[name].read is not read:
            raise ValueError(f"dataset format {name!r} is already registered")
        READERS[name] = Reader(name, help, add_arguments, read, min_count)
        return read

    return add


def _load_builtins() -> None:
    import_modules(BUILTIN_MODULES, "captioner.data")


def readers() -> list[Reader]:
    """Every registered format: built-ins in ``BUILTIN_MODULES`` order, then the others in
    registration order (the same whatever was imported first)."""
    _load_builtins()

    def rank(reader: Reader) -> int:
        module = reader.read.__module__
        return BUILTIN_MODULES.index(module) if module in BUILTIN_MODULES else len(BUILTIN_MODULES)

    return sorted(READERS.values(), key=rank)  # stable: registration order otherwise


def get_reader(name: str) -> Reader:
    """The format registered as ``name``; an unknown name raises ValueError listing the known."""
    _load_builtins()
    if name not in READERS:
        known = ", ".join(r.name for r in readers())
        raise ValueError(f"unknown dataset format {name!r}; known: {known}")
    return READERS[name]
