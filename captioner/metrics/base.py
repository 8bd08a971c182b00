"""The evaluator interface and the composite that runs several of them.

Evaluators accumulate, then compute (detectron2's ``DatasetEvaluator``): ``reset()``,
``process(predictions)`` once per batch, ``evaluate()`` at the end, so one decoding loop feeds
them all. ``DatasetEvaluators`` runs several as one and refuses two that report the same key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch


@dataclass
class Prediction:
    """One decoded caption, its references, and what the attention metrics need."""

    image_id: str
    words: list[str]
    references: list[list[str]]
    alpha: torch.Tensor | None = None  # (len(words), P)
    entry: dict | None = None  # the manifest entry (objects, boxes, size) when known


class Evaluator:
    """One metric (or a family computed together) over a stream of predictions.

    ``evaluate`` returns ``{}`` when the predictions carried nothing it can score (no boxes for
    attention correctness, no attention maps for the entropy), so it is safe to always include.
    """

    def reset(self) -> None:
        """Forget everything processed so far."""
        raise NotImplementedError

    def process(self, predictions: Sequence[Prediction]) -> None:
        """Accumulate one batch of predictions."""
        raise NotImplementedError

    def evaluate(self) -> dict[str, float]:
        """The metrics of everything processed since ``reset``."""
        raise NotImplementedError


class CorpusEvaluator(Evaluator):
    """Collects the decoded words and the references of each prediction."""

    def reset(self) -> None:
        self.hyps: list[list[str]] = []
        self.refs: list[list[list[str]]] = []

    def process(self, predictions: Sequence[Prediction]) -> None:
        for p in predictions:
            self.hyps.append(p.words)
            self.refs.append(p.references)


class DatasetEvaluators(Evaluator):
    """Several evaluators run as one; their results merged, in order.

    Two evaluators reporting the same key raise ValueError naming the key and both, instead of
    one figure silently overwriting the other (detectron2's ``DatasetEvaluators``).
    """

    def __init__(self, evaluators: Mapping[str, Evaluator] | Sequence[Evaluator]):
        """``evaluators``: by name (as registered), or a list named by their class."""
        if isinstance(evaluators, Mapping):
            self.evaluators = dict(evaluators)
        else:
            self.evaluators = {}
            for ev in evaluators:
                name = type(ev).__name__
                if name in self.evaluators:
                    name = f"{name}#{len(self.evaluators)}"
                self.evaluators[name] = ev

    def reset(self) -> None:
        for ev in self.evaluators.values():
            ev.reset()

    def process(self, predictions: Sequence[Prediction]) -> None:
        for ev in self.evaluators.values():
            ev.process(predictions)

    def evaluate(self) -> dict[str, float]:
        results: dict[str, float] = {}
        source: dict[str, str] = {}
        for name, ev in self.evaluators.items():
            for key, value in ev.evaluate().items():
                if key in results:
                    raise ValueError(f"metric {key!r} is reported by both evaluator "
                                     f"{source[key]!r} and evaluator {name!r}")
                results[key] = value
                source[key] = name
        return results
