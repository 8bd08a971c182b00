"""Uploaded image bytes -> the model's input tensor, with the same safety as ``load_image``.

``data/images.load_image`` opens paths; an upload is bytes in memory and is never written to
disk, so this opens it from a buffer with the same checks (empty, non-image, truncated,
decompression bomb) and the same conversions (EXIF orientation, modes to RGB). Every failure is
an ``ImageError`` whose one-line message names the upload.
"""

from __future__ import annotations

import io
import warnings

import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..data.images import MAX_PIXELS, ImageError, _to_rgb
from ..inference import Captioner


def open_image_bytes(data: bytes, name: str) -> Image.Image:
    """Decode an uploaded image as 8-bit RGB, upright per its EXIF orientation; a bad upload
    raises ImageError naming ``name``."""
    if not data:
        raise ImageError(f"{name}: empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                if img.width * img.height > MAX_PIXELS:
                    raise ImageError(f"{name}: {img.width}x{img.height} pixels is too large "
                                     f"(over {MAX_PIXELS}; possible decompression bomb)")
                img.load()
                return _to_rgb(ImageOps.exif_transpose(img))
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{name}: too large, possible decompression bomb ({exc})") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image file Pillow can read") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{name}: corrupt or truncated image ({exc})") from None


def upload_tensor(cap: Captioner, data: bytes, name: str) -> tuple[torch.Tensor, tuple[int, int]]:
    """An upload -> (the model's input (3, S, S), the image's (width, height))."""
    image = open_image_bytes(data, name)
    return cap.preprocess(image), image.size
