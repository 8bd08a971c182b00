"""The ``sample`` strategy: captions drawn from the model's own word distribution."""

from __future__ import annotations

import torch

from ..models.decoder import Decoder
from ..registry import STRATEGIES
from ..search import Hypothesis, sample
from .options import DecodeOptions


@STRATEGIES.register("sample")
def _sample(decoder: Decoder, features: torch.Tensor, o: DecodeOptions) -> list[list[Hypothesis]]:
    """``n_best`` captions per image drawn from the model (temperature 1, ``seed``), ranked like
    beam search's."""
    generator = torch.Generator(features.device).manual_seed(o.seed)
    drawn = sample(decoder, features, o.n_best, o.max_len, generator, o.allow_unk,
                   o.no_end_after)
    hyps = []
    for row, n in enumerate(drawn.lengths.tolist()):
        log_prob = float(drawn.log_prob[row])
        length = n if bool(drawn.forced_end[row]) else n + 1  # <end> counts when it was drawn
        score = log_prob / max(length, 1) ** o.length_penalty if o.length_penalty else log_prob
        hyps.append(Hypothesis(drawn.tokens[row, :n].tolist(), log_prob, score,
                               drawn.alpha[row, :n].cpu(), not bool(drawn.forced_end[row])))
    per_image = [hyps[i: i + o.n_best] for i in range(0, len(hyps), o.n_best)]
    return [sorted(h, key=lambda x: x.score, reverse=True) for h in per_image]
