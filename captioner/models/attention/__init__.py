"""Attention kinds: the contract in ``base``, one module per kind, registered in
``captioner.registry.ATTENTIONS`` (found by scanning this package)."""

from ...registry import ATTENTIONS
from .base import Attention, AttentionOutput
from .hard import HardAttention
from .soft import SoftAttention

__all__ = ["ATTENTIONS", "Attention", "AttentionOutput", "HardAttention", "SoftAttention"]
