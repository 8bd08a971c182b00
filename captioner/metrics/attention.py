"""How peaked the attention is: the mean entropy of the per-word attention maps."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..registry import EVALUATORS
from .base import Evaluator, Prediction
from .registry import EvaluationOptions


def attention_entropy(alphas: list[torch.Tensor]) -> dict[str, float]:
    """Mean entropy (nats) of the per-word attention distributions, against log(P) (uniform)."""
    alphas = [a.float() for a in alphas if len(a)]
    if not alphas:
        return {}
    rows = torch.cat(alphas, 0)  # (words, P)
    ent = -(rows * rows.clamp_min(1e-12).log()).sum(-1)
    return {"attention_entropy": float(ent.mean()),
            "attention_entropy_uniform": float(np.log(rows.shape[-1]))}


class AttentionEntropyEvaluator(Evaluator):
    """``attention_entropy`` and ``attention_entropy_uniform`` over every generated word of the
    predictions that carry an attention map."""

    def reset(self) -> None:
        self.alphas: list[torch.Tensor] = []

    def process(self, predictions: Sequence[Prediction]) -> None:
        self.alphas.extend(p.alpha for p in predictions if p.alpha is not None)

    def evaluate(self) -> dict[str, float]:
        return attention_entropy(self.alphas)


@EVALUATORS.register("attention_entropy")
def _attention_entropy(options: EvaluationOptions) -> Evaluator:
    return AttentionEntropyEvaluator()
