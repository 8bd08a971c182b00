"""Corpus BLEU-1..4 with nltk (all references per image, no smoothing)."""

from __future__ import annotations

import warnings

from ..registry import EVALUATORS
from .base import CorpusEvaluator, Evaluator
from .registry import EvaluationOptions


def corpus_bleu(hypotheses: list[list[str]], references: list[list[list[str]]]) -> dict[str, float]:
    """BLEU-1..4 over the corpus with nltk (all references per image, no smoothing)."""
    from nltk.translate.bleu_score import corpus_bleu as nltk_bleu

    weights = [(1.0,), (0.5, 0.5), (1 / 3, 1 / 3, 1 / 3), (0.25, 0.25, 0.25, 0.25)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nltk warns when a higher-order n-gram never matches
        scores = nltk_bleu(references, hypotheses, weights=weights)
    return {f"BLEU-{n}": float(s) for n, s in enumerate(scores, 1)}


class BleuEvaluator(CorpusEvaluator):
    """Corpus BLEU-1..4 (nltk) over decoded captions: ``BLEU-1`` .. ``BLEU-4``."""

    def evaluate(self) -> dict[str, float]:
        return corpus_bleu(self.hyps, self.refs) if self.hyps else {}


@EVALUATORS.register("bleu")
def _bleu(options: EvaluationOptions) -> Evaluator:
    return BleuEvaluator()
