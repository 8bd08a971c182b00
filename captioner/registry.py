"""Registries: the named entries of each pluggable part, in one style.

Each registry belongs to a package: a module there registers its entries with the registry's
decorator (``@ATTENTIONS.register("soft")``), and the registry finds them by importing every
module of its package the first time it is asked for an entry (built-in modules first, in the
order given, so listings do not depend on what happened to be imported already). A new
attention kind, encoder, decoding strategy, objective, dataset format or metric is therefore one
module in that package, plus its test; nothing else is edited.

The registries live here, not in their packages, so that the config dataclasses can check a
name against them without importing the parts (which import the configs).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries of one ``kind`` by name, registered by the modules of ``package``.

    ``first`` are the modules of the built-in entries in their listing order (they may live
    outside ``package``); every other entry is listed after them in registration order.
    """

    def __init__(self, kind: str, package: str, first: Sequence[str] = ()):
        self.kind, self.package, self.first = kind, package, tuple(first)
        self._entries: dict[str, T] = {}
        self._state = "empty"  # "loading" while the package is imported, then "loaded"

    def register(self, name: str, entry: T | None = None) -> Any:
        """Register ``entry`` under ``name`` and return it; without ``entry``, a decorator
        (``@REGISTRY.register("name")``). Registering a name again with another entry raises
        ValueError: two modules claiming one name is a bug."""
        def add(value: T) -> T:
            if name in self._entries and self._entries[name] is not value:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = value
            return value

        return add if entry is None else add(entry)

    def unregister(self, name: str) -> None:
        """Remove an entry (for tests that register a toy one)."""
        self._entries.pop(name, None)

    def _load(self) -> None:
        if self._state != "empty":
            return
        self._state = "loading"
        try:
            for module in self.first:
                importlib.import_module(module)
            path = importlib.import_module(self.package).__path__
            for info in sorted(pkgutil.iter_modules(path), key=lambda m: m.name):
                importlib.import_module(f"{self.package}.{info.name}")
        except BaseException:
            self._state = "empty"
            raise
        self._state = "loaded"

    def _rank(self, name: str) -> int:
        module = getattr(self._entries[name], "__module__", None)
        return self.first.index(module) if module in self.first else len(self.first)

    def names(self) -> list[str]:
        """Every registered name: the built-ins in ``first`` order, then the others in
        registration order."""
        self._load()
        return sorted(self._entries, key=self._rank)  # stable: registration order otherwise

    def get(self, name: str) -> T:
        """The entry ``name``; an unknown name raises ValueError listing the known ones."""
        self._load()
        if name not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")
        return self._entries[name]

    def items(self) -> list[tuple[str, T]]:
        return [(name, self._entries[name]) for name in self.names()]

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())


#: attention kinds (``models/attention/``): subclasses of ``Attention``
ATTENTIONS: Registry[type] = Registry("attention kind", "captioner.models.attention",
                                      ("captioner.models.attention.soft",
                                       "captioner.models.attention.hard"))
#: encoders (``models/encoder/``): ``build(pretrained) -> Backbone``
ENCODERS: Registry[Callable] = Registry("encoder", "captioner.models.encoder",
                                        ("captioner.models.encoder.tiny",
                                         "captioner.models.encoder.torchvision_models",
                                         "captioner.models.encoder.efficientnet"))
#: decoding strategies (``decoding/``): ``(decoder, features, options) -> hypotheses``
STRATEGIES: Registry[Callable] = Registry("decoding strategy", "captioner.decoding",
                                          ("captioner.decoding.beam",
                                           "captioner.decoding.greedy",
                                           "captioner.decoding.sample"))
#: training objectives (``objectives/``): subclasses of ``Objective``
OBJECTIVES: Registry[type] = Registry("objective", "captioner.objectives",
                                      ("captioner.objectives.likelihood",
                                       "captioner.objectives.scst"))
#: dataset formats for ``captioner prepare`` (``data/``): subclasses of ``Reader``
READERS: Registry[type] = Registry("dataset format", "captioner.data",
                                   ("captioner.data.shapes", "captioner.data.karpathy",
                                    "captioner.data.coco"))
#: metrics (``metrics/``): ``factory(EvaluationOptions) -> Evaluator | None``, reported in
#: this order; the shapes data's attention correctness lives beside that data
EVALUATORS: Registry[Callable] = Registry("evaluator", "captioner.metrics",
                                          ("captioner.metrics.bleu",
                                           "captioner.data.shapes_eval",
                                           "captioner.metrics.coco", "captioner.metrics.cider",
                                           "captioner.metrics.attention",
                                           "captioner.metrics.captions"))
