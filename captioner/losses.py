"""Loss terms of the paper, each a pure function so tests call them alone."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None,
                  label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean -log p(y_t) over real target words (``mask`` True); padding never counts. With
    ``mask`` None, ``logits`` (N, V) and ``targets`` (N,) are the real words already."""
    if mask is not None:
        logits, targets = logits[mask], targets[mask]
    return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)


def caption_log_likelihood(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
                           banned: torch.Tensor | None = None) -> torch.Tensor:
    """log p(y | a) of each caption, summed over its words: (B, T, V) -> (B,). With ``banned``
    (V,), those words get no probability and the rest is renormalised, as when decoding
    samples; positions where ``mask`` is False add nothing."""
    logits = logits.float()
    if banned is not None:
        logits = logits.masked_fill(banned, float("-inf"))
        targets = targets.masked_fill(~mask, (~banned).int().argmax())  # any allowed word
    logp = torch.log_softmax(logits, -1).gather(-1, targets[..., None]).squeeze(-1)
    return torch.where(mask, logp, 0.0).sum(1)


def doubly_stochastic(alpha: torch.Tensor, mask: torch.Tensor, lam: float) -> torch.Tensor:
    """Eq. 14: lambda * sum_i (1 - sum_t alpha_ti)^2 per caption, divided by the caption's
    number of words, averaged over captions.

    The paper adds the term once per caption to the caption's summed -log p(y); our
    cross-entropy is a mean over words, so dividing by the word count keeps the paper's
    balance: lambda = 1 weighs the two as the paper (and the authors' code) did. Padded steps
    have alpha zero (and are masked again here), so they add no attention.
    """
    total = (alpha * mask[..., None]).sum(1)  # (B, P) attention each location got
    words = mask.sum(1).clamp_min(1)  # (B,)
    return lam * (((1.0 - total) ** 2).sum(1) / words).mean()


def reinforce(log_likelihood: torch.Tensor, sample_log_prob: torch.Tensor, entropy: torch.Tensor,
              mask: torch.Tensor, baseline: torch.Tensor, reward_scale: float,
              entropy_coef: float) -> dict[str, torch.Tensor]:
    """The hard-attention estimator (section 4.1) as surrogate losses.

    Minimising ``reinforce`` follows lambda_r (log p(y|s,a) - b) d log p(s|a)/dW, and minimising
    ``entropy`` follows lambda_e dH[s]/dW. ``baseline`` b is one number for every caption (the
    paper's moving average) or one per caption (B,). Both terms are divided by the number of
    target words so they share the cross-entropy's scale.
    """
    n_words = mask.sum().clamp_min(1)
    advantage = (log_likelihood - baseline).detach()  # (B,)
    log_p_s = (sample_log_prob * mask).sum(1)  # (B,) log p(s | a) of the sampled locations
    return {
        "reinforce": -reward_scale * (advantage * log_p_s).sum() / n_words,
        "entropy": -entropy_coef * (entropy * mask).sum() / n_words,
    }


def self_critical(log_prob: torch.Tensor, rewards: torch.Tensor, n_words: torch.Tensor
                  ) -> torch.Tensor:
    """Self-critical policy gradient (Rennie et al. 2017) with the baseline of Luo (2020):
    each sampled caption's reward minus the mean reward of the other captions sampled for the
    same image. ``log_prob`` (B*n,) are the captions' summed word log-probabilities, image-major;
    ``rewards`` (B, n) with n >= 2. Divided by the number of words, as the cross-entropy is."""
    n = rewards.shape[1]
    if n < 2:
        raise ValueError("self-critical training needs at least 2 samples per image")
    baseline = (rewards.sum(1, keepdim=True) - rewards) / (n - 1)
    advantage = (rewards - baseline).reshape(-1).to(log_prob)
    return -(advantage * log_prob).sum() / n_words.clamp_min(1)
