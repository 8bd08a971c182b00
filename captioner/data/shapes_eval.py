"""Attention correctness (Liu et al. 2017) on the shapes data, registered as an evaluator.

It reads the shapes grammar (which words name a shape, a colour, a size) to find the object a
generated word names, so it lives with the shapes data rather than in ``captioner.metrics``.
Predictions whose manifest entry has no object boxes (any other dataset) are ignored, and with
none at all the evaluator reports nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..metrics.base import Evaluator, Prediction
from ..metrics.registry import EvaluationOptions
from ..registry import EVALUATORS
from .shapes import COLORS, IMAGE_SIZE, SHAPES, SIZES


def box_coverage(box: list[float], image_size: tuple[int, int], grid: int) -> np.ndarray:
    """Fraction of each grid cell's area inside ``box`` [x0, y0, x1, y1]: (grid * grid,)."""
    w, h = image_size
    edges_x, edges_y = np.linspace(0, w, grid + 1), np.linspace(0, h, grid + 1)
    ox = np.clip(np.minimum(edges_x[1:], box[2]) - np.maximum(edges_x[:-1], box[0]), 0, None)
    oy = np.clip(np.minimum(edges_y[1:], box[3]) - np.maximum(edges_y[:-1], box[1]), 0, None)
    cover = np.outer(oy / np.diff(edges_y), ox / np.diff(edges_x))  # (rows, cols)
    return cover.reshape(-1)


def named_objects(words: list[str], objects: list[dict]) -> list[tuple[int, int]]:
    """(word position, object index) for each generated shape noun whose description (its shape
    and the colour/size words just before it) picks out exactly one object of the image."""
    pairs = []
    for j, word in enumerate(words):
        if word not in SHAPES:
            continue
        attrs, i = [], j - 1
        while i >= 0 and (words[i] in COLORS or words[i] in SIZES):
            attrs.append(words[i])
            i -= 1
        matches = [k for k, o in enumerate(objects) if o["shape"] == word
                   and all(a in (o["color"], o["size"]) for a in attrs)]
        if len(matches) == 1:
            pairs.append((j, matches[0]))
    return pairs


class AttentionCorrectnessEvaluator(Evaluator):
    """Liu et al. 2017: for every generated word naming an object, the share of its attention
    inside that object's box, averaged over words. ``uniform`` is the same for uniform
    attention (the box's share of the image), the chance level to compare against."""

    def reset(self) -> None:
        self.scores: list[float] = []
        self.chance: list[float] = []

    def process(self, predictions: Sequence[Prediction]) -> None:
        for p in predictions:
            if p.entry is None or "objects" not in p.entry or p.alpha is None:
                continue
            grid = int(round(p.alpha.shape[-1] ** 0.5))
            size = tuple(p.entry.get("size") or (IMAGE_SIZE, IMAGE_SIZE))
            for j, k in named_objects(p.words, p.entry["objects"]):
                cover = box_coverage(p.entry["objects"][k]["box"], size, grid)
                self.scores.append(float((p.alpha[j].float().numpy() * cover).sum()))
                self.chance.append(float(cover.mean()))

    def evaluate(self) -> dict[str, float]:
        if not self.scores:
            return {}
        return {"attention_correctness": float(np.mean(self.scores)),
                "attention_correctness_uniform": float(np.mean(self.chance)),
                "attention_words": float(len(self.scores))}


@EVALUATORS.register("attention_correctness")
def _attention_correctness(options: EvaluationOptions) -> Evaluator:
    return AttentionCorrectnessEvaluator()
