"""The LSTM decoder of Show, Attend and Tell, with an ``init``/``step`` interface.

Beam search and sampling run ``step`` a word at a time. Teacher forcing (``forward``) computes
the same function over whole captions, arranged for training speed (the pieces it shares with
``step`` are the same code; tests/test_decoder_speed_parity.py holds them equal in outputs,
losses and gradients), so what the search scores is what training optimised.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..registry import ATTENTIONS
from .attention.base import Attention
from .gradients import prefixes, step_product


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


@dataclass(init=False, eq=False)
class DecoderOutput:
    """Teacher-forced outputs for a batch, in the batch's own order; positions past a caption's
    end are zero and ``mask`` is False there.

    ``logits`` (B, T, V) are made on first use from ``packed``, the logits of the real target
    words only (a loss over words reads those and never pays for the padding)."""

    targets: torch.Tensor  # (B, T) the words to predict
    mask: torch.Tensor  # (B, T) True where a target is a real word or <end>
    alpha: torch.Tensor  # (B, T, P)
    extras: dict[str, torch.Tensor]  # each (B, T)
    packed: PackedLogits | None
    _logits: torch.Tensor | None  # (B, T, V) once made

    def __init__(self, logits: torch.Tensor | None, targets: torch.Tensor, mask: torch.Tensor,
                 alpha: torch.Tensor, extras: dict[str, torch.Tensor] | None = None,
                 packed: PackedLogits | None = None):
        assert logits is not None or packed is not None
        self.targets, self.mask, self.alpha = targets, mask, alpha
        self.extras = extras if extras is not None else {}
        self.packed, self._logits = packed, logits

    @property
    def logits(self) -> torch.Tensor:
        """(B, T, V) scores for words 1..T of each caption, zero past its end; float32 (or
        wider) even when the decoder ran under autocast."""
        if self._logits is None:
            p = self.packed
            logits = p.wide_logits()
            padded = logits.new_zeros(*self.mask.shape, logits.shape[-1])
            padded[p.rows, p.steps] = logits
            self._logits = padded
        return self._logits

    @logits.setter
    def logits(self, value: torch.Tensor) -> None:
        if value is not self._logits:  # other scores: the packed ones no longer hold
            self.packed = None
        self._logits = value


@dataclass
class PackedLogits:
    """The logits of the real target words of a teacher-forced batch, one row each."""

    logits: torch.Tensor  # (N, V)
    targets: torch.Tensor  # (N,) the words they score
    rows: torch.Tensor  # (N,) each one's caption (row of the batch)
    steps: torch.Tensor  # (N,) and position in it

    def wide_logits(self) -> torch.Tensor:
        """The logits in float32, or wider (a loss's precision even under autocast)."""
        return self.logits.to(torch.promote_types(self.logits.dtype, torch.float32))


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
        att, beta, z = self._attend(features, projected, state.h, generator)
        h, c = self.lstm(torch.cat([emb, z], dim=1), (state.h, state.c))
        return StepOutput(self._output(emb, h, z), DecoderState(h, c), att.alpha, beta,
                          att.extras)

    def _attend(self, features, projected, h, generator):
        """Attention on h_{t-1} and the gated context z_t = beta_t * phi(a, alpha_t)."""
        att = self.attention(features, projected, h, generator)
        beta = torch.sigmoid(self.f_beta(h)) if self.f_beta is not None else \
            torch.ones_like(h[:, :1])
        return att, beta, beta * att.context  # z (B, D)

    def _output(self, emb, h, z):
        """Eq. 7: L_o(E y_{t-1} + L_h h_t + L_z z_t), for any number of rows."""
        return self.L_o(self.dropout(self.output_act(emb + self.L_h(h) + self.L_z(z))))

    def forward(self, features: torch.Tensor, captions: torch.Tensor, lengths: torch.Tensor,
                generator: torch.Generator | None = None,
                image_index: torch.Tensor | None = None) -> DecoderOutput:
        """Teacher forcing over ``captions`` (N, L) = <start> w.. <end> <pad>.., ``lengths`` (N,)
        counting <start> and <end>. ``features`` are (N, P, D), or (B, P, D) with
        ``image_index`` (N,) naming each caption's image: per-image work is then done once.

        The same function as looping ``step`` over the words (tested), arranged for speed:
        captions are sorted by length and each step runs only on those still going (no compute
        on padding); what does not depend on the recurrence is computed once for all words of
        the batch outside the time loop (the embeddings' share of the LSTM's input gates, and
        the deep output layer with the word layer, eq. 7, on the packed real words, whose
        logits the loss reads without padding); the recurrent weights' gradient is one product
        over all steps, and the features' and projections' gradients gather in place
        (``prefixes``). Dropout draws its masks once for all words: the same distribution as a
        draw per word, other draws (a run is reproducible, not the draws of earlier versions).
        Training speed against the tutorial decoder: ``benchmarks/decoder_vs_reference.py``.
        """
        steps = lengths.to(features.device) - 1  # words to predict per caption
        order = torch.argsort(steps, descending=True, stable=True)
        rows = order if image_index is None else image_index.to(features.device)[order]
        # index_select, not features[rows]: a run is bit-exact at any one thread count (select)
        if len(rows) > len(features):  # images with several captions: their work once each
            projected, state = self.init(features, generator)
            features, projected = features.index_select(0, rows), projected.index_select(0, rows)
            state = state.select(rows)
        else:  # no more captions than images: the captions' features, sorted, then projected
            features = features.index_select(0, rows)
            projected, state = self.init(features, generator)
        captions, steps = captions[order], steps[order]
        b, t_max = len(captions), int(steps.max())
        mask = torch.arange(t_max, device=steps.device)[None] < steps[:, None]  # (B, T) sorted
        counts = mask.sum(0).tolist()  # captions still going at each step (a prefix)
        # the real words packed time-major: step 0's captions, then step 1's, ...
        packed_mask = mask.t()
        emb = self.embedding(captions[:, :t_max].t()[packed_mask])  # (N, M)
        m = emb.shape[1]
        lstm = self.lstm
        # the embeddings' share of the input gates, W_ih[:, :M] E y_{t-1} + biases, for all words
        gates_emb = F.linear(emb, lstm.weight_ih[:, :m], lstm.bias_ih + lstm.bias_hh)
        # the rest, [W_ih[:, M:] W_hh] [z_t; h_{t-1}], is one product a step (and one for its
        # weights' gradient over all steps)
        recurrent = step_product(torch.cat([lstm.weight_ih[:, m:], lstm.weight_hh], 1))
        feature_slices = prefixes(features, counts)
        projected_slices = prefixes(projected, counts)
        hs, zs, alphas, extras = [], [], [], []
        h, c = state.h, state.c
        for t, (n, x) in enumerate(zip(counts, gates_emb.split(counts))):
            h, c = h[:n], c[:n]
            att, _, z = self._attend(feature_slices[t], projected_slices[t], h, generator)
            gates = recurrent(x, torch.cat([z, h], 1))  # (n, 4H): i f g o
            i, f, g, o = gates.chunk(4, 1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            hs.append(h), zs.append(z), alphas.append(att.alpha), extras.append(att.extras)
        logits = self._output(emb, torch.cat(hs), torch.cat(zs))  # (N, V) eq. 7 on all words
        # packed -> (B, T, ...) in the batch's original order (one copy forward, one gather back)
        t_idx, row = packed_mask.nonzero(as_tuple=True)
        row = order[row]  # sorted position -> original position
        inverse = torch.argsort(order)

        def unpack(values: list[torch.Tensor]) -> torch.Tensor:
            packed = torch.cat(values)
            padded = packed.new_zeros(b, t_max, *packed.shape[1:])
            padded[row, t_idx] = packed
            return padded

        targets = captions[:, 1: t_max + 1]
        packed = PackedLogits(logits, targets.t()[packed_mask], row, t_idx)
        return DecoderOutput(None, targets[inverse], mask[inverse], unpack(alphas),
                             {k: unpack([e[k] for e in extras]) for k in extras[0]}, packed)
