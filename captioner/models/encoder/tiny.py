"""The tiny CNN trained from scratch: the shapes data and the tests."""

from __future__ import annotations

from torch import nn

from ...config import Preprocess
from ...registry import ENCODERS
from .base import Backbone


@ENCODERS.register("tiny")
def _tiny(pretrained: bool) -> Backbone:
    def block(cin: int, cout: int, stride: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                             nn.ReLU(inplace=True))

    # 64x64 input -> 8x8x128 (stride 8): receptive fields about the size of a shapes object
    blocks = [block(3, 32, 2), block(32, 64, 2), block(64, 128, 1), block(128, 128, 2)]
    return Backbone(blocks, 128, 8, Preprocess(64, 0, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
                    trainable_by_default=True)
