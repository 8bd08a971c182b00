"""Soft attention (section 4.2): the deterministic expectation over locations."""

from __future__ import annotations

from ...registry import ATTENTIONS
from .base import Attention, AttentionOutput


@ATTENTIONS.register("soft")
class SoftAttention(Attention):
    """Deterministic soft attention: z_t = sum_i alpha_ti a_i, trained by backpropagation."""

    def forward(self, features, projected, hidden, generator=None):
        alpha = self.weights(projected, hidden)
        return AttentionOutput(self.context(alpha, features), alpha)
