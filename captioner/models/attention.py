"""Pluggable attention: the contract, soft (section 4.2) and hard (section 4.1) attention.

An attention module is built from ``(feature_dim, hidden_dim, attention_dim)``. The decoder calls
``project(features)`` once per image, ``reset(batch_size, generator)`` once per caption batch, and
then ``attention(features, projected, hidden)`` at every word. A new kind subclasses ``Attention``,
registers in ``ATTENTIONS`` and needs no change to the decoder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from ..config import ModelConfig


@dataclass
class AttentionOutput:
    context: torch.Tensor  # (B, D) z_t
    alpha: torch.Tensor  # (B, P) attention weights over locations, sums to 1
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # what a loss needs


class Attention(nn.Module):
    """MLP attention scores e_ti = w^T tanh(W_a a_i + W_h h_{t-1}) and alpha_t = softmax(e_t).

    ``features`` and ``projected`` have one row per hidden row, or one per image when the
    hidden rows come k per image, image-major (beam search's beams)."""

    def __init__(self, feature_dim: int, hidden_dim: int, attention_dim: int):
        super().__init__()
        self.feature_proj = nn.Linear(feature_dim, attention_dim)
        self.hidden_proj = nn.Linear(hidden_dim, attention_dim)
        self.score = nn.Linear(attention_dim, 1)

    @classmethod
    def from_config(cls, config: "ModelConfig") -> "Attention":
        """Build from a model config; a kind with options of its own overrides this."""
        return cls(config.feature_dim, config.hidden_dim, config.attention_dim)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """W_a a_i for every location, computed once per image: (B, P, D) -> (B, P, A)."""
        return self.feature_proj(features)

    def reset(self, batch_size: int, generator: torch.Generator | None = None) -> None:
        """Start a new batch of captions (a stochastic kind draws its per-batch choices here)."""

    #: CPU inference computes the (rows, P, A) score tensor in blocks of at most this many
    #: elements, in one reused buffer that stays in cache (a beam-search step's whole tensor is
    #: hundreds of MB; beam search measured 1.5x faster on 2 cores, benchmarks/README.md)
    cpu_block_elements = 1 << 19

    def weights(self, projected: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """alpha (N, P) for N hidden rows; ``projected`` is (N, P, A), or (B, P, A) with N = B*k
        rows image-major (beam search: k beams share their image's features, never copied).

        Computed as w^T tanh(x) + c = (2w)^T sigmoid(2x) + (c - sum w), the same function with
        the same passes over the largest tensor: PyTorch's CPU sigmoid is ~6x faster than its
        tanh."""
        n, (b, p, a) = len(hidden), projected.shape
        k = n // b
        h2 = (2 * self.hidden_proj(hidden)).view(b, k, 1, a)
        w2 = 2 * self.score.weight[0]
        if torch.is_grad_enabled() or projected.device.type != "cpu":
            e = torch.add(h2, projected[:, None], alpha=2).sigmoid_() @ w2  # (B, k, P)
        else:
            step = max(1, self.cpu_block_elements // (k * p * a))  # images per block
            buffer = projected.new_empty(min(step, b), k, p, a)
            e = torch.cat([torch.add(h2[i: i + step], projected[i: i + step, None], alpha=2,
                                     out=buffer[: min(step, b - i)]).sigmoid_() @ w2
                           for i in range(0, b, step)])
        return F.softmax(e.view(n, p) + (self.score.bias - self.score.weight.sum()), dim=-1)

    @staticmethod
    def context(alpha: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """sum_i alpha_ti a_i: (N, P) with (N, P, D) or image-major (B, P, D) -> (N, D)."""
        n, b = len(alpha), len(features)
        return torch.bmm(alpha.view(b, n // b, -1), features).view(n, -1)

    def forward(self, features: torch.Tensor, projected: torch.Tensor, hidden: torch.Tensor,
                generator: torch.Generator | None = None) -> AttentionOutput:
        raise NotImplementedError


class SoftAttention(Attention):
    """Deterministic soft attention: z_t = sum_i alpha_ti a_i, trained by backpropagation."""

    def forward(self, features, projected, hidden, generator=None):
        alpha = self.weights(projected, hidden)
        return AttentionOutput(self.context(alpha, features), alpha)


class HardAttention(Attention):
    """Stochastic hard attention: one location s_t ~ Multinoulli(alpha_t), z_t = a_{s_t}.

    Training (eq. 12 with the authors' variance reduction): a location is sampled and its
    log-probability and the entropy of alpha go to ``extras`` for the REINFORCE terms; with
    probability ``expected_prob`` a whole minibatch uses the expected context instead (one coin per
    batch, as in the authors' code).

    Inference uses ``inference`` = "expected" (default) or "argmax". The expectation is the
    default because it is deterministic, it is what half of all training batches used, and it
    scored better in the authors' and our runs; "argmax" reads one location per word, which shows
    exactly where the model looked.
    """

    def __init__(self, feature_dim: int, hidden_dim: int, attention_dim: int,
                 expected_prob: float = 0.5, inference: str = "expected"):
        super().__init__(feature_dim, hidden_dim, attention_dim)
        if inference not in ("expected", "argmax"):
            raise ValueError(f"hard attention inference must be 'expected' or 'argmax', not {inference!r}")
        self.expected_prob = expected_prob
        self.inference = inference
        self.use_expected = False
        # moving-average baseline b_k of the REINFORCE estimator, saved with the weights
        self.register_buffer("baseline", torch.zeros(()))

    @classmethod
    def from_config(cls, config):
        return cls(config.feature_dim, config.hidden_dim, config.attention_dim,
                   config.hard_expected_prob, config.hard_inference)

    def reset(self, batch_size, generator=None):
        if self.training:  # inference draws nothing, so it never shifts the training RNG
            coin = torch.rand((), generator=generator,
                              device=generator.device if generator is not None else None)
            self.use_expected = bool(coin < self.expected_prob)

    def forward(self, features, projected, hidden, generator=None):
        alpha = self.weights(projected, hidden)
        if not self.training:
            if self.inference == "expected":
                return AttentionOutput(self.context(alpha, features), alpha)
            index = alpha.argmax(-1)
            image = torch.arange(len(index), device=index.device) // (len(index) // len(features))
            return AttentionOutput(features[image, index], alpha)
        entropy = -(alpha * torch.log(alpha.clamp_min(1e-12))).sum(-1)  # (B,)
        if self.use_expected:
            context = self.context(alpha, features)
            log_prob = torch.zeros_like(entropy)
        else:
            index = torch.multinomial(alpha.detach(), 1, generator=generator).squeeze(1)  # (B,)
            context = features[torch.arange(len(index), device=features.device), index]
            log_prob = torch.log(alpha.gather(1, index[:, None]).squeeze(1).clamp_min(1e-12))
        return AttentionOutput(context, alpha, {"log_prob": log_prob, "entropy": entropy})


ATTENTIONS: dict[str, type[Attention]] = {"soft": SoftAttention, "hard": HardAttention}


def build_attention(config: "ModelConfig") -> Attention:
    """Build ``config.attention`` from the registry; an unknown name raises ValueError listing
    the known ones."""
    if config.attention not in ATTENTIONS:
        raise ValueError(f"unknown attention {config.attention!r}; "
                         f"known: {', '.join(sorted(ATTENTIONS))}")
    return ATTENTIONS[config.attention].from_config(config)
