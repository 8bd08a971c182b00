"""Building the evaluators of a scoring run from ``captioner.registry.EVALUATORS``.

Each entry is a factory ``(options) -> Evaluator | None``, registered with
``@EVALUATORS.register("name")`` in a module of ``captioner/metrics/`` (found there by itself;
built-ins are reported first, in the registry's order); ``None`` leaves it out of a run (the
COCO scorers when ``coco=False``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..registry import EVALUATORS
from .base import DatasetEvaluators, Evaluator


@dataclass(frozen=True)
class EvaluationOptions:
    """What a scoring run asks for: the pycocoevalcap scorers (``coco``), and METEOR (Java)."""

    coco: bool = True
    meteor: bool = True


EvaluatorFactory = Callable[[EvaluationOptions], "Evaluator | None"]


def build_evaluators(options: EvaluationOptions = EvaluationOptions(),
                     names: list[str] | None = None) -> DatasetEvaluators:
    """The composite of the named evaluators (default: all registered, in report order) that
    ``options`` want. An unknown name raises ValueError listing the known ones."""
    chosen = {}
    for name in names if names is not None else EVALUATORS.names():
        ev = EVALUATORS.get(name)(options)
        if ev is not None:
            chosen[name] = ev
    return DatasetEvaluators(chosen)
