"""Training objectives behind one interface: ``objective.loss(batch) -> named loss terms``.

``likelihood`` ("xe") is the paper's: cross-entropy, the doubly stochastic term and whatever
terms the attention kind adds (hard attention's REINFORCE). ``scst`` is self-critical training
on CIDEr-D (Rennie et al. 2017). A new objective is one class registered with
``@register_objective("name")``; the Trainer looks it up by ``TrainConfig.objective``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from .config import TrainConfig
from .data.dataset import Batch, CaptionDataset
from .losses import caption_log_likelihood, caption_losses, self_critical
from .metrics import CiderD
from .models.model import CaptionModel
from .search import banned_mask, draw, sample
from .vocab import Vocabulary


@dataclass
class StepContext:
    """What an objective needs to compute a batch's loss: the model (and the module to call,
    its DDP wrapper under torchrun), the device, the training RNG and the autocast context."""

    model: CaptionModel
    forward: nn.Module
    device: torch.device
    generator: torch.Generator
    autocast: Callable[[], AbstractContextManager]


class Objective:
    """A training objective. ``check`` refuses settings it cannot train with before any work;
    ``loss`` returns the named terms of one batch, ``total`` among them."""

    def __init__(self, ctx: StepContext, cfg: TrainConfig, dataset: CaptionDataset):
        self.ctx, self.cfg = ctx, cfg

    @classmethod
    def check(cls, cfg: TrainConfig) -> None:
        """Raise ValueError (one line naming the flag) for settings this objective refuses."""

    def loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _forward(self, batch: Batch, captions: torch.Tensor, lengths: torch.Tensor,
                 image_index: torch.Tensor, inputs: torch.Tensor | None = None,
                 module: nn.Module | None = None):
        """Teacher-forced decoder outputs (logits in float32) for ``captions`` of the batch's
        images (or of ``inputs``, features already computed), through ``module`` (default: the
        context's, the DDP wrapper under torchrun)."""
        ctx = self.ctx
        source = batch.inputs.to(ctx.device, non_blocking=True) if inputs is None else inputs
        encoded = batch.encoded if inputs is None else True
        with ctx.autocast():
            out = (module or ctx.forward)(source, captions.to(ctx.device), lengths,
                                          image_index.to(ctx.device), ctx.generator,
                                          encoded=encoded)
        out.logits = out.logits.float()
        return out


def _rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The global RNG states that dropout draws from (CPU, and ``device``'s when CUDA)."""
    return (torch.get_rng_state(),
            torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


@contextmanager
def _replayed(state: tuple[torch.Tensor, torch.Tensor | None], device: torch.device
              ) -> Iterator[None]:
    """Within it the global RNG starts again from ``state``; afterwards it is where it was."""
    cpu, cuda = state
    with torch.random.fork_rng(devices=[device] if cuda is not None else []):
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, device)
        yield


OBJECTIVES: dict[str, type[Objective]] = {}


def register_objective(name: str):
    """Register an Objective class under ``name`` (a decorator)."""
    def add(cls: type[Objective]) -> type[Objective]:
        OBJECTIVES[name] = cls
        return cls
    return add


def objective_class(name: str) -> type[Objective]:
    """The objective called ``name``; an unknown one raises ValueError listing the known."""
    if name not in OBJECTIVES:
        raise ValueError(f"--objective must be one of {', '.join(sorted(OBJECTIVES))}, "
                         f"not {name!r}")
    return OBJECTIVES[name]


@register_objective("xe")
class Likelihood(Objective):
    """The paper's objective (eq. 14): -log p(y | a), lambda * the doubly stochastic term, and
    the attention kind's own terms."""

    @classmethod
    def check(cls, cfg):
        if cfg.scst_choices:
            raise ValueError("--scst-choices needs --objective scst")

    def loss(self, batch):
        rng = _rng_state(self.ctx.device)
        out = self._forward(batch, batch.captions, batch.lengths, batch.image_index)
        model = self.ctx.model

        def rerun():
            """The batch again, no gradients, the same dropout masks (the RNG replayed)."""
            with torch.no_grad(), _replayed(rng, self.ctx.device):
                return self._forward(batch, batch.captions, batch.lengths, batch.image_index,
                                     module=model)

        terms = caption_losses(out, model.config.alpha_c, self.cfg.label_smoothing)
        terms.update(model.decoder.attention.loss_terms(out, rerun))
        terms["total"] = sum(terms.values())
        return terms


@register_objective("scst")
class SelfCritical(Objective):
    """Self-critical training: draw ``scst_samples`` captions per image, reward each with
    CIDEr-D against the image's references (document frequencies from all training
    references), and raise the log-probability of those that beat their siblings' mean.
    Dropout is off throughout, so the gradient is of the distribution the captions were drawn
    from. The policy is the words (hard attention: its inference-time context), or with
    ``scst_choices`` the words and the attention's own draws (hard attention's locations)."""

    def __init__(self, ctx, cfg, dataset):
        super().__init__(ctx, cfg, dataset)
        self.reward = CiderD([[c.split() for c in e["captions"]] for e in dataset.entries])
        self.vocab = dataset.data.vocab
        self.banned = banned_mask(ctx.model.config.vocab_size, device=ctx.device)
        attention = ctx.model.decoder.attention
        if cfg.scst_choices and not attention.makes_choices:
            raise ValueError(f"--scst-choices: {ctx.model.config.attention} attention draws "
                             "nothing to train (hard attention draws its locations)")
        if cfg.scst_choices and ctx.forward is not ctx.model:
            raise ValueError("--scst-choices trains in one process, not under torchrun")

    @classmethod
    def check(cls, cfg):
        if cfg.batch_by != "image" or cfg.scst_samples < 2:
            raise ValueError("--objective scst needs --batch-by image (an image's references "
                             "score its samples) and --scst-samples >= 2")

    def loss(self, batch):
        ctx, n = self.ctx, self.cfg.scst_samples
        model = ctx.model
        model.eval()
        try:
            if self.cfg.scst_choices:
                return self._with_choices(batch)
            with torch.no_grad():
                features = model.features(batch.inputs.to(ctx.device, non_blocking=True),
                                          batch.encoded)
            drawn = sample(model.decoder, features, n, model.config.max_len, ctx.generator)
            rewards = self._rewards(drawn, batch)
            start = torch.full_like(drawn.tokens[:, :1], Vocabulary.start_id)
            index = torch.arange(len(features), device=ctx.device).repeat_interleave(n)
            # a frozen encoder's features are reused; a trained one encodes again with gradients
            reuse = None if model.encoder.trainable else features
            out = self._forward(batch, torch.cat([start, drawn.tokens], 1), drawn.lengths + 2,
                                index, reuse)
        finally:
            model.train()
        mask = out.mask.clone()
        forced = drawn.forced_end.nonzero().flatten()
        mask[forced, drawn.lengths[forced]] = False  # max_len's <end> was not drawn
        log_prob = caption_log_likelihood(out.logits, out.targets, mask, self.banned)
        loss = self_critical(log_prob, rewards, mask.sum())
        return {"scst": loss, "reward": rewards.mean(), "total": loss}

    def _with_choices(self, batch):
        """The policy is the words and the attention's draws: the captions are drawn once
        with gradients (replaying the locations in a teacher-forced pass would need them
        threaded through it), and each caption's log-probability is its words' plus its
        locations'."""
        ctx, model = self.ctx, self.ctx.model
        with torch.set_grad_enabled(model.encoder.trainable):
            features = model.features(batch.inputs.to(ctx.device, non_blocking=True),
                                      batch.encoded)
        with model.decoder.attention.choosing(), ctx.autocast():
            drawn = draw(model.decoder, features, self.cfg.scst_samples, model.config.max_len,
                         ctx.generator)
        rewards = self._rewards(drawn, batch)
        predicted = drawn.lengths + (~drawn.forced_end).long()  # words and a drawn <end>
        loss = self_critical(drawn.log_prob + drawn.choice_log_prob, rewards, predicted.sum())
        return {"scst": loss, "reward": rewards.mean(), "total": loss,
                "choice_log_prob": drawn.choice_log_prob.detach().mean()}

    def _rewards(self, drawn, batch) -> torch.Tensor:
        """(B, n) CIDEr-D of every drawn caption against its image's references."""
        n = self.cfg.scst_samples
        words = [self.vocab.decode(row[:k]) for row, k in
                 zip(drawn.tokens.tolist(), drawn.lengths.tolist())]
        refs = [r for r in batch.references for _ in range(n)]
        return torch.tensor(self.reward.scores(words, refs)).view(-1, n)
