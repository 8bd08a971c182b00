"""``xe``: the paper's likelihood objective (eq. 14)."""

from __future__ import annotations

import torch

from ..fields import FieldError
from ..losses import cross_entropy, doubly_stochastic
from ..models.decoder import DecoderOutput
from ..registry import OBJECTIVES
from .base import Objective, replayed, rng_state
from .reinforce import choice_terms


def caption_losses(output: DecoderOutput, alpha_c: float = 0.0, label_smoothing: float = 0.0
                   ) -> dict[str, torch.Tensor]:
    """The likelihood's loss terms for a teacher-forced batch: cross-entropy and, with
    ``alpha_c``, the doubly stochastic term. (An attention kind that draws adds its own.)

    The cross-entropy reads the decoder's packed logits of the real words when it has them,
    never the padded (B, T, V) ones: the same mean, without building and gathering the padding
    (forward and backward)."""
    p = output.packed
    terms = {"ce": cross_entropy(p.wide_logits(), p.targets, None, label_smoothing)
             if p is not None else
             cross_entropy(output.logits, output.targets, output.mask, label_smoothing)}
    if alpha_c:
        terms["doubly_stochastic"] = doubly_stochastic(output.alpha, output.mask, alpha_c)
    return terms


@OBJECTIVES.register("xe")
class Likelihood(Objective):
    """The paper's objective (eq. 14): -log p(y | a), lambda * the doubly stochastic term, and
    the attention kind's own terms."""

    @classmethod
    def check(cls, cfg):
        if cfg.scst_choices:
            raise FieldError("scst_choices", "needs --objective scst")

    def loss(self, batch):
        rng = rng_state(self.ctx.device)
        out = self._forward(batch, batch.captions, batch.lengths, batch.image_index)
        model = self.ctx.model

        def rerun():
            """The batch again, no gradients, the same dropout masks (the RNG replayed)."""
            with torch.no_grad(), replayed(rng, self.ctx.device):
                return self._forward(batch, batch.captions, batch.lengths, batch.image_index,
                                     module=model)

        terms = caption_losses(out, model.config.alpha_c, self.cfg.label_smoothing)
        terms.update(choice_terms(model.decoder.attention, out, rerun))
        terms["total"] = sum(terms.values())
        return terms
