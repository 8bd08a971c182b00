"""Stochastic hard attention (section 4.1): one sampled location per word."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass

import torch

from ...fields import check, option
from ...registry import ATTENTIONS
from .base import Attention, AttentionOutput


@ATTENTIONS.register("hard")
class HardAttention(Attention):
    """Stochastic hard attention: one location s_t ~ Multinoulli(alpha_t), z_t = a_{s_t}.

    Training (eq. 12 with the authors' variance reduction): a location is sampled and its
    log-probability and the entropy of alpha go to ``extras``, from which the training objective
    makes the REINFORCE terms (``objectives/reinforce.py``); with probability ``expected_prob``
    a whole minibatch uses the expected context instead (one coin per batch, as in the authors'
    code).

    The REINFORCE baseline b is ``baseline`` = "moving" (the paper's: one moving average of the
    captions' log-likelihood for all of them) or "expected": each caption's own log-likelihood
    with the expected context, the same words and the same dropout masks (one more forward pass
    without gradients per sampled batch). A caption's log-likelihood varies across captions by
    far more than across location draws (``benchmarks/hard_attention_noise.py``), and only the
    second says anything about the locations; the per-caption baseline removes the first.

    Inference uses ``inference`` = "expected" (default) or "argmax". The expectation is the
    default because it is deterministic, it is what half of all training batches used, and it
    scored better in the authors' and our runs; "argmax" reads one location per word, which shows
    exactly where the model looked.
    """

    @dataclass
    class Options:
        baseline_decay: float = option(0.9, min=0, max=1, help="decay of the moving-average "
                                       "REINFORCE baseline b_k")
        reward_scale: float = option(0.1, min=0, help="lambda_r, the weight of the REINFORCE "
                                     "term")
        entropy: float = option(0.002, min=0, help="lambda_e, the weight of the attention's "
                                "entropy bonus")
        expected_prob: float = option(0.5, min=0, max=1, help="chance that a training batch "
                                      "reads the expected context instead of sampled "
                                      "locations (one coin per batch)")
        inference: str = option("expected", choices=("expected", "argmax"), help="context at "
                                "inference: the expectation, or the most likely location")
        baseline: str = option("moving", choices=("moving", "expected"), help="REINFORCE's b: "
                               "one moving average, or each caption's own log-likelihood with "
                               "the expected context")

        def __post_init__(self) -> None:
            check(self)

    def __init__(self, feature_dim, hidden_dim, attention_dim, options=None):
        super().__init__(feature_dim, hidden_dim, attention_dim, options)
        self.use_expected = False
        self.forced: bool | None = None  # use_expected while ``choosing`` (False)/``expecting``
        # moving-average baseline b_k of the REINFORCE estimator, saved with the weights
        self.register_buffer("baseline", torch.zeros(()))

    makes_choices = True

    @contextmanager
    def _forcing(self, use_expected: bool) -> Iterator[None]:
        self.forced = use_expected
        try:
            yield
        finally:
            self.forced = None

    def choosing(self) -> AbstractContextManager[None]:
        """Locations are drawn in eval mode too (always: no expected-context coin)."""
        return self._forcing(False)

    def expecting(self) -> AbstractContextManager[None]:
        """Every batch uses the expected context, and no coin is drawn, so the training RNG
        stays where it was (the per-caption baseline's rerun)."""
        return self._forcing(True)

    def reset(self, batch_size, generator=None):
        if self.forced is not None:  # draws no coin
            self.use_expected = self.forced
        elif self.training:  # inference draws nothing, so it never shifts the training RNG
            coin = torch.rand((), generator=generator,
                              device=generator.device if generator is not None else None)
            self.use_expected = bool(coin < self.options.expected_prob)

    @staticmethod
    def location(features: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """a_{s_t}: location ``index`` (N,) of each row's features, (N, P, D) one per row or
        image-major (B, P, D) shared by k rows each -> (N, D)."""
        image = torch.arange(len(index), device=index.device) // (len(index) // len(features))
        return features[image, index]

    def forward(self, features, projected, hidden, generator=None):
        alpha = self.weights(projected, hidden)
        if not self.training and self.forced is None:
            if self.options.inference == "expected":
                return AttentionOutput(self.context(alpha, features), alpha)
            return AttentionOutput(self.location(features, alpha.argmax(-1)), alpha)
        entropy = -(alpha * torch.log(alpha.clamp_min(1e-12))).sum(-1)  # (B,)
        if self.use_expected:
            context = self.context(alpha, features)
            log_prob = torch.zeros_like(entropy)
        else:
            index = torch.multinomial(alpha.detach(), 1, generator=generator).squeeze(1)  # (B,)
            context = self.location(features, index)
            log_prob = torch.log(alpha.gather(1, index[:, None]).squeeze(1).clamp_min(1e-12))
        return AttentionOutput(context, alpha, {"log_prob": log_prob, "entropy": entropy})
