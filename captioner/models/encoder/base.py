"""The encoder contract: a ``Backbone`` (blocks, feature size, native grid, preprocessing) and
``Encoder``, which pools its spatial map to a (B, P, D) grid of annotation vectors.

Backbones are built by name from ``captioner.registry.ENCODERS`` (like timm's
``create_model``): one module per family in this package registers ``build(pretrained) ->
Backbone`` under each name. A new encoder is one module here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ...config import Preprocess
from ...errors import UserError
from ...registry import ENCODERS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class EncoderWeightsError(UserError):
    """Pretrained weights could not be found or downloaded."""


@dataclass
class Backbone:
    blocks: list[nn.Module]
    feature_dim: int
    grid_size: int  # native grid at the default input size
    preprocess: Preprocess
    trainable_by_default: bool = False  # a random tiny CNN must learn; pretrained ones stay frozen


def get_backbone(name: str, pretrained: bool = True) -> Backbone:
    """Build a registered backbone; an unknown name raises ValueError listing the known ones."""
    return ENCODERS.get(name)(pretrained)


class Encoder(nn.Module):
    """Backbone blocks -> adaptive average pool to grid x grid -> (B, P, D) annotation vectors.

    The first blocks are frozen (no gradients, BatchNorm statistics fixed); the last
    ``trainable_blocks`` train (-1: all).
    """

    def __init__(self, backbone: Backbone, grid_size: int, trainable_blocks: int = 0):
        super().__init__()
        self.blocks = nn.Sequential(*backbone.blocks)
        self.feature_dim = backbone.feature_dim
        self.grid_size = grid_size
        self.pool = nn.AdaptiveAvgPool2d(grid_size)
        n = len(self.blocks)
        self.num_frozen = 0 if trainable_blocks < 0 else max(0, n - trainable_blocks)
        for i, block in enumerate(self.blocks):
            block.requires_grad_(i >= self.num_frozen)

    def train(self, mode: bool = True) -> "Encoder":
        super().train(mode)
        for block in list(self.blocks)[: self.num_frozen]:
            block.eval()  # frozen BatchNorm keeps its ImageNet statistics
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images  # (B, 3, H, W)
        with torch.no_grad():
            for block in list(self.blocks)[: self.num_frozen]:
                x = block(x)
        for block in list(self.blocks)[self.num_frozen:]:
            x = block(x)
        x = self.pool(x)  # (B, D, G, G)
        return x.flatten(2).transpose(1, 2)  # (B, P, D)

    @property
    def trainable(self) -> bool:
        return self.num_frozen < len(self.blocks)
