"""Decoding: ``DecodeOptions`` and ``decode``; one module per strategy, registered in
``captioner.registry.STRATEGIES`` (found by scanning this package). A strategy is a function
``(decoder, features, options) -> list[list[Hypothesis]]`` (per image, its captions best first)
under ``@STRATEGIES.register("name")``; callers look strategies up by name, never import one."""

from ..config import MAX_BEAM, MAX_CAPTION_WORDS
from ..registry import STRATEGIES
from .options import DecodeOptions, decode

__all__ = ["MAX_BEAM", "MAX_CAPTION_WORDS", "STRATEGIES", "DecodeOptions", "decode"]
