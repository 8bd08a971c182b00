"""The paper's attention figure: the image, then one panel per word with its attention map
upsampled and smoothed over the image."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

from .config import Preprocess
from .fileio import atomic_write

#: file suffixes ``attention_figure`` writes, each in its own format (matplotlib's writers)
FIGURE_FORMATS = (".png", ".jpg", ".jpeg", ".pdf", ".svg")


def upsample_attention(alpha: np.ndarray, grid: int, size: tuple[int, int],
                       smooth: float = 0.5) -> np.ndarray:
    """(P,) weights -> (H, W) map: bicubic upsampling of the grid, then a Gaussian blur with
    sigma = ``smooth`` cells (the paper upsamples and applies a Gaussian filter)."""
    from scipy.ndimage import gaussian_filter

    w, h = size
    grid_map = alpha.reshape(grid, grid).astype(np.float32)
    up = np.asarray(Image.fromarray(grid_map, mode="F").resize((w, h), Image.BICUBIC))
    if smooth:
        up = gaussian_filter(up, sigma=(smooth * h / grid, smooth * w / grid))
    return np.clip(up, 0, None)


def model_view(image: Image.Image, pre: Preprocess) -> Image.Image:
    """The part of ``image`` the encoder's grid covers: the whole frame when preprocessing
    squashes it, the centre crop (of the resized image) when it crops."""
    if not pre.crop:
        return image
    w, h = image.size
    side = min(w, h) * pre.crop / pre.resize
    left, top = (w - side) / 2, (h - side) / 2
    return image.crop((round(left), round(top), round(left + side), round(top + side)))


def caption_figure(captioner, image_path: str | Path, out: str | Path, title: str | None = None,
                   options=None):
    """Caption an image file with ``captioner`` (a Captioner) and ``options`` (DecodeOptions,
    default its defaults) and write its attention figure; returns the best Caption. What
    `captioner attend` and the demo both do."""
    from .data.images import load_image

    image = load_image(image_path)
    best = captioner.caption(image, options)[0]
    attention_figure(model_view(image, captioner.model.config.preprocess), best.words,
                     best.alpha.numpy(), best.grid_size, out, title=title or Path(image_path).name)
    return best


def attention_figure(image: Image.Image, words: list[str], alphas: np.ndarray, grid: int,
                     out: str | Path, title: str | None = None, columns: int = 5,
                     display_size: int = 224) -> int:
    """Write the figure to ``out`` (atomically, in the format its suffix names: one of
    ``FIGURE_FORMATS``); returns the number of word panels.

    ``alphas`` is (len(words), P). Panel 0 is the image itself; each further panel shows the
    image dimmed where the word did not attend, with the word as its title. The image keeps its
    aspect ratio (longer side ``display_size``); the grid is stretched over it as the encoder's
    input was.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    suffix = Path(out).suffix.lower()
    if suffix not in FIGURE_FORMATS:
        raise ValueError(f"{out}: cannot write a {suffix or 'suffix-less'} figure; "
                         f"use one of {', '.join(FIGURE_FORMATS)}")

    scale = display_size / max(image.size)
    image = image.convert("RGB").resize((max(1, round(image.width * scale)),
                                         max(1, round(image.height * scale))), Image.BICUBIC)
    panels = len(words) + 1
    cols = min(columns, panels)
    rows = math.ceil(panels / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    axes.flat[0].imshow(image)
    axes.flat[0].set_title(_drawable(title or "image"), fontsize=9)
    for i, word in enumerate(words):
        ax = axes.flat[i + 1]
        heat = upsample_attention(np.asarray(alphas[i]), grid, image.size)
        ax.imshow(image)
        ax.imshow(heat / (heat.max() + 1e-12), cmap="gray", alpha=0.6, vmin=0, vmax=1)
        ax.set_title(_drawable(word), fontsize=11)
    fig.tight_layout()
    fmt = "jpeg" if suffix == ".jpg" else suffix[1:]
    atomic_write(out, lambda tmp: fig.savefig(tmp, format=fmt, dpi=80))
    plt.close(fig)
    return len(words)


def _drawable(text: str) -> str:
    """``text`` with the characters matplotlib's font cannot draw (a CJK file name in DejaVu
    Sans) shown as "?", instead of a warning per glyph and an empty box."""
    from matplotlib import font_manager

    font = font_manager.get_font(font_manager.findfont(font_manager.FontProperties()))
    return "".join(c if c.isprintable() and font.get_char_index(ord(c)) else "?" for c in text)
