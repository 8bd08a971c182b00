"""The ``beam`` strategy: batched beam search (``search.beam_search``)."""

from __future__ import annotations

import torch

from ..models.decoder import Decoder
from ..registry import STRATEGIES
from ..beam_search import beam_search
from ..search import Hypothesis
from .options import DecodeOptions


@STRATEGIES.register("beam")
def beam(decoder: Decoder, features: torch.Tensor, o: DecodeOptions) -> list[list[Hypothesis]]:
    """The ``n_best`` of ``beam_size`` beams per image, ranked by ``length_penalty``."""
    return beam_search(decoder, features, o.beam_size, o.max_len, n_best=o.n_best,
                       length_penalty=o.length_penalty, allow_unk=o.allow_unk,
                       no_end_after=o.no_end_after)
