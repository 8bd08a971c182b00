"""The attention contract (``Attention``) and the MLP scores every kind shares.

An attention module is built from ``(feature_dim, hidden_dim, attention_dim, options)``. The
decoder calls ``project(features)`` once per image, ``reset(batch_size, generator)`` once per
caption batch, and then ``attention(features, projected, hidden)`` at every word. A new kind is
one module in this package: a subclass registered with ``@ATTENTIONS.register("name")``, with
its ``Options`` dataclass, each field declared with ``fields.option`` (it becomes a
``--NAME-FIELD`` flag with the field's bounds and help, and is saved and checked in the
checkpoint's ``attention_options``). A kind that draws random choices (``makes_choices``) puts
their log-probability and the attention's entropy in ``extras``; the training objectives turn
those into the estimator's terms (``objectives/reinforce.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class AttentionOutput:
    context: torch.Tensor  # (B, D) z_t
    alpha: torch.Tensor  # (B, P) attention weights over locations, sums to 1
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # what a loss needs


class Attention(nn.Module):
    """MLP attention scores e_ti = w^T tanh(W_a a_i + W_h h_{t-1}) and alpha_t = softmax(e_t).

    ``features`` and ``projected`` have one row per hidden row, or one per image when the
    hidden rows come k per image, image-major (beam search's beams)."""

    @dataclass
    class Options:
        """The kind's own settings (none for the base)."""

    def __init__(self, feature_dim: int, hidden_dim: int, attention_dim: int,
                 options: Any = None):
        super().__init__()
        self.options = options if options is not None else self.Options()
        self.feature_proj = nn.Linear(feature_dim, attention_dim)
        self.hidden_proj = nn.Linear(hidden_dim, attention_dim)
        self.score = nn.Linear(attention_dim, 1)

    #: whether the kind draws random choices: then ``extras`` holds ``log_prob`` (of the
    #: choices drawn) and ``entropy`` (of alpha) while training, its ``Options`` have the
    #: estimator's ``reward_scale``, ``entropy``, ``baseline`` and ``baseline_decay``, it keeps
    #: the moving-average ``baseline`` buffer, and ``expecting()`` makes it read the expected
    #: context instead (``objectives/reinforce.py`` uses all of these)
    makes_choices = False

    @contextmanager
    def choosing(self) -> Iterator[None]:
        """Within it, the kind draws its random choices even in eval mode, with their
        log-probabilities in ``extras["log_prob"]`` (self-critical training over them); a kind
        without choices refuses."""
        raise ValueError(f"{type(self).__name__} makes no random choices to train")
        yield

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
            e = _SigmoidScores.apply(h2, projected, w2)  # (B, k, P)
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


class _SigmoidScores(torch.autograd.Function):
    """e = sigmoid(h2 + 2 projected) @ w2 for h2 (B, k, 1, A), projected (B, P, A), w2 (A,)
    -> (B, k, P), with a hand-written backward.

    Autograd's backward of the same expression allocates three tensors of that size (the
    outer product of the scores' gradient with w2, the sigmoid's backward, the doubling); this
    one allocates one, s (1 - s), and scales it in place (training throughput before and
    after: benchmarks/README.md, ``decoder_throughput.py``).
    """

    @staticmethod
    def forward(ctx, h2: torch.Tensor, projected: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
        s = torch.add(h2, projected[:, None], alpha=2).sigmoid_()  # (B, k, P, A)
        ctx.save_for_backward(s, w2)
        return s @ w2

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):  # grad (B, k, P)
        s, w2 = ctx.saved_tensors
        g = torch.addcmul(s, s, s, value=-1)  # sigmoid'(x) = s (1 - s)
        g.mul_(grad.unsqueeze(-1)).mul_(2 * w2)  # dL/d projected = 2 dL/d(its sum with h2)
        grad_h2 = g.sum(2, keepdim=True).mul_(0.5) if ctx.needs_input_grad[0] else None
        grad_projected = (g[:, 0] if g.shape[1] == 1 else g.sum(1)) if ctx.needs_input_grad[1] \
            else None
        grad_w2 = (grad.reshape(1, -1) @ s.reshape(-1, s.shape[-1]))[0] \
            if ctx.needs_input_grad[2] else None
        return grad_h2, grad_projected, grad_w2
