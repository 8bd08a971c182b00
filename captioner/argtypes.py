"""argparse ``type=`` checks whose failures are one line naming the problem and the value.

argparse prefixes the flag and exits with status 2, e.g.
``captioner caption: error: argument --beam-size: must be an integer between 1 and 64, got 0``.
Every check raises ``argparse.ArgumentTypeError``, the one exception whose message argparse
prints as it is. Paths come back as the ``str`` typed, so configs that store them stay JSON.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else str(x)


def describe_bounds(lo: float | None = None, hi: float | None = None, lo_open: bool = False,
                    hi_open: bool = False) -> str:
    """Bounds in words: ">= 1", "> 0", "between 1 and 64", ">= 0 and < 1", or "" for none."""
    if lo is not None and hi is not None and not lo_open and not hi_open:
        return f"between {_num(lo)} and {_num(hi)}"
    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '>='} {_num(lo)}")
    if hi is not None:
        parts.append(f"{'<' if hi_open else '<='} {_num(hi)}")
    return " and ".join(parts)


def _within(value: float, lo, hi, lo_open: bool, hi_open: bool) -> bool:
    above = lo is None or (value > lo if lo_open else value >= lo)
    below = hi is None or (value < hi if hi_open else value <= hi)
    return above and below


def _shown(text: str) -> str:
    return text if text.strip() == text and text else repr(text)


def int_range(min: int | None = None, max: int | None = None) -> Callable[[str], int]:
    """A ``type=`` for integers within [min, max] (either end may be open-ended with None):
    ``type=int_range(1)`` for a batch size, ``int_range(1, 64)`` for a beam size."""
    need = " ".join(filter(None, ["must be an integer", describe_bounds(min, max)]))

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{need}, got {_shown(text)}") from None
        if not _within(value, min, max, False, False):
            raise argparse.ArgumentTypeError(f"{need}, got {value}")
        return value

    parse.__name__ = "integer"  # argparse names the type in some messages of its own
    return parse


def float_range(min: float | None = None, max: float | None = None, finite: bool = True,
                min_exclusive: bool = False, max_exclusive: bool = False
                ) -> Callable[[str], float]:
    """A ``type=`` for numbers within the bounds; ``finite`` (default) rejects nan and inf.
    A learning rate is ``float_range(0, min_exclusive=True)``: finite and > 0; a dropout
    ``float_range(0, 1, max_exclusive=True)``."""
    kind = "a finite number" if finite else "a number"
    need = " ".join(filter(None, [f"must be {kind}",
                                  describe_bounds(min, max, min_exclusive, max_exclusive)]))

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{need}, got {_shown(text)}") from None
        # nan compares False with everything, so it is refused here even when finite=False
        if (finite and not math.isfinite(value)) or math.isnan(value) or \
                not _within(value, min, max, min_exclusive, max_exclusive):
            raise argparse.ArgumentTypeError(f"{need}, got {_shown(text)}")
        return value

    parse.__name__ = "number"
    return parse


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_creatable_in(path: Path, text: str) -> None:
    """The folders that would hold ``path`` exist or can be made, and the nearest one that
    exists is a writable folder."""
    folder = _nearest_existing(path.absolute().parent)
    if not folder.is_dir():
        raise argparse.ArgumentTypeError(f"cannot create {text}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"cannot write {text}: folder {folder} is not writable")


def output_file(suffixes: Sequence[str] | None = None) -> Callable[[str], str]:
    """A ``type=`` for a file to write: not a folder, ending in one of ``suffixes`` (when
    given, e.g. ``(".json",)``; compared case-insensitively), writable if it exists, and
    otherwise creatable (its parent folders exist or can be made, and the nearest existing one
    is writable). Checks only: nothing is created."""
    allowed = tuple(s.lower() for s in suffixes or ())

    def parse(text: str) -> str:
        if not text:
            raise argparse.ArgumentTypeError("must be a file path, got ''")
        path = Path(text)
        if path.is_dir() or text.endswith(("/", os.sep)):
            raise argparse.ArgumentTypeError(f"is a folder, expected a file path: {text}")
        if allowed and not text.lower().endswith(allowed):
            raise argparse.ArgumentTypeError(
                f"must end with {' or '.join(suffixes or ())}, got {text}")
        if path.exists():
            if not os.access(path, os.W_OK):
                raise argparse.ArgumentTypeError(f"cannot write {text}: permission denied")
        else:
            _check_creatable_in(path, text)
        return text

    parse.__name__ = "output file"
    return parse


def output_dir(text: str) -> str:
    """A ``type=`` for a folder to write into (a run folder): an existing writable folder, or
    one that can be created. Checks only: nothing is created."""
    path = Path(text)
    if not text:
        raise argparse.ArgumentTypeError("must be a folder path, got ''")
    if path.exists():
        if not path.is_dir():
            raise argparse.ArgumentTypeError(f"is a file, expected a folder: {text}")
        if not os.access(path, os.W_OK | os.X_OK):
            raise argparse.ArgumentTypeError(f"cannot write in {text}: permission denied")
    else:
        _check_creatable_in(path, text)
    return text


def existing_file(text: str) -> str:
    """A ``type=`` for a file that must exist and be readable (an image, a checkpoint)."""
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"no such file: {_shown(text)}")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"is a folder, expected a file: {text}")
    if not os.access(path, os.R_OK):
        raise argparse.ArgumentTypeError(f"cannot read {text}: permission denied")
    return text


def existing_dir(text: str) -> str:
    """A ``type=`` for a folder that must exist and be readable (a prepared data folder)."""
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"no such folder: {_shown(text)}")
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"is a file, expected a folder: {text}")
    if not os.access(path, os.R_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"cannot read {text}: permission denied")
    return text
