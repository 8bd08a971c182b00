"""The REINFORCE estimator of stochastic attention (section 4.1), as likelihood loss terms.

Any attention kind that draws its locations (``Attention.makes_choices``) gets them here: the
model layer only draws and reports (``extras``: the log-probability of each draw and the
entropy of alpha), and training turns that into gradients. The kind's options say how: the
weights ``reward_scale`` (lambda_r) and ``entropy`` (lambda_e), and the baseline b, ``moving``
(one moving average of the captions' log-likelihood, decayed by ``baseline_decay``: the paper's)
or ``expected`` (each caption's own log-likelihood with the expected context, the same words and
dropout masks).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..losses import caption_log_likelihood, reinforce
from ..models.attention.base import Attention
from ..models.decoder import DecoderOutput


def choice_terms(attention: Attention, output: DecoderOutput,
                 rerun: Callable[[], DecoderOutput]) -> dict[str, torch.Tensor]:
    """The REINFORCE and entropy terms of ``attention``'s draws in a teacher-forced batch
    (none for a kind that draws nothing), rewarded with the plain log-likelihood of the
    captions; moves the moving-average baseline on (the authors' b <- decay * b + (1 - decay)
    * the batch's mean log-likelihood). ``rerun()`` decodes the batch again without gradients
    and with the same dropout masks (for the ``expected`` baseline)."""
    if not attention.makes_choices:
        return {}
    o = attention.options
    ll = caption_log_likelihood(output.logits, output.targets, output.mask)
    baseline = attention.baseline
    if o.baseline == "expected" and not attention.use_expected:  # a batch that drew locations
        with attention.expecting():
            reference = rerun()
        baseline = caption_log_likelihood(reference.logits, reference.targets,
                                          reference.mask).detach()
    terms = reinforce(ll, output.extras["log_prob"], output.extras["entropy"], output.mask,
                      baseline, o.reward_scale, o.entropy)
    attention.baseline.lerp_(ll.detach().mean().to(attention.baseline.dtype),
                             1 - o.baseline_decay)
    return terms
