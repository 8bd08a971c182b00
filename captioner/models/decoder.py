"""The LSTM decoder of Show, Attend and Tell, with an ``init``/``step`` interface.

Teacher forcing (``forward``) and beam search both run the same ``step``, so what the search
scores is exactly what training optimised.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..config import ModelConfig
from ..registry import ATTENTIONS
from .attention.base import Attention


@dataclass
class DecoderState:
    h: torch.Tensor  # (B, H)
    c: torch.Tensor  # (B, H)

    def select(self, index: torch.Tensor) -> "DecoderState":
        """Rows ``index`` of the state (used by beam search to follow back-pointers)."""
        # index_select: its backward adds rows in a fixed order, where indexing's backward
        # (index_put with accumulate) adds repeated rows in thread order on a multi-core CPU
        return DecoderState(self.h.index_select(0, index), self.c.index_select(0, index))


@dataclass
class StepOutput:
    logits: torch.Tensor  # (B, V)
    state: DecoderState
    alpha: torch.Tensor  # (B, P)
    beta: torch.Tensor  # (B, 1) gate on the context
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class DecoderOutput:
    """Teacher-forced outputs for a batch, in the batch's own order; positions past a caption's
    end are zero and ``mask`` is False there."""

    logits: torch.Tensor  # (B, T, V) scores for words 1..T of each caption
    targets: torch.Tensor  # (B, T) the words to predict
    mask: torch.Tensor  # (B, T) True where a target is a real word or <end>
    alpha: torch.Tensor  # (B, T, P)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # each (B, T)


class _PrefixSum(torch.autograd.Function):
    """x -> a token that every prefix of ``prefixes`` depends on, so x's backward runs once
    all of theirs have; it hands on the gradient buffer they added into."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, buffer: list[torch.Tensor]) -> torch.Tensor:
        ctx.buffer = buffer
        return x.new_zeros(())

    @staticmethod
    def backward(ctx, grad_token):
        return (ctx.buffer.pop() if ctx.buffer else None), None


class _Prefix(torch.autograd.Function):
    """x[:n] (a view); its backward adds its gradient into the shared buffer, in place."""

    @staticmethod
    def forward(ctx, token: torch.Tensor, x: torch.Tensor, n: int,
                buffer: list[torch.Tensor]) -> torch.Tensor:
        ctx.n, ctx.shape, ctx.buffer = n, x.shape, buffer
        return x[:n]

    @staticmethod
    def backward(ctx, grad):
        if not ctx.buffer:
            ctx.buffer.append(grad.new_zeros(ctx.shape))
        ctx.buffer[0][: ctx.n] += grad
        return grad.new_zeros(()), None, None, None


def prefixes(x: torch.Tensor, counts: list[int]) -> list[torch.Tensor]:
    """``[x[:n] for n in counts]`` whose gradients add into one x-sized buffer. Plain slicing
    allocates, zero-fills and copies an x-sized gradient for every slice (25 MB a word for the
    projected features of 64 captions on a 14x14 grid; with the attention's own backward,
    training is 1.22x faster there on 2 CPU cores: benchmarks/README.md). Without gradients,
    plain slices."""
    if not (torch.is_grad_enabled() and x.requires_grad):
        return [x[:n] for n in counts]
    buffer: list[torch.Tensor] = []
    token = _PrefixSum.apply(x, buffer)
    return [_Prefix.apply(token, x.detach(), n, buffer) for n in counts]


def build_attention(config: ModelConfig) -> Attention:
    """The attention kind ``config.attention`` with its ``attention_options``."""
    cls = ATTENTIONS.get(config.attention)
    return cls(config.feature_dim, config.hidden_dim, config.attention_dim,
               cls.Options(**config.attention_options))


class Decoder(nn.Module):
    """LSTM with attention, gating scalar beta (4.2.1) and the deep output layer (eq. 7)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        d, h, m = config.feature_dim, config.hidden_dim, config.embed_dim
        self.attention = build_attention(config)
        self.embedding = nn.Embedding(config.vocab_size, m)
        self.init_h = nn.Sequential(nn.Linear(d, h), nn.Tanh())  # MLPs over the mean annotation
        self.init_c = nn.Sequential(nn.Linear(d, h), nn.Tanh())
        self.f_beta = nn.Linear(h, 1) if config.gate else None
        self.lstm = nn.LSTMCell(m + d, h)
        self.L_h = nn.Linear(h, m)
        self.L_z = nn.Linear(d, m)
        self.L_o = nn.Linear(m, config.vocab_size)
        self.dropout = nn.Dropout(config.dropout)
        self.output_act = nn.Tanh() if config.deep_output == "tanh" else nn.Identity()

    @property
    def vocab_size(self) -> int:
        return self.L_o.out_features

    def init(self, features: torch.Tensor, generator: torch.Generator | None = None
             ) -> tuple[torch.Tensor, DecoderState]:
        """Per-image work done once: projected features (B, P, A) and the initial state."""
        self.attention.reset(len(features), generator)
        mean = features.mean(1)  # (B, D)
        return self.attention.project(features), DecoderState(self.init_h(mean), self.init_c(mean))

    def step(self, features: torch.Tensor, projected: torch.Tensor, state: DecoderState,
             words: torch.Tensor, generator: torch.Generator | None = None) -> StepOutput:
        """One word: previous words (B,) and state -> logits for the next word (B, V)."""
        emb = self.embedding(words)  # (B, M)
        att = self.attention(features, projected, state.h, generator)
        beta = torch.sigmoid(self.f_beta(state.h)) if self.f_beta is not None else \
            torch.ones_like(state.h[:, :1])
        z = beta * att.context  # (B, D)
        h, c = self.lstm(torch.cat([emb, z], dim=1), (state.h, state.c))
        logits = self.L_o(self.dropout(self.output_act(emb + self.L_h(h) + self.L_z(z))))  # eq. 7
        return StepOutput(logits, DecoderState(h, c), att.alpha, beta, att.extras)

    def forward(self, features: torch.Tensor, captions: torch.Tensor, lengths: torch.Tensor,
                generator: torch.Generator | None = None,
                image_index: torch.Tensor | None = None) -> DecoderOutput:
        """Teacher forcing over ``captions`` (N, L) = <start> w.. <end> <pad>.., ``lengths`` (N,)
        counting <start> and <end>. ``features`` are (N, P, D), or (B, P, D) with
        ``image_index`` (N,) naming each caption's image: per-image work is then done once.

        Captions are sorted by length and each step runs only on those still going, so no
        compute is spent on padding.
        """
        steps = lengths.to(features.device) - 1  # words to predict per caption
        order = torch.argsort(steps, descending=True, stable=True)
        projected, state = self.init(features, generator)
        rows = order if image_index is None else image_index.to(features.device)[order]
        # index_select, not features[rows]: a run is bit-exact at any one thread count (select)
        features, projected = features.index_select(0, rows), projected.index_select(0, rows)
        state = state.select(rows)
        captions, steps = captions[order], steps[order]
        b, t_max = len(captions), int(steps.max())
        mask = torch.arange(t_max, device=steps.device)[None] < steps[:, None]  # (B, T) sorted
        outputs: list[StepOutput] = []
        counts = mask.sum(0).tolist()  # captions still going at each step (a prefix)
        feature_slices = prefixes(features, counts)
        projected_slices = prefixes(projected, counts)
        for t, n in enumerate(counts):
            state = DecoderState(state.h[:n], state.c[:n])
            out = self.step(feature_slices[t], projected_slices[t], state, captions[:n, t],
                            generator)
            outputs.append(out)
            state = out.state
        # Step outputs are packed time-major; scatter them into (B, T, ...) in one go, in the
        # batch's original order (one copy forward, one gather backward).
        t_idx, row = mask.t().nonzero(as_tuple=True)
        row = order[row]  # sorted position -> original position
        inverse = torch.argsort(order)

        def unpack(values: list[torch.Tensor]) -> torch.Tensor:
            packed = torch.cat(values)
            padded = packed.new_zeros(b, t_max, *packed.shape[1:])
            padded[row, t_idx] = packed
            return padded

        extras = {k: unpack([o.extras[k] for o in outputs]) for k in outputs[0].extras}
        return DecoderOutput(unpack([o.logits for o in outputs]), captions[inverse, 1: t_max + 1],
                             mask[inverse], unpack([o.alpha for o in outputs]), extras)
