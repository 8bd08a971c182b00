"""``DecodeOptions``: how features become captions, one object built at the edge (CLI flags,
an HTTP query, a Python call) and passed down whole; ``decode`` runs the strategy it names.

Each field is declared once (``fields.option``): its flag on ``caption``/``evaluate``/
``attend``, its HTTP query parameter (``http=True``) and its check all come from there, so a
new decoding option is one field here (and the strategy that reads it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import torch

from ..config import MAX_BEAM, MAX_CAPTION_WORDS
from ..fields import FieldError, check, option, spec_of
from ..models.decoder import Decoder
from ..registry import STRATEGIES
from ..search import Hypothesis


@dataclass(frozen=True)
class DecodeOptions:
    """How to turn features into captions; checked when built, so a bad value is one line
    naming the option before any work is done.

    ``max_len`` 0 means the model's own; ``no_end_after`` None means the vocabulary's blocked
    endings (``Vocabulary.no_end_after``), () none. ``bind`` fills both in for a model.
    """

    strategy: str = option("beam", choices=STRATEGIES, http=True,
                           help="how captions are decoded")
    beam_size: int = option(3, min=1, max=MAX_BEAM, metavar="K", http=True,
                            help="beams per image")
    n_best: int = option(1, min=1, max=MAX_BEAM, metavar="N", http=True,
                         help="captions per image (for beam, at most --beam-size; for sample, "
                              "the captions drawn)")
    length_penalty: float = option(0.0, min=0, max=5, http=True,
                                   help="rank by log p / length ** this (0: plain "
                                        "log-probability)")
    max_len: int = option(0, min=0, max=MAX_CAPTION_WORDS, http=True, metavar="WORDS",
                          help="longest caption in words (0: the model's own)")
    no_end_after: tuple[int, ...] | None = option(None, flag="", help="word ids a caption may "
                                                  "not end after (None: the vocabulary's)")
    allow_unk: bool = option(False, flag="", help="<unk> may be emitted")
    seed: int = option(0, min=0, http=True, help="seed of the strategies that draw (sample)")

    def __post_init__(self) -> None:
        check(self)
        if self.strategy == "beam" and self.n_best > self.beam_size:
            raise FieldError("n_best", f"must be at most beam_size ({self.beam_size}), "
                                       f"got {self.n_best}")

    def bind(self, max_len: int, no_end_after: Sequence[int] | None = ()) -> "DecodeOptions":
        """These options for a model: its ``max_len`` unless one was asked, and its
        vocabulary's blocked endings (``Vocabulary.no_end_after``; None, as for a vocabulary
        without endings, blocks nothing) unless given."""
        endings = self.no_end_after if self.no_end_after is not None else no_end_after
        return replace(self, max_len=self.max_len or max_len, no_end_after=tuple(endings or ()))

    def to_dict(self) -> dict:
        """The user-facing options, those a client may set (what a results file records)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if spec_of(f).http}


def decode(decoder: Decoder, features: torch.Tensor, options: DecodeOptions
           ) -> list[list[Hypothesis]]:
    """Caption every image of ``features`` (B, P, D) with ``options.strategy``: per image, up
    to ``options.n_best`` hypotheses, best first. ``options`` must be bound (``bind``)."""
    assert options.max_len > 0, "DecodeOptions.bind(model max_len) first"
    return STRATEGIES.get(options.strategy)(decoder, features, options)
