"""``scst``: self-critical training on CIDEr-D (Rennie et al. 2017)."""

from __future__ import annotations

import torch

from ..fields import FieldError
from ..losses import caption_log_likelihood, self_critical
from ..metrics.cider import CiderD
from ..registry import OBJECTIVES
from ..search import banned_mask, draw, sample
from ..vocab import Vocabulary
from .base import Objective


@OBJECTIVES.register("scst")
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
        if cfg.batch_by != "image":
            raise FieldError("batch_by", "--objective scst needs image batches (an image's "
                                         "references score its samples)")

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
