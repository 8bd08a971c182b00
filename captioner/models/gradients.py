"""Autograd pieces that make teacher forcing fast: the gradients of the per-word slices of the
features and projections gather in one buffer (``prefixes``, ``GradientSink``), and the
recurrent weights' gradient is one product over all steps (``step_product``) instead of one per
word. Each computes exactly what plain autograd would (tests/test_decoder_speed_parity.py).
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def _backward_pass() -> int:
    """Which backward pass is running (autograd's graph task id, as torch.utils.checkpoint
    reads it): what a pass gathers across its nodes starts again in the next one (a graph run
    backward twice, or in part, with ``retain_graph``)."""
    return torch._C._current_graph_task_id()


class GradientSink:
    """The gradient of a tensor x whose row prefixes x[:n] many consumers read: one x-sized
    buffer, never zero-filled, that each consumer's backward writes or adds its rows into.

    Rows [0, ``filled``) hold a gradient already (add into them), the rest nothing yet
    (overwrite them); a consumer asks for rows in increasing order from 0, so that stays a
    prefix. A tensor from ``prefixes`` carries its sink as ``gradient_sink``: a backward that
    knows it (the attention's scores and context) writes there directly and returns no
    gradient for the slice; any other's gradient is added by the slice's own backward."""

    def __init__(self, x: torch.Tensor):
        self.x, self.buffer, self.filled, self.task = x, None, 0, None

    def rows(self, i: int, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows i:j of the gradient as (the rows to add into, the rows to overwrite)."""
        if self.task != _backward_pass():  # a new pass: nothing written yet
            self.buffer, self.filled, self.task = None, 0, _backward_pass()
        assert i <= self.filled, "rows must be asked for in order from 0"
        if self.buffer is None:
            self.buffer = torch.empty_like(self.x)
        k = min(self.filled, j)
        self.filled = max(self.filled, j)
        return self.buffer[i:k], self.buffer[k:j]

    def add(self, grad: torch.Tensor) -> None:
        """Add the gradient of x[:len(grad)]."""
        old, new = self.rows(0, len(grad))
        old += grad[: len(old)]
        new.copy_(grad[len(old):])

    def take(self) -> torch.Tensor | None:
        """This pass's whole gradient (rows nobody wrote are zero; None if nobody wrote), and
        the sink is empty again."""
        buffer, filled = self.buffer, self.filled
        if self.task != _backward_pass():
            buffer = None
        self.buffer, self.filled, self.task = None, 0, None
        if buffer is not None:
            buffer[filled:].zero_()
        return buffer


class _PrefixSum(torch.autograd.Function):
    """x -> a token that every prefix of ``prefixes`` depends on, so x's backward runs once
    all of theirs have; it hands on the gradient the sink gathered."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, sink: GradientSink) -> torch.Tensor:
        ctx.sink = sink
        return x.new_zeros(())

    @staticmethod
    def backward(ctx, grad_token):
        return ctx.sink.take(), None


class _Prefix(torch.autograd.Function):
    """x[:n] (a view); its backward adds its gradient (if its consumers left one) into the
    sink, in place."""

    @staticmethod
    def forward(ctx, token: torch.Tensor, x: torch.Tensor, n: int,
                sink: GradientSink) -> torch.Tensor:
        ctx.set_materialize_grads(False)
        ctx.sink = sink
        return x[:n]

    @staticmethod
    def backward(ctx, grad):
        if grad is not None:
            ctx.sink.add(grad)
        return ctx.sink.x.new_zeros(()), None, None, None


def prefixes(x: torch.Tensor, counts: list[int]) -> list[torch.Tensor]:
    """``[x[:n] for n in counts]`` whose gradients gather in one x-sized buffer (a
    ``GradientSink``, each slice's ``gradient_sink``). Plain slicing allocates, zero-fills and
    copies an x-sized gradient for every slice (25 MB a word for the projected features of 64
    captions on a 14x14 grid); the attention writes its rows into the buffer in place, without
    a gradient of the slice's size at each word (benchmarks/decoder_vs_reference.py). Without
    gradients, plain slices."""
    if not (torch.is_grad_enabled() and x.requires_grad):
        return [x[:n] for n in counts]
    sink = GradientSink(x.detach())
    token = _PrefixSum.apply(x, sink)
    slices = [_Prefix.apply(token, sink.x, n, sink) for n in counts]
    for s in slices:
        s.gradient_sink = sink
    return slices


class _Pairs:
    """The (output gradient, input) pairs of a backward pass's step products."""

    def __init__(self):
        self.pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.task = None

    def append(self, grad: torch.Tensor, x: torch.Tensor) -> None:
        if self.task != _backward_pass():  # a new pass
            self.pairs, self.task = [], _backward_pass()
        self.pairs.append((grad, x))

    def take(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        pairs = self.pairs if self.task == _backward_pass() else []
        self.pairs, self.task = [], None
        return pairs


class _WeightGradient(torch.autograd.Function):
    """w -> a token that every step's product with w depends on, so its backward runs once
    all of theirs have: it makes w's gradient one matrix product over the (output gradient,
    input) pairs they left in ``store``."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, store: _Pairs) -> torch.Tensor:
        ctx.store = store
        return w.new_zeros(())

    @staticmethod
    def backward(ctx, grad_token):
        pairs = ctx.store.take()
        if not pairs:
            return None, None
        grads, inputs = zip(*pairs)
        return torch.cat(grads).t() @ torch.cat(inputs), None


class _StepProduct(torch.autograd.Function):
    """y + x w^T for one step; its backward gives y's and x's gradients and leaves w's to
    ``_WeightGradient`` (w comes detached, the token carries the dependency)."""

    @staticmethod
    def forward(ctx, token, y, x, w, store):
        ctx.save_for_backward(x, w)
        ctx.store = store
        return torch.addmm(y, x, w.t().to(x.dtype))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        g = grad.to(w.dtype)
        ctx.store.append(g, x.to(w.dtype))
        grad_x = (g @ w).to(x.dtype) if ctx.needs_input_grad[2] else None
        return grad.new_zeros(()), grad, grad_x, None, None


def step_product(w: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``f(y, x) = y + x w^T``, called once per step of a loop, whose gradient for w is one
    matrix product over all the steps' rows, made after their backward, instead of a product
    per step added up (each a fresh w-sized tensor). Without gradients, plain ``addmm``."""
    if not (torch.is_grad_enabled() and w.requires_grad):
        return lambda y, x: torch.addmm(y, x, w.t())
    store = _Pairs()
    token = _WeightGradient.apply(w, store)
    detached = w.detach()
    return lambda y, x: _StepProduct.apply(token, y, x, detached, store)
