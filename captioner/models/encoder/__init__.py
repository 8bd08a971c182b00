"""Encoders: the contract in ``base``, one module per family, registered in
``captioner.registry.ENCODERS`` (found by scanning this package)."""

from ...registry import ENCODERS
from .base import IMAGENET_MEAN, IMAGENET_STD, Backbone, Encoder, EncoderWeightsError, get_backbone
from .efficientnet import LITE_SIZES, load_efficientnet_lite

__all__ = ["ENCODERS", "IMAGENET_MEAN", "IMAGENET_STD", "LITE_SIZES", "Backbone", "Encoder",
           "EncoderWeightsError", "get_backbone", "load_efficientnet_lite"]
