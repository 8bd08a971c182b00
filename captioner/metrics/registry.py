"""Evaluators by name: ``EVALUATORS``, ``register_evaluator``, ``build_evaluators``.

Each entry is a factory ``(options) -> Evaluator | None``; ``None`` leaves it out of a run (the
COCO scorers when ``coco=False``). A new metric is one module in ``captioner/metrics/`` that
registers itself (found there by itself, reported after the built-ins; ``BUILTIN_MODULES`` only
orders those).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..plugins import import_modules
from .base import DatasetEvaluators, Evaluator


@dataclass(frozen=True)
class EvaluationOptions:
    """What a scoring run asks for: the pycocoevalcap scorers (``coco``), and METEOR (Java)."""

    coco: bool = True
    meteor: bool = True


EvaluatorFactory = Callable[[EvaluationOptions], "Evaluator | None"]
EVALUATORS: dict[str, EvaluatorFactory] = {}

# Modules whose import registers the built-in evaluators, in the order their metrics are
# reported (any other registered evaluator comes after them). Evaluators that need a dataset's
# own grammar live beside that dataset (the shapes data's attention correctness), so metrics
# never imports a dataset module directly.
BUILTIN_MODULES = ("captioner.metrics.bleu", "captioner.data.shapes_eval",
                   "captioner.metrics.coco", "captioner.metrics.cider",
                   "captioner.metrics.attention", "captioner.metrics.captions")


def register_evaluator(name: str) -> Callable[[EvaluatorFactory], EvaluatorFactory]:
    """Decorator: register ``factory(options) -> Evaluator | None`` under ``name``.

    A name registered twice raises ValueError (two modules claiming one name is a bug).
    """
    def add(factory: EvaluatorFactory) -> EvaluatorFactory:
        if name in EVALUATORS and EVALUATORS[name] is not factory:
            raise ValueError(f"evaluator {name!r} is already registered")
        EVALUATORS[name] = factory
        return factory

    return add


def _load_builtins() -> None:
    import_modules(BUILTIN_MODULES, "captioner.metrics")


def evaluator_names() -> list[str]:
    """Every registered evaluator name in report order: built-ins in ``BUILTIN_MODULES`` order,
    then the others in registration order (the same whatever was imported first)."""
    _load_builtins()

    def rank(name: str) -> int:
        module = EVALUATORS[name].__module__
        return BUILTIN_MODULES.index(module) if module in BUILTIN_MODULES else len(BUILTIN_MODULES)

    return sorted(EVALUATORS, key=rank)  # stable: registration order within a module


def build_evaluators(options: EvaluationOptions = EvaluationOptions(),
                     names: list[str] | None = None) -> DatasetEvaluators:
    """The composite of the named evaluators (default: all registered) that ``options`` want.

    An unknown name raises ValueError listing the known ones.
    """
    known = evaluator_names()
    unknown = [n for n in names or [] if n not in EVALUATORS]
    if unknown:
        raise ValueError(f"unknown evaluator {unknown[0]!r}; known: {', '.join(known)}")
    chosen = {}
    for name in names if names is not None else known:
        ev = EVALUATORS[name](options)
        if ev is not None:
            chosen[name] = ev
    return DatasetEvaluators(chosen)
