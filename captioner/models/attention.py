"""Pluggable attention: the contract, soft (section 4.2) and hard (section 4.1) attention.

An attention module is built from ``(feature_dim, hidden_dim, attention_dim, options)``. The
decoder calls ``project(features)`` once per image, ``reset(batch_size, generator)`` once per
caption batch, and then ``attention(features, projected, hidden)`` at every word; training adds
``loss_terms(output, rerun)``, the kind's own loss terms. A new kind subclasses ``Attention``,
declares its ``Options`` (a dataclass: each field becomes a ``--KIND-FIELD`` flag described by
the field's ``metadata["help"]``, with its ``metadata["choices"]`` if it has any, and is saved in
the checkpoint's ``attention_options``) and registers in ``ATTENTIONS``; nothing else changes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ..losses import caption_log_likelihood, reinforce

if TYPE_CHECKING:
    from ..config import ModelConfig
    from .decoder import DecoderOutput


@dataclass
class AttentionOutput:
    context: torch.Tensor  # (B, D) z_t
    alpha: torch.Tensor  # (B, P) attention weights over locations, sums to 1
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # what a loss needs


class Attention(nn.Module):
    """MLP attention scores e_ti = w^T tanh(W_a a_i + W_h h_{t-1}) and alpha_t = softmax(e_t).

    ``features`` and ``projected`` have one row per hidden row, or one per image when the
    hidden rows come k per image, image-major (beam search's beams)."""

    @dataclass
    class Options:
        """The kind's own settings (none for the base)."""

    def __init__(self, feature_dim: int, hidden_dim: int, attention_dim: int,
                 options: Any = None):
        super().__init__()
        self.options = options if options is not None else self.Options()
        for f in dataclasses.fields(self.options):
            choices = f.metadata.get("choices")
            if choices and getattr(self.options, f.name) not in choices:
                raise ValueError(f"{type(self).__name__} {f.name} must be one of "
                                 f"{', '.join(choices)}, not {getattr(self.options, f.name)!r}")
        self.feature_proj = nn.Linear(feature_dim, attention_dim)
        self.hidden_proj = nn.Linear(hidden_dim, attention_dim)
        self.score = nn.Linear(attention_dim, 1)

    @classmethod
    def from_config(cls, config: "ModelConfig") -> "Attention":
        """Build from a model config and its ``attention_options``."""
        return cls(config.feature_dim, config.hidden_dim, config.attention_dim,
                   cls.Options(**config.attention_options))

    #: whether the kind draws random choices (its ``extras["log_prob"]`` is their log-probability)
    makes_choices = False

    def loss_terms(self, output: "DecoderOutput",
                   rerun: Callable[[], "DecoderOutput"] | None = None) -> dict[str, torch.Tensor]:
        """Extra training loss terms of this kind for a teacher-forced batch (none here).
        ``rerun()`` decodes the same batch again, without gradients and with the same dropout
        masks, for a kind that compares with another pass (hard attention's per-caption
        baseline sets its own mode around the call)."""
        return {}

    @contextmanager
    def choosing(self) -> Iterator[None]:
        """Within it, the kind draws its random choices even in eval mode, with their
        log-probabilities in ``extras["log_prob"]`` (self-critical training over them); a kind
        without choices refuses."""
        raise ValueError(f"{type(self).__name__} makes no random choices to train")
        yield

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """W_a a_i for every location, computed once per image: (B, P, D) -> (B, P, A)."""
        return self.feature_proj(features)

    def reset(self, batch_size: int, generator: torch.Generator | None = None) -> None:
        """Start a new batch of captions (a stochastic kind draws its per-batch choices here)."""

    #: CPU inference computes the (rows, P, A) score tensor in blocks of at most this many
    #: elements, in one reused buffer that stays in cache (a beam-search step's whole tensor is
    #: hundreds of MB; beam search measured 1.5x faster on 2 cores, benchmarks/README.md)
    cpu_block_elements = 1 << 19

    def weights(self, projected: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """alpha (N, P) for N hidden rows; ``projected`` is (N, P, A), or (B, P, A) with N = B*k
        rows image-major (beam search: k beams share their image's features, never copied).

        Computed as w^T tanh(x) + c = (2w)^T sigmoid(2x) + (c - sum w), the same function with
        the same passes over the largest tensor: PyTorch's CPU sigmoid is ~6x faster than its
        tanh."""
        n, (b, p, a) = len(hidden), projected.shape
        k = n // b
        h2 = (2 * self.hidden_proj(hidden)).view(b, k, 1, a)
        w2 = 2 * self.score.weight[0]
        if torch.is_grad_enabled() or projected.device.type != "cpu":
            e = _SigmoidScores.apply(h2, projected, w2)  # (B, k, P)
        else:
            step = max(1, self.cpu_block_elements // (k * p * a))  # images per block
            buffer = projected.new_empty(min(step, b), k, p, a)
            e = torch.cat([torch.add(h2[i: i + step], projected[i: i + step, None], alpha=2,
                                     out=buffer[: min(step, b - i)]).sigmoid_() @ w2
                           for i in range(0, b, step)])
        return F.softmax(e.view(n, p) + (self.score.bias - self.score.weight.sum()), dim=-1)

    @staticmethod
    def context(alpha: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """sum_i alpha_ti a_i: (N, P) with (N, P, D) or image-major (B, P, D) -> (N, D)."""
        n, b = len(alpha), len(features)
        return torch.bmm(alpha.view(b, n // b, -1), features).view(n, -1)

    def forward(self, features: torch.Tensor, projected: torch.Tensor, hidden: torch.Tensor,
                generator: torch.Generator | None = None) -> AttentionOutput:
        raise NotImplementedError


class _SigmoidScores(torch.autograd.Function):
    """e = sigmoid(h2 + 2 projected) @ w2 for h2 (B, k, 1, A), projected (B, P, A), w2 (A,)
    -> (B, k, P), with a hand-written backward.

    Autograd's backward of the same expression allocates three tensors of that size (the
    outer product of the scores' gradient with w2, the sigmoid's backward, the doubling); this
    one allocates one, s (1 - s), and scales it in place (training throughput before and
    after: benchmarks/README.md, ``decoder_throughput.py``).
    """

    @staticmethod
    def forward(ctx, h2: torch.Tensor, projected: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
        s = torch.add(h2, projected[:, None], alpha=2).sigmoid_()  # (B, k, P, A)
        ctx.save_for_backward(s, w2)
        return s @ w2

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):  # grad (B, k, P)
        s, w2 = ctx.saved_tensors
        g = torch.addcmul(s, s, s, value=-1)  # sigmoid'(x) = s (1 - s)
        g.mul_(grad.unsqueeze(-1)).mul_(2 * w2)  # dL/d projected = 2 dL/d(its sum with h2)
        grad_h2 = g.sum(2, keepdim=True).mul_(0.5) if ctx.needs_input_grad[0] else None
        grad_projected = (g[:, 0] if g.shape[1] == 1 else g.sum(1)) if ctx.needs_input_grad[1] \
            else None
        grad_w2 = (grad.reshape(1, -1) @ s.reshape(-1, s.shape[-1]))[0] \
            if ctx.needs_input_grad[2] else None
        return grad_h2, grad_projected, grad_w2


class SoftAttention(Attention):
    """Deterministic soft attention: z_t = sum_i alpha_ti a_i, trained by backpropagation."""

    def forward(self, features, projected, hidden, generator=None):
        alpha = self.weights(projected, hidden)
        return AttentionOutput(self.context(alpha, features), alpha)


class HardAttention(Attention):
    """Stochastic hard attention: one location s_t ~ Multinoulli(alpha_t), z_t = a_{s_t}.

    Training (eq. 12 with the authors' variance reduction): a location is sampled and its
    log-probability and the entropy of alpha go to ``extras``, from which ``loss_terms`` makes
    the REINFORCE terms; with probability ``expected_prob`` a whole minibatch uses the expected
    context instead (one coin per batch, as in the authors' code).

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
        baseline_decay: float = field(default=0.9, metadata={
            "help": "decay of the moving-average REINFORCE baseline b_k"})
        reward_scale: float = field(default=0.1, metadata={
            "help": "lambda_r, the weight of the REINFORCE term"})
        entropy: float = field(default=0.002, metadata={
            "help": "lambda_e, the weight of the attention's entropy bonus"})
        expected_prob: float = field(default=0.5, metadata={
            "help": "chance that a training batch reads the expected context instead of "
                    "sampled locations (one coin per batch)"})
        inference: str = field(default="expected", metadata={
            "choices": ("expected", "argmax"),
            "help": "context at inference: the expectation, or the most likely location"})
        baseline: str = field(default="moving", metadata={
            "choices": ("moving", "expected"),
            "help": "REINFORCE's b: one moving average, or each caption's own log-likelihood "
                    "with the expected context"})

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

    def loss_terms(self, output, rerun=None):
        """The REINFORCE and entropy terms of section 4.1, rewarded with the plain
        log-likelihood of the captions; moves the moving-average baseline on (the authors'
        b <- decay * b + (1 - decay) * the batch's mean log-likelihood)."""
        o = self.options
        ll = caption_log_likelihood(output.logits, output.targets, output.mask)
        baseline = self.baseline
        if o.baseline == "expected" and not self.use_expected:  # a batch that drew locations
            if rerun is None:
                raise ValueError("hard attention's expected baseline needs the batch rerun")
            with self.expecting():
                reference = rerun()
            baseline = caption_log_likelihood(reference.logits, reference.targets,
                                              reference.mask).detach()
        terms = reinforce(ll, output.extras["log_prob"], output.extras["entropy"], output.mask,
                          baseline, o.reward_scale, o.entropy)
        self.baseline.lerp_(ll.detach().mean().to(self.baseline.dtype), 1 - o.baseline_decay)
        return terms


ATTENTIONS: dict[str, type[Attention]] = {"soft": SoftAttention, "hard": HardAttention}


def attention_class(name: str) -> type[Attention]:
    """The registered kind ``name``; an unknown name raises ValueError listing the known ones."""
    if name not in ATTENTIONS:
        raise ValueError(f"unknown attention {name!r}; known: {', '.join(sorted(ATTENTIONS))}")
    return ATTENTIONS[name]


def build_attention(config: "ModelConfig") -> Attention:
    """Build ``config.attention`` from the registry with its ``attention_options``."""
    cls = attention_class(config.attention)
    known = {f.name for f in dataclasses.fields(cls.Options)}
    unknown = set(config.attention_options) - known
    if unknown:
        raise ValueError(f"{config.attention} attention has no option {sorted(unknown)[0]!r} "
                         f"(its options: {', '.join(sorted(known)) or 'none'})")
    return cls.from_config(config)
