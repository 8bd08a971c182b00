"""torchvision's ImageNet ResNets and VGG-16 (weights downloaded on first use)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from torch import nn

from ...config import Preprocess
from ...registry import ENCODERS
from .base import IMAGENET_MEAN, IMAGENET_STD, Backbone, EncoderWeightsError


def _torchvision(name: str) -> Callable[[bool], Backbone]:
    def build(pretrained: bool) -> Backbone:
        import torchvision

        weights = torchvision.models.get_model_weights(name).DEFAULT if pretrained else None
        model = _download_guard(name, weights,
                                lambda: torchvision.models.get_model(name, weights=weights))
        if name.startswith("resnet"):
            stem = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool)
            blocks = [stem, model.layer1, model.layer2, model.layer3, model.layer4]
            dim = 2048
        else:  # vgg16: conv5_3 before the last max-pool, 14x14x512 at 224 (the paper's choice)
            layers = list(model.features.children())[:-1]
            blocks, current = [], []
            for layer in layers:
                current.append(layer)
                if isinstance(layer, nn.MaxPool2d):
                    blocks.append(nn.Sequential(*current))
                    current = []
            blocks.append(nn.Sequential(*current))
            dim = 512
        grid = 14 if name == "vgg16" else 7
        return Backbone(blocks, dim, grid, Preprocess(224, 0, IMAGENET_MEAN, IMAGENET_STD))
    return build


def _download_guard(name: str, weights, make: Callable[[], nn.Module]) -> nn.Module:
    try:
        return make()
    except Exception as exc:  # urllib/ssl/socket errors differ by platform
        if weights is None:
            raise
        from torch.hub import get_dir

        target = Path(get_dir()) / "checkpoints" / os.path.basename(weights.url)
        raise EncoderWeightsError(
            f"cannot load {name} ImageNet weights ({type(exc).__name__}: {exc}); download "
            f"{weights.url} and put it at {target}, or use --encoder efficientnet_lite0 "
            "(weights ship with pip)") from None


for _name in ("resnet50", "resnet101", "resnet152", "vgg16"):
    ENCODERS.register(_name, _torchvision(_name))
