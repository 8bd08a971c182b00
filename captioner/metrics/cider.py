"""CIDEr-D with document frequencies from a given corpus: the SCST reward, and an evaluator.

pycocoevalcap's ``Cider`` (the same CIDEr-D) recomputes n-gram document frequencies from the
captions it is asked to score: right for scoring a test split, wrong for a reward computed on a
minibatch of 32 images, where every n-gram looks rare. Self-critical training (Rennie et al. 2017)
takes them from the training references once. The n-gram counting is pycocoevalcap's own; the
tf-idf vectors, clipped cosine and length penalty follow its ``CiderScorer`` line for line, and a
test checks that both give the same scores when their corpora are the same.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from pycocoevalcap.cider.cider_scorer import precook

from ..registry import EVALUATORS
from .base import CorpusEvaluator, Evaluator
from .registry import EvaluationOptions

Caption = Sequence[str]


class CiderD:
    """CIDEr-D of candidate captions against their image's references (n = 1..4, sigma 6)."""

    def __init__(self, corpus: Sequence[Sequence[Caption]], n: int = 4, sigma: float = 6.0):
        """``corpus``: for each training image, its reference captions as word lists."""
        if not corpus:
            raise ValueError("CIDEr-D needs a non-empty reference corpus")
        self.n, self.sigma = n, sigma
        df: Counter = Counter()
        for refs in corpus:
            df.update({g for ref in refs for g in precook(" ".join(ref), n)})
        self.log_df = {g: math.log(c) for g, c in df.items()}
        self.log_corpus = math.log(len(corpus))
        self._cache: dict[tuple[str, ...], tuple] = {}  # reference caption -> its vector

    def _vector(self, words: Caption) -> tuple[list[dict], list[float], int]:
        """tf-idf weights per n-gram order, their norms, and the length CiderScorer uses (its
        count of bigrams)."""
        vec: list[dict] = [{} for _ in range(self.n)]
        norm = [0.0] * self.n
        length = 0
        for gram, tf in precook(" ".join(words), self.n).items():
            k = len(gram) - 1
            w = tf * (self.log_corpus - self.log_df.get(gram, 0.0))
            vec[k][gram] = w
            norm[k] += w * w
            if k == 1:
                length += tf
        return vec, [math.sqrt(x) for x in norm], length

    def _reference(self, words: Caption) -> tuple:
        key = tuple(words)
        if key not in self._cache:
            self._cache[key] = self._vector(words)
        return self._cache[key]

    def score(self, candidate: Caption, references: Sequence[Caption]) -> float:
        """CIDEr-D of one caption (x10, as pycocoevalcap reports it)."""
        vec, norm, length = self._vector(candidate)
        total = 0.0
        for ref in references:
            vec_r, norm_r, length_r = self._reference(ref)
            penalty = math.exp(-((length - length_r) ** 2) / (2 * self.sigma ** 2))
            for k in range(self.n):
                ref_k = vec_r[k]
                dot = sum(min(w, r) * r for g, w in vec[k].items() if (r := ref_k.get(g, 0.0)))
                if norm[k] and norm_r[k]:
                    dot /= norm[k] * norm_r[k]
                total += dot * penalty
        return 10.0 * total / self.n / len(references)

    def scores(self, candidates: Sequence[Caption], references: Sequence[Sequence[Caption]]
               ) -> list[float]:
        """``score`` of each candidate against the references at the same position."""
        return [self.score(c, r) for c, r in zip(candidates, references, strict=True)]


class CiderDEvaluator(CorpusEvaluator):
    """``CIDEr-D`` in process, document frequencies from these captions' references (as
    pycocoevalcap's), for when the pycocoevalcap scorers are not run."""

    def evaluate(self) -> dict[str, float]:
        if not self.hyps:
            return {}
        scores = CiderD(self.refs).scores(self.hyps, self.refs)
        return {"CIDEr-D": sum(scores) / len(scores)}


@EVALUATORS.register("cider_d")
def _cider_d(options: EvaluationOptions) -> Evaluator | None:
    # without pycocoevalcap's scorers, its CIDEr-D computed in process
    return None if options.coco else CiderDEvaluator()
