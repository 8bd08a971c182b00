"""Several trained models captioning as one: ``Ensemble(members)``.

Every member keeps its own encoder (or reads its own features) and its own decoder state; at
each step the ensemble's next-word distribution is the renormalised average of the members'
log-probabilities (a product of experts), so beam search, greedy decoding and sampling run on an
ensemble exactly as on one model: ``EnsembleDecoder`` has the decoder's ``init``/``step``
interface, and ``MemberFeatures`` and ``EnsembleState`` select rows as tensors and
``DecoderState`` do. The attention reported is the members' average when their grids agree,
else the first member's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .decoder import Decoder, DecoderState, StepOutput
from .model import CaptionModel


@dataclass(frozen=True)
class MemberFeatures:
    """One (B, P_i, D_i) tensor per member, for the same B images; indexes rows like a tensor.
    ``shape`` is the first member's (the grid whose attention is reported)."""

    parts: tuple[torch.Tensor, ...]

    @property
    def shape(self) -> torch.Size:
        return self.parts[0].shape

    @property
    def device(self) -> torch.device:
        return self.parts[0].device

    def __len__(self) -> int:
        return len(self.parts[0])

    def __getitem__(self, index) -> "MemberFeatures":
        return MemberFeatures(tuple(p[index] for p in self.parts))


@dataclass(frozen=True)
class EnsembleState:
    """Every member's decoder state; ``select`` follows beam search's back-pointers in all."""

    parts: tuple[DecoderState, ...]

    def select(self, index: torch.Tensor) -> "EnsembleState":
        return EnsembleState(tuple(s.select(index) for s in self.parts))


class EnsembleDecoder(nn.Module):
    """The members' decoders stepping together; next-word log-probabilities averaged."""

    def __init__(self, decoders: Sequence[Decoder]):
        super().__init__()
        self.members = nn.ModuleList(decoders)
        sizes = {d.vocab_size for d in decoders}
        if len(sizes) != 1:
            raise ValueError(f"ensemble members have different vocabulary sizes {sorted(sizes)}")

    @property
    def vocab_size(self) -> int:
        return self.members[0].vocab_size

    def init(self, features: MemberFeatures, generator: torch.Generator | None = None
             ) -> tuple[MemberFeatures, EnsembleState]:
        pairs = [d.init(f, generator) for d, f in zip(self.members, features.parts)]
        return (MemberFeatures(tuple(p for p, _ in pairs)),
                EnsembleState(tuple(s for _, s in pairs)))

    def step(self, features: MemberFeatures, projected: MemberFeatures, state: EnsembleState,
             words: torch.Tensor, generator: torch.Generator | None = None) -> StepOutput:
        """One word for every member; ``logits`` are the average of their log-probabilities,
        renormalised (one member: its own logits, unchanged)."""
        outs = [d.step(f, p, s, words, generator) for d, f, p, s in
                zip(self.members, features.parts, projected.parts, state.parts)]
        if len(outs) == 1:
            logits = outs[0].logits
        else:
            mean = torch.stack([torch.log_softmax(o.logits.float(), -1) for o in outs]).mean(0)
            logits = torch.log_softmax(mean, -1)
        alphas = [o.alpha for o in outs]
        same_grid = all(a.shape == alphas[0].shape for a in alphas)
        alpha = torch.stack(alphas).mean(0) if same_grid and len(alphas) > 1 else alphas[0]
        return StepOutput(logits, EnsembleState(tuple(o.state for o in outs)), alpha,
                          outs[0].beta)


def members(model: "CaptionModel | Ensemble") -> list[CaptionModel]:
    """The models behind ``model``: an ensemble's members, or the model itself."""
    return list(model.members) if isinstance(model, Ensemble) else [model]


class Ensemble(nn.Module):
    """Models trained on one vocabulary, decoding together. ``config`` is the first member's
    (its caption length, preprocessing and grid are the ones reported)."""

    def __init__(self, members: Sequence[CaptionModel]):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one model")
        self.members = nn.ModuleList(members)
        self.decoder = EnsembleDecoder([m.decoder for m in members])
        self.config = members[0].config

    def encode(self, images: torch.Tensor | Sequence[torch.Tensor]) -> MemberFeatures:
        """Images -> every member's features: one (B, 3, S, S) batch all members read (they
        share preprocessing), or one batch per member."""
        return self.features(images, [False] * len(self.members))

    def features(self, inputs: torch.Tensor | Sequence[torch.Tensor],
                 encoded: bool | Sequence[bool]) -> MemberFeatures:
        """Every member's (B, P, D) features of the batch ``inputs`` (one tensor for all, or one
        per member), each as ``CaptionModel.features`` makes them."""
        n = len(self.members)
        inputs = [inputs] * n if isinstance(inputs, torch.Tensor) else list(inputs)
        encoded = [encoded] * n if isinstance(encoded, bool) else list(encoded)
        return MemberFeatures(tuple(m.features(x, e) for m, x, e in
                                    zip(self.members, inputs, encoded)))
