"""Safe image loading (EXIF, modes, bombs, truncation) and the encoder's input transform."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
import torch.nn.functional as F

from ..config import Preprocess

# Pillow's own guard: anything over this many pixels is treated as a decompression bomb.
MAX_PIXELS = 89_478_485


class ImageError(ValueError):
    """An image file that cannot be used; the message is one line naming the file."""


def load_image(path: str | Path) -> Image.Image:
    """Open any image Pillow reads as 8-bit RGB, upright per its EXIF orientation.

    Grayscale, palette, CMYK, RGBA (composited on white) and 16-bit images are converted.
    Missing, empty, truncated, non-image and oversized (decompression bomb) files raise
    ImageError with one line naming the file.
    """
    path = Path(path)
    if path.is_dir():
        raise ImageError(f"{path}: is a folder, not an image file")
    if not path.is_file():
        raise ImageError(f"{path}: no such image file")
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: empty file")
    return _decode(path, str(path))


def load_image_bytes(data: bytes, name: str) -> Image.Image:
    """``load_image`` for an image held in memory (an upload, never written to disk); errors
    name it ``name``."""
    if not data:
        raise ImageError(f"{name}: empty file")
    return _decode(io.BytesIO(data), name)


def _decode(source, name: str) -> Image.Image:
    """Decode ``source`` (a path or a binary stream) with the checks of ``load_image``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as img:
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


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16/32-bit integer: rescale to the 8-bit range instead of clipping to white. 16-bit
        # modes always span 0-65535; plain "I" (often 8-bit data widened) is judged by its range.
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode != "I" or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / top * 255.0, 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        img = Image.fromarray(arr.astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


class ImageTransform:
    """PIL RGB image -> normalised float tensor (3, S, S) as a Preprocess describes.

    The same pixels as torchvision's v2 ``Resize`` (bicubic, antialiased, on uint8),
    ``CenterCrop``, ``ToDtype(scale=True)`` and ``Normalize`` (a test checks), in plain torch:
    importing torchvision costs over a second at every ``captioner caption``.
    """

    def __init__(self, pre: Preprocess):
        self.pre = pre
        self.mean = torch.tensor(pre.mean).view(3, 1, 1)
        self.std = torch.tensor(pre.std).view(3, 1, 1)

    def _size(self, h: int, w: int) -> tuple[int, int]:
        s = self.pre.resize
        if not self.pre.crop:  # squash the whole frame
            return s, s
        if h <= w:  # shorter side to s, as torchvision computes it
            return s, int(s * w / h)
        return int(s * h / w), s

    def __call__(self, image: Image.Image) -> torch.Tensor:
        x = torch.from_numpy(np.array(image.convert("RGB"), dtype=np.uint8)).permute(2, 0, 1)
        h, w = self._size(x.shape[1], x.shape[2])
        if (h, w) != tuple(x.shape[1:]):
            # on uint8 directly: torch's fixed-point uint8 kernel is the one torchvision uses
            x = F.interpolate(x[None].contiguous(), size=(h, w), mode="bicubic", antialias=True,
                              align_corners=False)[0]
        if self.pre.crop:
            c = self.pre.crop
            top, left = int(round((h - c) / 2.0)), int(round((w - c) / 2.0))
            x = x[:, top: top + c, left: left + c]
        return (x.float() / 255.0 - self.mean) / self.std


def build_transform(pre: Preprocess) -> ImageTransform:
    """The encoder input transform that ``pre`` describes (training and inference share it)."""
    return ImageTransform(pre)

