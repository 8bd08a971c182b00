"""Uploaded image bytes -> the model's input tensor, with the same safety as ``load_image``
(``data/images.load_image_bytes``: empty, non-image, truncated and decompression-bomb uploads
are one-line ``ImageError``s naming the upload; nothing is written to disk)."""

from __future__ import annotations

import torch

from ..data.images import load_image_bytes
from ..inference import Captioner


def upload_tensor(cap: Captioner, data: bytes, name: str) -> tuple[torch.Tensor, tuple[int, int]]:
    """An upload -> (the model's input (3, S, S), the image's (width, height))."""
    image = load_image_bytes(data, name)
    return cap.preprocess(image), image.size
