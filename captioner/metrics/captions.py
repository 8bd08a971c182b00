"""Counts over the decoded captions themselves: how many images, how many distinct captions,
how many distinct words (a model that says the same thing for every image shows up here)."""

from __future__ import annotations

from collections.abc import Sequence

from ..registry import EVALUATORS
from .base import Evaluator, Prediction
from .registry import EvaluationOptions


class ImagesEvaluator(Evaluator):
    """``images``: how many predictions were scored."""

    def reset(self) -> None:
        self.count = 0

    def process(self, predictions: Sequence[Prediction]) -> None:
        self.count += len(predictions)

    def evaluate(self) -> dict[str, float]:
        return {"images": float(self.count)}


class DistinctCaptionsEvaluator(Evaluator):
    """``distinct_captions``: how many different captions the predictions hold."""

    def reset(self) -> None:
        self.captions: set[str] = set()

    def process(self, predictions: Sequence[Prediction]) -> None:
        self.captions.update(" ".join(p.words) for p in predictions)

    def evaluate(self) -> dict[str, float]:
        return {"distinct_captions": float(len(self.captions))}


class VocabularyUsedEvaluator(Evaluator):
    """``vocabulary_used``: how many different words the captions use."""

    def reset(self) -> None:
        self.words: set[str] = set()

    def process(self, predictions: Sequence[Prediction]) -> None:
        self.words.update(w for p in predictions for w in p.words)

    def evaluate(self) -> dict[str, float]:
        return {"vocabulary_used": float(len(self.words))}


@EVALUATORS.register("distinct_captions")
def _distinct_captions(options: EvaluationOptions) -> Evaluator:
    return DistinctCaptionsEvaluator()


@EVALUATORS.register("vocabulary_used")
def _vocabulary_used(options: EvaluationOptions) -> Evaluator:
    return VocabularyUsedEvaluator()


@EVALUATORS.register("images")
def _images(options: EvaluationOptions) -> Evaluator:
    return ImagesEvaluator()
