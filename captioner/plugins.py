"""Registries fill themselves by importing modules: the built-ins in their order, then every
other module of a package, so a new entry is one module that registers itself."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Sequence


def import_modules(first: Sequence[str], package: str) -> None:
    """Import the modules ``first`` (in that order), then every module of ``package``."""
    for module in first:
        importlib.import_module(module)
    path = importlib.import_module(package).__path__
    for info in sorted(pkgutil.iter_modules(path), key=lambda m: m.name):
        importlib.import_module(f"{package}.{info.name}")
