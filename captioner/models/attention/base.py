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

    #: on CPU the (rows, P, A) score tensor is computed in blocks of at most this many
    #: elements, in one reused buffer that stays in cache (a beam-search step's whole tensor is
    #: hundreds of MB; beam search measured 1.5x faster on 2 cores, benchmarks/README.md;
    #: training too, forward and backward: ``_SigmoidScores``)
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
        block = max(1, self.cpu_block_elements // (k * p * a)) \
            if projected.device.type == "cpu" else b
        e = _SigmoidScores.apply(h2, projected, w2, block)  # (B, k, P)
        return F.softmax(e.view(n, p) + (self.score.bias - self.score.weight.sum()), dim=-1)

    @staticmethod
    def context(alpha: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """sum_i alpha_ti a_i: (N, P) with (N, P, D) or image-major (B, P, D) -> (N, D)."""
        n, b = len(alpha), len(features)
        return _Context.apply(alpha.view(b, n // b, -1), features).view(n, -1)

    def forward(self, features: torch.Tensor, projected: torch.Tensor, hidden: torch.Tensor,
                generator: torch.Generator | None = None) -> AttentionOutput:
        raise NotImplementedError


class _Context(torch.autograd.Function):
    """alpha (B, k, P) @ features (B, P, D) -> (B, k, D), whose backward reads the features in
    their own layout: autograd's (grad @ features^T) runs 2x slower on a CPU than
    (features @ grad^T), the same products."""

    @staticmethod
    def forward(ctx, alpha: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(alpha, features)
        ctx.sink = getattr(features, "gradient_sink", None)
        return torch.bmm(alpha, features)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        alpha, features = ctx.saved_tensors
        dtype = torch.promote_types(grad.dtype, features.dtype)  # (under autocast they differ)
        grad, features = grad.to(dtype), features.to(dtype)
        grad_alpha = torch.bmm(features, grad.transpose(1, 2)).transpose(1, 2) \
            if ctx.needs_input_grad[0] else None
        grad_features = None
        if ctx.needs_input_grad[1]:
            alpha_t = alpha.to(dtype).transpose(1, 2)  # (B, P, k)
            if ctx.sink is None:
                grad_features = torch.bmm(alpha_t, grad)
            else:  # written into the features' gradient in place (GradientSink)
                add, write = ctx.sink.rows(0, len(features))
                add.baddbmm_(alpha_t[: len(add)], grad[: len(add)])
                torch.bmm(alpha_t[len(add):], grad[len(add):], out=write)
        return grad_alpha, grad_features


class _SigmoidScores(torch.autograd.Function):
    """e = sigmoid(h2 + 2 projected) @ w2 for h2 (B, k, 1, A), projected (B, P, A), w2 (A,)
    -> (B, k, P), ``block`` images at a time, with a hand-written backward.

    The (B, k, P, A) sigmoid never exists whole: each block of images is computed into one
    reused buffer that stays in cache, and the backward computes it again there instead of
    saving it (one pass over ``projected`` each way, nothing of that size kept between them).
    Autograd's backward of the same expression makes three tensors of the full size (the outer
    product of the scores' gradient with w2, the sigmoid's backward, the doubling) from a saved
    fourth. The gradient of ``projected`` goes straight into its ``gradient_sink`` when it has
    one (teacher forcing's slices, ``decoder.prefixes``). Training throughput before and after:
    ``benchmarks/decoder_vs_reference.py``.
    """

    @staticmethod
    def _sigmoid(h2, projected, i, j, buffer):
        return torch.add(h2[i:j], projected[i:j, None], alpha=2, out=buffer[: j - i]).sigmoid_()

    @staticmethod
    def forward(ctx, h2: torch.Tensor, projected: torch.Tensor, w2: torch.Tensor,
                block: int) -> torch.Tensor:
        (b, k, _, a), p = h2.shape, projected.shape[1]
        dtype = torch.promote_types(h2.dtype, projected.dtype)
        buffer = projected.new_empty(min(block, b), k, p, a, dtype=dtype)
        e = torch.cat([_SigmoidScores._sigmoid(h2, projected, i, min(i + block, b), buffer)
                       @ w2.to(dtype) for i in range(0, b, block)])
        ctx.save_for_backward(h2, projected, w2)
        ctx.block, ctx.sink = block, getattr(projected, "gradient_sink", None)
        return e

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):  # grad (B, k, P)
        h2, projected, w2 = ctx.saved_tensors
        block, (b, k, _, a), p = ctx.block, h2.shape, projected.shape[1]
        need_h2, need_projected, need_w2 = ctx.needs_input_grad[:3]
        dtype = torch.promote_types(h2.dtype, projected.dtype)
        buffer = projected.new_empty(min(block, b), k, p, a, dtype=dtype)
        w = w2.to(dtype)
        w2x2 = 2 * w  # d/d projected = 2 d/d(its sum with h2)
        grad_h2 = h2.new_empty(b, k, 1, a, dtype=dtype) if need_h2 else None
        sink = ctx.sink if need_projected else None  # written in place (GradientSink)
        grad_projected = projected.new_empty(b, p, a, dtype=dtype) \
            if need_projected and sink is None else None
        grad_w2 = w.new_zeros(a) if need_w2 else None
        grad = grad.to(dtype)
        for i in range(0, b, block):
            j = min(i + block, b)
            s = _SigmoidScores._sigmoid(h2, projected, i, j, buffer)  # (j - i, k, P, A)
            g = grad[i:j]  # (j - i, k, P)
            if need_w2:
                grad_w2 += (g.reshape(1, -1) @ s.reshape(-1, a))[0]
            s.addcmul_(s, s, value=-1).mul_(g.unsqueeze(-1))  # sigmoid' = s (1 - s), times grad
            if need_h2:
                torch.sum(s, 2, keepdim=True, out=grad_h2[i:j])
            if need_projected:
                rows = s[:, 0] if k == 1 else s.sum(1)  # (j - i, P, A)
                if sink is None:
                    torch.mul(rows, w2x2, out=grad_projected[i:j])
                else:
                    add, write = sink.rows(i, j)
                    add.addcmul_(rows[: len(add)], w2x2)
                    torch.mul(rows[len(add):], w2x2, out=write)
        if need_h2:
            grad_h2.mul_(w)
        return (None if grad_h2 is None else grad_h2.to(h2.dtype),
                None if grad_projected is None else grad_projected.to(projected.dtype),
                None if grad_w2 is None else grad_w2.to(w2.dtype), None)
