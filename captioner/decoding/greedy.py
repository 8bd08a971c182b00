"""The ``greedy`` strategy: the most likely word at every step."""

from __future__ import annotations

import torch

from ..models.decoder import Decoder
from ..registry import STRATEGIES
from ..search import Hypothesis, greedy as greedy_search
from .options import DecodeOptions


@STRATEGIES.register("greedy")
def greedy(decoder: Decoder, features: torch.Tensor, o: DecodeOptions) -> list[list[Hypothesis]]:
    """One caption per image."""
    return [[h] for h in greedy_search(decoder, features, o.max_len, o.allow_unk,
                                       o.no_end_after)]
