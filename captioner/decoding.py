"""Decoding options and strategies: one ``DecodeOptions`` built at the edge (CLI flags, an HTTP
query, a Python call) and one entry point, ``decode(decoder, features, options)``.

A strategy is a function ``(decoder, features, options) -> list[list[Hypothesis]]`` (per image,
its captions best first) registered by name in ``STRATEGIES``; callers look strategies up by
name and never import one. A new strategy is one function plus ``@register_strategy("name")``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch

from .models.decoder import Decoder
from .search import Hypothesis, beam_search, greedy, sample

#: the widest beam (and most captions per image) a caller may ask for: a beam-search step holds
#: B * beam_size rows of the (P, A) attention tensor, so this bounds its memory
MAX_BEAM = 100
#: the longest caption decoding may be asked for (a checkpoint's max_len is bounded the same way)
MAX_CAPTION_WORDS = 200

Strategy = Callable[[Decoder, torch.Tensor, "DecodeOptions"], list[list[Hypothesis]]]
STRATEGIES: dict[str, Strategy] = {}


def register_strategy(name: str) -> Callable[[Strategy], Strategy]:
    """Register a decoding strategy under ``name`` (a decorator)."""
    def add(fn: Strategy) -> Strategy:
        STRATEGIES[name] = fn
        return fn
    return add


@dataclass(frozen=True)
class DecodeOptions:
    """How to turn features into captions; checked when built, so a bad value is one line
    naming the option before any work is done.

    ``max_len`` 0 means the model's own; ``no_end_after`` None means the vocabulary's blocked
    endings (``Vocabulary.no_end_after``), () none. ``bind`` fills both in for a model.
    """

    strategy: str = "beam"
    beam_size: int = 3
    n_best: int = 1  # captions returned per image (samples drawn, for "sample")
    length_penalty: float = 0.0  # rank by log p / length ** this (0: plain log-probability)
    max_len: int = 0
    no_end_after: tuple[int, ...] | None = None
    allow_unk: bool = False
    seed: int = 0  # for the strategies that draw

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(sorted(STRATEGIES))}, "
                             f"not {self.strategy!r}")
        _check_int("beam_size", self.beam_size, 1, MAX_BEAM)
        _check_int("n_best", self.n_best, 1, MAX_BEAM)
        _check_int("max_len", self.max_len, 0, MAX_CAPTION_WORDS)
        if self.strategy == "beam" and self.n_best > self.beam_size:
            raise ValueError(f"n_best ({self.n_best}) must be at most beam_size ({self.beam_size})")
        if isinstance(self.length_penalty, bool) or not isinstance(self.length_penalty, (int, float)) \
                or not math.isfinite(self.length_penalty) or self.length_penalty < 0:
            raise ValueError(f"length_penalty must be a finite number >= 0, got {self.length_penalty!r}")

    def bind(self, max_len: int, no_end_after: Sequence[int] | None = ()) -> "DecodeOptions":
        """These options for a model: its ``max_len`` unless one was asked, and its
        vocabulary's blocked endings (``Vocabulary.no_end_after``; None, as for a vocabulary
        without endings, blocks nothing) unless given."""
        endings = self.no_end_after if self.no_end_after is not None else no_end_after
        return replace(self, max_len=self.max_len or max_len, no_end_after=tuple(endings or ()))

    def to_dict(self) -> dict:
        """The user-facing options (what a results file records)."""
        return {"strategy": self.strategy, "beam_size": self.beam_size, "n_best": self.n_best,
                "length_penalty": self.length_penalty, "max_len": self.max_len}


def _check_int(name: str, value, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer from {low} to {high}, got {value!r}")


def decode(decoder: Decoder, features: torch.Tensor, options: DecodeOptions
           ) -> list[list[Hypothesis]]:
    """Caption every image of ``features`` (B, P, D) with ``options.strategy``: per image, up
    to ``options.n_best`` hypotheses, best first. ``options`` must be bound (``bind``)."""
    assert options.max_len > 0, "DecodeOptions.bind(model max_len) first"
    return STRATEGIES[options.strategy](decoder, features, options)


@register_strategy("beam")
def _beam(decoder: Decoder, features: torch.Tensor, o: DecodeOptions) -> list[list[Hypothesis]]:
    return beam_search(decoder, features, o.beam_size, o.max_len, n_best=o.n_best,
                       length_penalty=o.length_penalty, allow_unk=o.allow_unk,
                       no_end_after=o.no_end_after)


@register_strategy("greedy")
def _greedy(decoder: Decoder, features: torch.Tensor, o: DecodeOptions) -> list[list[Hypothesis]]:
    return [[h] for h in greedy(decoder, features, o.max_len, o.allow_unk, o.no_end_after)]


@register_strategy("sample")
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


def strategy_names() -> Sequence[str]:
    """The registered strategies, for CLI choices and error messages."""
    return sorted(STRATEGIES)
